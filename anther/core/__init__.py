"""The neutral core every layer may import: the config schema and its checks, every key that
crosses a Flower message, the Sample record and atomic file writes. It imports nothing of anther."""
