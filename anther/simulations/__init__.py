"""Data sets, partitioners, heterogeneity scenarios, experiment configs, runner and reports."""
