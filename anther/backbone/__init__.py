"""The backbone: the frozen LLM, in process or behind its gRPC service."""
