"""Data sets, partitions and heterogeneity scenarios."""
