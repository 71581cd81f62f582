"""The backbone's gRPC service."""
