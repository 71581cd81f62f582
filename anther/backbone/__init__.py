"""The backbone: the frozen LLM behind one interface, in the caller's process or behind its gRPC
service, with the wire format, the service's supervisor and the client stub."""
