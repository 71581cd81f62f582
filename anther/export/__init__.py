"""What a run leaves behind, made usable: exports of its adapters (anther's own, merged Hugging Face
checkpoints, peft's format), and a predictor that answers with them (``anther.load``)."""
