"""Accuracy and activation bytes of the default experiment at each wire dtype.

Runs ``anther simulate`` once per ``backbone.wire_dtype`` -- float32, bfloat16, float16, float8
(e4m3fn, e5m2) and int8 with a scale per token -- everything else as the default experiment, and
writes ``wire_table.md`` and ``.json`` to ``--out`` (``anther/bench/run_table.py``): the final
accuracies and the activation MiB each client sent and received per round. With the in-process
backbone the wire is emulated (``anther/backbone/wire_emulation.py``): the clients train on exactly
what the backbone service would decode, and the bytes are the encoded tensors'.

    python -m anther.bench.wire_table
    python -m anther.bench.wire_table --only float32 int8 -- federation.rounds=3
"""

from __future__ import annotations

import sys

from anther.bench.run_table import Table, main
from anther.core.config import WIRE_DTYPES

TABLE = Table(name="wire", doc=__doc__, common=[], traffic=True,
              rows={dtype: [f"backbone.wire_dtype={dtype}"] for dtype in WIRE_DTYPES})

if __name__ == "__main__":
    sys.exit(main(TABLE))
