"""A real ``anther simulate`` under a cross-modality scenario: one image-only and one text-only
client train together, and the new metrics reach result.json (slow: a minute or two)."""

from __future__ import annotations

import pytest
from simulation_run import simulate

pytestmark = pytest.mark.slow


def test_cross_modality_run_trains_and_reports_f1_and_auc(tmp_path):
    _, result = simulate(tmp_path, ["scenario=cross_i5t5"])
    assert result["config"]["scenario"]["name"] == "cross_i5t5"
    assert result["config"]["partition"] == {"scheme": "dirichlet", "alpha": 0.5, "seed": 0}
    last = result["rounds"][-1]
    assert last["clients"] == 2 and last["train_loss"] > 0
    assert 0 <= last["f1_macro"] <= 1
    per_client = result["clients"]["per_client"]
    assert len(per_client) == 2 and all("f1_macro" in m for m in per_client.values())
