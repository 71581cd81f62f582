"""Data: the built-in ShapesVQA generator, the papers' data set formats, partitions and modality
scenarios, and what each client holds."""
