"""Benchmarks and their reports; each writes under $ANTHER_HOME/bench/<name> unless told --out."""
