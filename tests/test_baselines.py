"""The baselines (zero-shot, local-only, centralised) in one process on the tiny LLaVA: the run
folder a federated run writes, adapters that really are each client's own, the pooled data and
the federated step budget, and a local-only round equal to the ClientApp's own round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakes import FakeGrid, play_serverapp_runtime
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from omegaconf import DictConfig
from safetensors.torch import load_file

from anther import client_app
from anther.core.config import ConfigError, to_yaml
from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.simulations.baselines import BaselineRun, initial_adapters, run_baseline
from anther.simulations.experiment import load_config
from anther.strategies.registry import build_strategy

SMALL = ["federation.num_clients=2", "federation.rounds=2", "train.local_steps=2", "train.batch_size=4",
         "adapter.rank=4", "data.client_test_fraction=0.25", "eval.server_test_size=6", "eval.generate=false",
         "eval.batch_size=32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    write_split(shapes_vqa.generate(32, seed=1, prefix="train"), data, "train")
    write_split(shapes_vqa.generate(6, seed=2, prefix="test"), data, "test")
    return data


def _cfg(tiny_model_dir: Path, data_dir: Path, run_dir: Path, *overrides: str) -> DictConfig:
    return load_config("default", [*SMALL, f"model.path={tiny_model_dir}", f"data.path={data_dir}",
                                   f"run_dir={run_dir}", *overrides])


def _result(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    assert result["finished"] is True
    assert (run_dir / "partition.json").is_file() and (run_dir / "accuracy.png").is_file()
    return result


def test_unknown_baseline_is_named(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="baseline='federated'"):
        _cfg(tiny_model_dir, data_dir, tmp_path, "baseline=federated")


def test_zero_shot_scores_the_fresh_adapters_once(tiny_model_dir, data_dir, tmp_path):
    result = _result(run_baseline(_cfg(tiny_model_dir, data_dir, tmp_path / "run", "baseline=zero_shot")))
    assert [r["round"] for r in result["rounds"]] == [0]
    assert 0 <= result["rounds"][0]["acc_mc"] <= 1
    assert sorted(result["clients"]["per_client"]) == ["0", "1"]
    assert "acc_mc_worst" in result["clients"]["summary"]
    assert result["traffic"]["activation_bytes_up"] == 0  # nothing was trained


def test_local_only_clients_keep_their_own_adapters(tiny_model_dir, data_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", "baseline=local_only")
    result = _result(run_baseline(cfg))
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    last = rounds[-1]
    assert last["clients"] == 2 and last["train_loss"] > 0 and last["adapter_bytes_up"] == 0
    assert last["activation_bytes_up"] > 0
    per_round = [m["acc_mc"] for m in last["per_client"].values()]
    assert last["acc_mc"] == pytest.approx(sum(per_round) / 2) and last["acc_mc_worst"] == min(per_round)
    assert sorted(result["clients"]["per_client"]) == ["0", "1"]

    saved = load_file(str(tmp_path / "run" / "checkpoints" / "round-0002" / "adapters.safetensors"))
    mine = {pid: {k.split(".", 1)[1]: v for k, v in saved.items() if k.startswith(f"client-{pid}.")}
            for pid in (0, 1)}
    start = initial_adapters(cfg, BaselineRun(cfg).runtime.edge)
    assert mine[0].keys() == mine[1].keys() == start.keys()
    assert any(not torch.equal(mine[0][k], mine[1][k]) for k in start)  # never averaged
    assert all(any(not torch.equal(mine[p][k], start[k]) for k in start) for p in (0, 1))  # both trained


def test_local_only_round_is_the_clientapps_round(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """A local-only client's first round from the run's initial adapters gives bit for bit what
    the ClientApp's train handler replies to a federated round 1."""
    play_serverapp_runtime(monkeypatch)
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", "baseline=local_only", "federation.rounds=1")
    run = BaselineRun(cfg)
    train, _ = run.clients[1]
    mine, report, _ = run.train(run.initial, train, 1, 1, cfg.train.local_steps, cfg.train.local_steps)

    strategy = build_strategy({"name": "fedavg"})
    config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": 1})
    (message,) = [m for m in strategy.configure_train(1, ArrayRecord(run.initial), config, FakeGrid([11, 12]))
                  if m.metadata.dst_node_id == 12]
    context = Context(run_id=1, node_id=12, state=RecordDict(), run_config={},
                      node_config={"partition-id": 1, "num-partitions": 2})
    reply = client_app.train(message, context).content
    theirs = reply["arrays"].to_torch_state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert report.loss == pytest.approx(reply["metrics"]["train_loss"])


def test_centralised_pools_every_partition_with_the_federated_budget(tiny_model_dir, data_dir, tmp_path,
                                                                    monkeypatch):
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", "baseline=centralised", "scenario=cross_i5t5")
    seen: list[tuple[int, int]] = []  # (samples, steps) of every training call
    real_train = BaselineRun.train

    def spy(self, start, samples, server_round, trainer_id, steps, total_steps):
        seen.append((len(samples), steps))
        return real_train(self, start, samples, server_round, trainer_id, steps, total_steps)

    monkeypatch.setattr(BaselineRun, "train", spy)
    result = _result(run_baseline(cfg))
    clients = json.loads((tmp_path / "run" / "partition.json").read_text())["clients"]
    pooled = sum(c["train"] for c in clients)
    image_only = sum(c["presence"].get("image only", 0) for c in clients)
    text_only = sum(c["presence"].get("text only", 0) for c in clients)
    assert image_only > 0 and text_only > 0  # both kinds of client are in the pool
    # 2 rounds, each local_steps x the 2 clients a federated round trains, over all partitions
    assert seen == [(pooled, 4), (pooled, 4)]
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert result["rounds"][-1]["clients"] == 1 and sorted(result["clients"]["per_client"]) == ["0", "1"]
