"""Data sets: the built-in ShapesVQA generator, the on-disk format and the papers' loaders."""
