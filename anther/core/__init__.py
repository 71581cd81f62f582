"""The neutral core: the config schema, the message protocol, the Sample record."""
