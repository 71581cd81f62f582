"""NanoAdapters, model families (how each HF MLLM splits into NanoEdge and backbone) and tiny configs."""
