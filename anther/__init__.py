"""anther: federated fine-tuning of multimodal LLMs with NanoEdge clients and a shared frozen backbone."""

__version__ = "0.1.0"
