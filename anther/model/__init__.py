"""The model split: how each Hugging Face MLLM divides into NanoEdge and backbone (families/), the
NanoEdge, NanoAdapters, LoRA, reading each side's weights, the prompt and sample encoding, the
feature cache, and anther's tiny checkpoints."""
