"""The round loop (``FederatedRun``) against a scripted federation, in one process.

The grid answers as ClientApps would (QUERY: partition ids; TRAIN: adapters moved by a
partition-specific amount; EVALUATE: metrics), except for the faults each test scripts: a
NaN update, a ClientApp error, a server that dies mid-run. The server side is real: the
tiny model's evaluator, the strategy, the run folder, the checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import ReplyingGrid, play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import LOGGER_NAME
from safetensors.torch import load_file

from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.server.federated_run import FederatedRun
from anther.simulations.experiment import load_config, load_run_config

NODES = {101: 0, 102: 1, 103: 2}  # node id -> partition id


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


class Crash(RuntimeError):
    """The server process dying, as far as the round loop can tell."""


class ScriptedGrid(ReplyingGrid):
    """Replies as ClientApps would; ``faults[(round, partition)]`` says what goes wrong where."""

    def __init__(self, faults: dict[tuple[int, int], str] | None = None, crash_in_round: int | None = None):
        super().__init__(list(NODES))
        self.faults, self.crash_in_round = faults or {}, crash_in_round

    def reply(self, m: Message) -> Message | None:
        pid = NODES[m.metadata.dst_node_id]
        if m.metadata.message_type == MessageType.QUERY:
            return Message(RecordDict({"info": ConfigRecord({"partition-id": pid, "num-partitions": 3})}),
                           reply_to=m)
        metrics = {"num-examples": 5 + pid, "partition-id": pid}
        if m.metadata.message_type == MessageType.EVALUATE:
            return Message(RecordDict({"metrics": MetricRecord({**metrics, "acc_mc": 0.5})}), reply_to=m)
        server_round = int(m.content["config"]["server-round"])
        if server_round == self.crash_in_round:
            raise Crash(f"server killed in round {server_round}")
        fault = self.faults.get((server_round, pid))
        if fault == "error":
            return Message(Error(code=0, reason="ClientApp raised ValueError"), reply_to=m)
        if fault == "silent":
            return None
        if fault in ("refused", "budget-exhausted"):  # the client's privacy policy says no
            return Message(RecordDict({"declined": ConfigRecord({"status": fault, "reason": f"{fault} by policy"})}),
                           reply_to=m)
        moved = {k: a.numpy() + np.float32(0.01 * (pid + 1) * server_round) for k, a in m.content["arrays"].items()}
        if fault == "nan":
            moved["text.up.bias"] = np.full_like(moved["text.up.bias"], np.nan)
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in moved.items()}),
                              "metrics": MetricRecord({**metrics, "train_loss": 1.0 + pid})})
        if "scaffold" in m.content["config"]:  # SCAFFOLD's client half answers with its variate's change
            content["scaffold-dc"] = ArrayRecord({k: Array(np.zeros_like(v)) for k, v in moved.items()})
        return Message(content, reply_to=m)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_split(shapes_vqa.generate(30, seed=0, prefix="train"), folder, "train")
    write_split(shapes_vqa.generate(6, seed=1, prefix="test"), folder, "test")
    return folder


@contextlib.contextmanager
def flower_log() -> Iterator[list[str]]:
    """Every line logged on Flower's logger (where the ServerApp's lines go) meanwhile."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _cfg(tiny_model_dir: Path, data_dir: Path, out: Path, *extra: str):
    return load_config("default", [f"model.path={tiny_model_dir}", f"data.path={data_dir}", f"output_dir={out}",
                                   "federation.num_clients=3", "federation.fraction_train=1.0", "federation.rounds=2",
                                   "data.train_size=30", "federation.round_timeout_s=1",  # a silent client's wait
                                   "eval.server_test_size=4", "eval.generate=false", "adapter.rank=4", *extra])


def _initial(run: FederatedRun) -> ArrayRecord:
    dim = run.evaluator.runtime.edge.embed_tokens.embedding_dim
    return ArrayRecord(initial_adapter_state(dim, NanoAdapterConfig(4, 16.0, "gelu"), 0))


def _run(cfg, grid, resume: bool = False) -> tuple[FederatedRun, ArrayRecord]:
    run = FederatedRun(cfg, grid, Path(cfg.data.path), resume=resume)
    return run, run.execute(_initial(run))


def test_bad_updates_and_failures_are_recorded_and_too_few_skip_the_round(tiny_model_dir, data_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path, "federation.min_replies=2")
    # round 1: partition 1 sends NaN, partition 2 errors -> 1 usable < 2: skipped
    # round 2: partition 2 stays silent -> partitions 0 and 1 aggregate
    grid = ScriptedGrid({(1, 1): "nan", (1, 2): "error", (2, 2): "silent"})
    with flower_log() as lines:
        run, final = _run(cfg, grid)
    result = json.loads((run.run_dir / "result.json").read_text())
    # the log counts as the record does; Flower's own count (its strategy sees only accepted replies) is gone
    assert not [line for line in lines if "results and" in line], lines
    counts = "answered usably, {} rejected, 1 failed, 0 declined; 0 unavailable"
    assert f"anther: round 1: 1 of 3 sampled clients {counts.format(1)}" in lines
    assert f"anther: round 2: 2 of 3 sampled clients {counts.format(0)}" in lines
    one, two = result["rounds"][1], result["rounds"][2]
    assert "min_replies=2" in one["skipped"] and one["clients"] == 1
    assert [(p["partition_id"], "NaN" in p["reason"]) for p in one["rejected"]] == [(1, True)]
    assert [p["partition_id"] for p in one["failed"]] == [2] and "ValueError" in one["failed"][0]["reason"]
    round_one = load_file(str(run.run_dir / "checkpoints" / "round-0001" / "adapters.safetensors"))
    initial = _initial(run).to_torch_state_dict()
    assert all(torch.equal(round_one[k], initial[k]) for k in initial), "a skipped round changed the adapters"
    assert two["skipped"] is None and two["clients"] == 2 and set(two["per_client"]) == {"0", "1"}
    assert [p["partition_id"] for p in two["failed"]] == [2] and "no reply" in two["failed"][0]["reason"]
    assert not np.array_equal(final["text.up.bias"].numpy(), initial["text.up.bias"].numpy())
    assert result["finished"] is True


def test_declining_clients_are_recorded_and_a_spent_budget_is_not_asked_again(tiny_model_dir, data_dir, tmp_path):
    """Round 1: partition 1's policy refuses the round, partition 2's budget is spent. Both are
    recorded with their reason, not as failures; round 2 asks partition 1 again, not partition 2,
    and a resumed run still knows partition 2 is spent."""
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path, "federation.rounds=3")
    grid = ScriptedGrid({(1, 1): "refused", (1, 2): "budget-exhausted"}, crash_in_round=3)
    crashed = FederatedRun(cfg, grid, Path(cfg.data.path))
    with flower_log() as lines, pytest.raises(Crash):
        crashed.execute(_initial(crashed))
    assert "anther: round 1: 1 of 3 sampled clients answered usably, 0 rejected, 0 failed, 2 declined; 0 unavailable" \
        in lines
    _, _ = _run(load_run_config(crashed.run_dir), ScriptedGrid(), resume=True)
    one, two, three = json.loads((crashed.run_dir / "result.json").read_text())["rounds"][1:]
    assert [(d["partition_id"], d["status"]) for d in one["declined"]] == [(1, "refused"), (2, "budget-exhausted")]
    assert one["failed"] == [] and one["rejected"] == [] and one["clients"] == 1 and one["exhausted"] == [2]
    for later in (two, three):
        assert later["sampled"] == 2 and later["clients"] == 2 and set(later["per_client"]) == {"0", "1"}, later
        assert later["exhausted"] == [2] and later["declined"] == []


def test_resume_after_a_crash_gives_the_uninterrupted_run(tiny_model_dir, data_dir, tmp_path):
    """FedAvgM with momentum: round 2 depends on the momentum round 1 left in the strategy."""
    strategy = ["strategy.name=fedavgm", "+strategy.server_momentum=0.9"]
    straight_run, straight = _run(_cfg(tiny_model_dir, data_dir, tmp_path / "a", *strategy), ScriptedGrid())

    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "b", *strategy)
    crashed = FederatedRun(cfg, ScriptedGrid(crash_in_round=2), Path(cfg.data.path))
    with pytest.raises(Crash):
        crashed.execute(_initial(crashed))
    resumed_run, resumed = _run(load_run_config(crashed.run_dir), ScriptedGrid(), resume=True)

    assert resumed_run.run_dir == crashed.run_dir
    for name in straight:
        assert np.array_equal(resumed[name].numpy(), straight[name].numpy()), name
    a = json.loads((straight_run.run_dir / "result.json").read_text())
    b = json.loads((crashed.run_dir / "result.json").read_text())
    assert b["resumed_from"] == [1]

    def rows(result):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in result["rounds"]]

    assert rows(a) == rows(b)


def _traffic(tiny_model_dir, data_dir, out: Path, *strategy: str) -> tuple[list[dict], ArrayRecord, list[str]]:
    """The recorded rounds, the final adapters and Flower's log lines of a scripted run under ``strategy``."""
    with flower_log() as lines:
        run, final = _run(_cfg(tiny_model_dir, data_dir, out, *strategy), ScriptedGrid())
    return json.loads((run.run_dir / "result.json").read_text())["rounds"][1:], final, lines


def test_traffic_is_counted_as_sent_whatever_the_strategy_does_with_the_replies(tiny_model_dir, data_dir, tmp_path):
    """Bulyan and QFedAvg read (QFedAvg empties) the replies' records when they aggregate; the bytes
    up are counted before that, so they equal FedAvg's for the same clients, and bytes down too.
    QFedAvg computes in float64: its aggregate is cast back to the adapters' float32, with a warning."""
    fedavg, _, _ = _traffic(tiny_model_dir, data_dir, tmp_path / "fedavg", "strategy.name=fedavg")
    target = "~strategy.name", "+strategy.min_train_nodes=1", "+strategy.min_available_nodes=1", \
        "+strategy.min_evaluate_nodes=1"
    bulyan, _, _ = _traffic(tiny_model_dir, data_dir, tmp_path / "bulyan", *target,
                            "+strategy._target_=flwr.serverapp.strategy.Bulyan")
    qfedavg, final, lines = _traffic(tiny_model_dir, data_dir, tmp_path / "qfedavg", *target,
                                     "+strategy._target_=flwr.serverapp.strategy.QFedAvg",
                                     "+strategy.client_learning_rate=0.1")
    assert fedavg[0]["adapter_bytes_up"] > 0
    for rounds in (bulyan, qfedavg):
        for mine, theirs in zip(rounds, fedavg, strict=True):
            assert mine["adapter_bytes_up"] == theirs["adapter_bytes_up"]
            assert mine["adapter_bytes_down"] == theirs["adapter_bytes_down"]
            assert mine["per_client"] == theirs["per_client"]
            assert mine["skipped"] is None
    assert {a.dtype for a in final.values()} == {"float32"}
    assert any("QFedAvg returned 8 adapter array(s) as float64 instead of float32" in line for line in lines), lines


def test_records_a_strategy_adds_count_as_bytes_each_way(tiny_model_dir, data_dir, tmp_path):
    """SCAFFOLD sends its control variate with the adapters and its clients answer with their
    variate's change, both the adapters' size: twice FedAvg's bytes each way."""
    fedavg, _, _ = _traffic(tiny_model_dir, data_dir, tmp_path / "fedavg", "strategy.name=fedavg")
    scaffold, _, _ = _traffic(tiny_model_dir, data_dir, tmp_path / "scaffold", "strategy.name=scaffold")
    for mine, theirs in zip(scaffold, fedavg, strict=True):
        assert mine["skipped"] is None
        assert mine["adapter_bytes_down"] == 2 * theirs["adapter_bytes_down"] > 0
        assert mine["adapter_bytes_up"] == 2 * theirs["adapter_bytes_up"] > 0
