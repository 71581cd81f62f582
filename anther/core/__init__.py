"""The neutral core every layer may import: the config schema and its checks, every key that
crosses a Flower message, the Sample record, atomic file writes, the message exchange with nodes
and lazy plotting. It imports nothing of anther."""
