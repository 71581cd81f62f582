"""anther/bench/backbone_load.py works: a short run with a few clients answers every request correctly
and writes its JSON (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_load_benchmark_runs_clients_and_writes_its_report(tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from anther.bench import backbone_load

    out = tmp_path / "load.json"
    status = backbone_load.main(["--model-dir", str(tiny_model_dir), "--clients", "4", "--seconds", "3",
                                 "--out", str(out)])
    data = json.loads(out.read_text())
    result = data["results"]
    assert status == 0 and result["zero_failures"] and result["failed_requests"] == 0, result["errors"]
    assert result["clients"] == 4 and result["requests"] >= 4 and result["requests_per_client_min"] >= 1
    for key in ("requests_per_s", "samples_per_s", "p50_latency_ms", "p99_latency_ms", "mean_requests_per_batch"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert data["benchmark"] == "backbone_load" and data["config"]["seconds"] == 3.0
