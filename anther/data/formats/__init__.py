"""The papers' data set formats, read from local files; each module says which layout it reads."""
