#!/usr/bin/env bash
# Regenerate the Python gRPC modules for anther/backbone/proto/backbone.proto.
# Needs grpcio-tools (the `dev` extra). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
proto=anther/backbone/proto
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. "$proto/backbone.proto"
# protoc writes an absolute import; make it package-relative so the package can move.
python - "$proto/backbone_pb2_grpc.py" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
src = re.sub(r"^from anther\.backbone\.proto import backbone_pb2 as", "from . import backbone_pb2 as", src, flags=re.M)
open(path, "w").write(src)
PY
echo "regenerated $proto/backbone_pb2.py, backbone_pb2.pyi, backbone_pb2_grpc.py"
