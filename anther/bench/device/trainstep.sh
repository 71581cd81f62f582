#!/usr/bin/env bash
# The perf bench's trainstep section on a CUDA machine without internet access that has torch,
# transformers, peft and pyyaml but not anther's other dependencies (docs/performance.md, "GPU
# numbers"): no Flower, Ray, Hydra or cryptography, and perhaps a grpcio and protobuf older than
# anther's generated code needs. It goes in two steps:
#
#   on a machine with internet:  bash anther/bench/device/trainstep.sh fetch   # wheels, into .whl/ (git-ignored)
#   on the CUDA machine, with the checkout and .whl/ copied over:
#                                bash anther/bench/device/trainstep.sh run
#                                # writes $OUT (default .) /trainstep.json and trainstep.md
#
# The section's settings are anther/bench/device/trainstep.json: the default perf config's
# (tests/test_trainstep_bench.py keeps the two in step).
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository root

case "${1:-}" in
  fetch)
    rm -rf .whl && mkdir .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl \
      omegaconf==2.3.1 hydra-core==1.3.8 cryptography==50.0.2 cffi==2.1.1 pycparser \
      grpcio==1.85.3 protobuf==6.33.6
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as sources only
    ls .whl ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    out="${OUT:-.}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    python3 -m anther.bench.perf.trainstep anther/bench/device/trainstep.json "$out/trainstep.json"
    python3 -c "import json, sys; from anther.bench.perf.report import trainstep_lines; \
print('\n'.join(trainstep_lines(json.load(open(sys.argv[1])))))" "$out/trainstep.json" | tee "$out/trainstep.md" ;;
  *)
    echo "usage: bash anther/bench/device/trainstep.sh fetch|run" >&2; exit 2 ;;
esac
