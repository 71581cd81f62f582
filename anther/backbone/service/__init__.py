"""The backbone's gRPC service: one frozen LLM serving many clients' forward and backward passes.

Split at its seams, in the order a request meets them:

- :mod:`.auth`: TLS (optionally mutual) and per-client bearer tokens, checked before any handler;
- :mod:`.decode`: each request assembled from its chunks and validated whole (INVALID_ARGUMENT
  for anything malformed, before it can touch the model);
- :mod:`.batching`: one thread owns the model and runs concurrent requests as one pass, each
  getting exactly the loss and gradient it would have got alone;
- :mod:`.servicer`: the RPCs of ``proto/backbone.proto``;
- :mod:`.server`: a gRPC server around them (:func:`.server.serve`, ``anther backbone serve``).
"""
