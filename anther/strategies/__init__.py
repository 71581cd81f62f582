"""Aggregation strategies on Flower's Strategy API and the registry to plug your own into."""
