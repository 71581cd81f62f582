"""Aggregation strategies on Flower's Strategy API, each one module with both halves (its
aggregation and its client extras), the registry that names them and takes your own, and the
privacy layers around them."""
