"""The backbone service's wire format: ``backbone.proto``, its generated modules
(regenerate with ``scripts/gen_proto.sh``) and :mod:`.wire`, the tensor codec and
chunking shared by the server and the client."""
