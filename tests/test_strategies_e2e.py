"""anther's strategies by name in real ``flwr run`` simulations: what only the simulation
engine can show -- a node's ``Context.state`` kept between rounds, QUERY answers reaching a
node-aware strategy, per-node messages in training and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from simulation_run import shared_run, simulate

from anther.strategies.array_utils import array_record
from anther.strategies.hetero_rank import truncate_to_rank

pytestmark = pytest.mark.slow


def test_personalised_local_adapters_survive_between_rounds(tmp_path_factory: pytest.TempPathFactory):
    _, result = shared_run(tmp_path_factory, "personalised_text_only")
    # every client reports how many rounds its local adapter (kept in Context.state) has trained
    assert [r["train_metrics"]["personal_rounds"] for r in result["rounds"][1:]] == [1.0, 2.0]
    assert all("acc_mc" in c for c in result["clients"]["per_client"].values())


def test_hetero_rank_sends_each_partition_its_rank(tmp_path: Path):
    run_dir, result = simulate(tmp_path, ["strategy.name=hetero_rank", "+strategy.partition_ranks=[2,4]"])
    final = {k: v.numpy() for k, v in load_file(str(run_dir / "checkpoints" / "round-0002" /
                                                     "adapters.safetensors")).items()}
    assert final["text.down.weight"].shape[0] == 4  # the global adapters keep adapter.rank
    # partition 0 is sent the first 2 units, partition 1 all 4; clients reply with the same shapes
    per_round = sum(array_record(truncate_to_rank(final, r)).count_bytes() for r in (2, 4))
    for r in result["rounds"][1:]:
        assert r["adapter_bytes_down"] == r["adapter_bytes_up"] == per_round
    assert set(result["clients"]["per_client"]) == {"0", "1"}
