"""Checkpoints, exact resume and bad updates, in process (issue 7 items 5 and 6).

Checkpoints are written and read on disk; strategies are Flower's and anther's real ones,
fed real ``Message`` replies as a ClientApp builds them; a crash mid-write is an exception
raised inside the real writer.
"""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import safetensors.torch
import torch
from fakes import play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError

from anther.client.state_store import folder_for, restore_state, save_state, state_folder
from anther.server import checkpoint
from anther.server.round_guard import aggregate_guarded, replies_are_masked, screen_replies
from anther.server.run_state import load_strategy_state, restore_rng, rng_state, strategy_state
from anther.strategies.registry import build_strategy


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


ADAPTERS = {"image.down.weight": torch.arange(6.0).view(2, 3), "text.up.bias": torch.tensor([1.0, -2.0])}


# -- checkpoints ---------------------------------------------------------------------------
def test_checkpoint_round_trips_in_order(tmp_path):
    tensors = {"m": torch.arange(3, dtype=torch.float64), "key": torch.from_numpy(np.arange(4, dtype=np.uint32))}
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"rounds": [{"round": 1, "loss": math.nan}]}, tensors)
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    assert ckpt.server_round == 1 and list(ckpt.adapters) == list(ADAPTERS)
    assert all(torch.equal(ckpt.adapters[k], v) for k, v in ADAPTERS.items())
    assert all(np.array_equal(ckpt.tensors[k].numpy(), v.numpy()) and ckpt.tensors[k].dtype == v.dtype
               for k, v in tensors.items())
    assert math.isnan(ckpt.state["rounds"][0]["loss"])


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"note": "round one"})
    real_save = safetensors.torch.save_file
    calls = []

    def dies_on_the_second_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # adapters written, then the process "dies" writing the state tensors
            raise OSError("disk full")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_the_second_file)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(tmp_path, 2, {k: v + 1 for k, v in ADAPTERS.items()}, {"note": "round two"})
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    assert ckpt.server_round == 1 and ckpt.state["note"] == "round one"
    assert torch.equal(ckpt.adapters["text.up.bias"], ADAPTERS["text.up.bias"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round-0001"]


def test_a_half_written_folder_from_a_killed_process_is_ignored_then_cleaned(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {})
    torn = tmp_path / "checkpoints" / ".round-0002.999999.tmp"  # what SIGKILL mid-write leaves
    torn.mkdir()
    (torn / "adapters.safetensors").write_bytes(b"\x10\x00")
    assert checkpoint.checkpoint_rounds(tmp_path) == [1]
    assert checkpoint.latest_checkpoint(tmp_path).server_round == 1
    checkpoint.save_checkpoint(tmp_path, 2, ADAPTERS, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-0001", "round-0002"]


def test_rewriting_a_round_replaces_it(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"v": 1})
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"v": 2})
    assert checkpoint.load_checkpoint(tmp_path, 1).state["v"] == 2


def test_unreadable_checkpoint_names_its_folder(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {})
    (tmp_path / "checkpoints" / "round-0001" / "state.json").write_text("{")
    with pytest.raises(ValueError, match="round-0001"):
        checkpoint.load_checkpoint(tmp_path, 1)


# -- strategy and RNG state --------------------------------------------------------------
GLOBAL = {"a": np.array([0.5, -1.0], dtype=np.float32), "b": np.array([[2.0]], dtype=np.float32)}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})


def _replies(messages: list[Message], server_round: int) -> list[Message]:
    """Each client moves every parameter by its own amount, different each round."""
    out = []
    for k, m in enumerate(messages):
        moved = {n: a.numpy() + 0.1 * (k + 1) * server_round - 0.05 * k for n, a in m.content["arrays"].items()}
        content = RecordDict({"arrays": _record(moved),
                              "metrics": MetricRecord({"num-examples": 3 + k, "train_loss": 1.0})})
        out.append(Message(content, reply_to=m))
    return out


class Grid:
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def _round(strategy, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), Grid()))
    new, _ = strategy.aggregate_train(server_round, _replies(messages, server_round))
    return new


SPECS = [{"name": "fedadam"}, {"name": "fedyogi"}, {"name": "fedadagrad"},
         {"name": "fedavgm", "server_momentum": 0.9}, {"name": "hetero_rank"}, {"name": "fedavg"}]


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_strategy_restored_from_a_checkpoint_continues_bitwise(spec, tmp_path):
    """Three rounds straight, against one round, a checkpoint on disk, a fresh strategy and two more."""
    straight = build_strategy(spec)
    arrays = _record(GLOBAL)
    for r in (1, 2, 3):
        arrays = _round(straight, r, arrays)

    first = build_strategy(spec)
    after_one = _round(first, 1, _record(GLOBAL))
    tensors: dict[str, torch.Tensor] = {}
    state = {"strategy": strategy_state(first, "strategy", tensors)}
    checkpoint.save_checkpoint(tmp_path, 1, after_one.to_torch_state_dict(), state, tensors)
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    resumed = build_strategy(spec)
    load_strategy_state(resumed, ckpt.state["strategy"], ckpt.tensors)
    again = ArrayRecord(ckpt.adapters)
    for r in (2, 3):
        again = _round(resumed, r, again)
    for name in GLOBAL:
        assert np.array_equal(again[name].numpy(), arrays[name].numpy()), name


def test_server_optimizer_state_matters():
    """The check above can fail: without its moments FedAdam's round 2 differs."""
    straight, fresh = build_strategy({"name": "fedadam"}), build_strategy({"name": "fedadam"})
    after_one = _round(straight, 1, _record(GLOBAL))
    assert not np.array_equal(_round(straight, 2, after_one)["a"].numpy(), _round(fresh, 2, after_one)["a"].numpy())


def test_unsaveable_attributes_are_named_and_other_strategies_refused():
    strategy = build_strategy({"name": "fedavg"})
    saved = strategy_state(strategy, "s", {})
    assert "train_metrics_aggr_fn" in saved["skipped"]
    with pytest.raises(ValueError, match="FedAvg strategy"):
        load_strategy_state(build_strategy({"name": "fedadam"}), json.loads(json.dumps(saved)), {})


def test_rng_states_restore():
    sampler = random.Random(3)
    tensors: dict[str, torch.Tensor] = {}
    saved = json.loads(json.dumps(rng_state(sampler, tensors)))
    before = [sampler.sample(range(100), 5), random.random(), np.random.rand(), torch.rand(2).tolist()]
    restore_rng(saved, sampler, tensors)
    assert [sampler.sample(range(100), 5), random.random(), np.random.rand(), torch.rand(2).tolist()] == before


# -- screening replies ----------------------------------------------------------------------
SENT = {"down.weight": np.zeros((2, 3), np.float32), "up.bias": np.zeros(3, np.float32)}
PARTITION_OF = {101: 0, 102: 1, 103: 2, 104: 3, 105: 4}
DTYPES = {name: "float32" for name in SENT}  # the global adapters' dtypes, which the aggregate keeps


def _sent(node: int) -> Message:
    content = RecordDict({"arrays": _record(SENT), "config": ConfigRecord({"server-round": 1})})
    message = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = f"msg-to-{node}"  # as the grid sets it when it pushes
    return message


def _reply(to: Message, delta: float = 0.1, arrays: dict[str, np.ndarray] | None = None,
           metrics: dict | None = None) -> Message:
    arrays = arrays if arrays is not None else {k: v + delta for k, v in SENT.items()}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics if metrics is not None else {"num-examples": 4})})
    return Message(content, reply_to=to)


def _bad(name: str, value) -> dict[str, np.ndarray]:
    return {**{k: v + 0.1 for k, v in SENT.items()}, name: value}


BAD_UPDATES = {
    "nan": (lambda m: _reply(m, arrays=_bad("up.bias", np.array([0.1, np.nan, 0.1], np.float32))), "contains NaN"),
    "inf": (lambda m: _reply(m, arrays=_bad("down.weight", np.full((2, 3), np.inf, np.float32))), "contains Inf"),
    "shape": (lambda m: _reply(m, arrays=_bad("down.weight", np.zeros((4, 3), np.float32))),
              r"shape \(4, 3\), the node was sent \(2, 3\)"),
    "missing": (lambda m: _reply(m, arrays={"down.weight": SENT["down.weight"] + 0.1}), r"missing \['up.bias'\]"),
    "weight": (lambda m: _reply(m, metrics={"num-examples": 0}), "'num-examples' must be a positive number"),
    "metric": (lambda m: _reply(m, metrics={"num-examples": 4, "train_loss": math.inf}), "'train_loss' is not finite"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPDATES))
def test_a_bad_update_is_rejected_by_partition_and_the_rest_aggregate(kind):
    make, reason = BAD_UPDATES[kind]
    sent = [_sent(n) for n in (101, 102, 103)]
    replies = [_reply(sent[0]), make(sent[1]), _reply(sent[2], delta=0.3)]
    screened = screen_replies(sent, replies, PARTITION_OF)
    assert [m.metadata.src_node_id for m in screened.accepted] == [101, 103]
    (problem,) = screened.rejected
    assert problem.partition_id == 1 and problem.node_id == 102
    assert re.search(reason, problem.reason), problem.reason
    outcome = aggregate_guarded(build_strategy({"name": "fedavg"}), 1, screened.accepted, min_replies=2,
                                dtypes=DTYPES)
    assert outcome.skipped is None
    assert np.allclose(outcome.arrays["up.bias"].numpy(), 0.2)  # the mean of 0.1 and 0.3, equal weights


def test_an_unbounded_epsilon_is_an_honest_report_but_nan_is_not():
    """DP-SGD without noise (``privacy.noise_multiplier=0``: clipping alone) spends an infinite
    epsilon; its updates aggregate. A NaN or -inf epsilon, or an infinite loss, is still refused."""
    sent = [_sent(n) for n in (101, 102, 103)]
    replies = [_reply(sent[0], metrics={"num-examples": 4, "dp_epsilon": math.inf}),
               _reply(sent[1], metrics={"num-examples": 4, "dp_epsilon": math.nan}),
               _reply(sent[2], metrics={"num-examples": 4, "dp_epsilon": -math.inf})]
    screened = screen_replies(sent, replies, PARTITION_OF)
    assert [m.metadata.src_node_id for m in screened.accepted] == [101]
    assert all("'dp_epsilon' is not finite" in p.reason for p in screened.rejected)


def test_outlier_norm_is_rejected_against_the_median():
    sent = [_sent(n) for n in (101, 102, 103, 104)]
    replies = [_reply(sent[0], 0.1), _reply(sent[1], 0.12), _reply(sent[2], 5.0), _reply(sent[3], 0.09)]
    screened = screen_replies(sent, replies, PARTITION_OF, outlier_factor=10.0)
    assert [p.partition_id for p in screened.rejected] == [2]
    assert "x the round's median" in screened.rejected[0].reason
    assert len(screen_replies(sent, replies, PARTITION_OF, outlier_factor=None).accepted) == 4
    # two replies cannot outvote each other: no norm check
    assert len(screen_replies(sent[:2], [replies[0], _reply(sent[1], 5.0)], PARTITION_OF).accepted) == 2


def test_errors_and_silence_are_failures():
    sent = [_sent(n) for n in (101, 102, 103)]
    crashed = Message(Error(code=0, reason="ClientApp raised FileNotFoundError: /data"), reply_to=sent[1])
    screened = screen_replies(sent, [crashed, _reply(sent[0])], PARTITION_OF)
    assert [m.metadata.src_node_id for m in screened.accepted] == [101]
    reasons = {p.partition_id: p.reason for p in screened.failed}
    assert "FileNotFoundError" in reasons[1] and "no reply" in reasons[2]
    assert screened.rejected == []


def test_too_few_replies_skip_the_round():
    sent = [_sent(n) for n in (101, 102)]
    strategy = build_strategy({"name": "fedavg"})
    outcome = aggregate_guarded(strategy, 1, [_reply(sent[0])], min_replies=2, dtypes=DTYPES)
    assert outcome.arrays is None and "min_replies=2" in outcome.skipped


def test_a_strategy_that_refuses_skips_the_round():
    class Refusing:
        def aggregate_train(self, server_round, replies):
            raise AggregationError(reason="ranks disagree")

    outcome = aggregate_guarded(Refusing(), 3, [_reply(_sent(101))], min_replies=1, dtypes=DTYPES)
    assert outcome.arrays is None and "ranks disagree" in outcome.skipped


# -- client state on disk ---------------------------------------------------------------------
def test_client_state_comes_back_from_the_newest_round_before(tmp_path):
    folder = state_folder({"state-dir": str(tmp_path)}, "run-a", 3)
    for r in (1, 2, 3, 4):
        state = RecordDict({"dp-accountant": ConfigRecord({"steps": [r]}),
                            "personal-rounds": ConfigRecord({"n": r})})
        save_state(state, folder, r)
    assert sorted(p.name for p in folder.iterdir()) == ["round-0002.pb", "round-0003.pb", "round-0004.pb"]
    fresh = RecordDict()  # checkpoint 3 damaged, the server resumes from 2; the client trained 4
    assert restore_state(fresh, folder, up_to_round=2) == 2
    assert fresh["personal-rounds"]["n"] == 2  # the run goes back to round 2...
    assert fresh["dp-accountant"]["steps"] == [4]  # ...but the privacy rounds 3 and 4 spent is not given back
    own = RecordDict({"dp-accountant": ConfigRecord({"steps": [9]})})
    assert restore_state(own, folder, 4) is None and own["dp-accountant"]["steps"] == [9]


def test_empty_client_state_is_not_written_and_run_keys_are_plain_names(tmp_path):
    assert save_state(RecordDict(), tmp_path / "s", 1) is None and not (tmp_path / "s").exists()
    assert folder_for(ConfigRecord({"server-round": 1}), {}, 0) is None
    with pytest.raises(ValueError, match="plain folder name"):
        folder_for(ConfigRecord({"run-key": "../../etc"}), {"state-dir": str(tmp_path)}, 0)


def test_masked_replies_are_screened_by_their_metrics_only():
    """Secure aggregation's replies carry a masked vector, not adapters: no array checks."""
    class SecureInner:
        masked_replies = True

    class Wrapper:
        strategy = SecureInner()

    assert replies_are_masked(Wrapper()) and not replies_are_masked(build_strategy({"name": "fedavg"}))
    sent = [_sent(n) for n in (101, 102)]
    masked = [Message(RecordDict({"metrics": MetricRecord({"num-examples": 4})}), reply_to=m) for m in sent]
    masked[1] = Message(RecordDict({"metrics": MetricRecord({"num-examples": -1})}), reply_to=sent[1])
    screened = screen_replies(sent, masked, PARTITION_OF, check_arrays=False)
    assert [m.metadata.src_node_id for m in screened.accepted] == [101]
    assert [p.partition_id for p in screened.rejected] == [1]


def test_an_error_the_superlink_made_names_the_node_it_answers_for():
    """A node that stops sending heartbeats gets an error reply from the SuperLink itself, whose
    source is the SuperLink; the message it answers says which partition failed."""
    sent = [_sent(n) for n in (101, 102)]
    unavailable = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=sent[1])
    unavailable.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's node id, as it sets it
    screened = screen_replies(sent, [_reply(sent[0]), unavailable], PARTITION_OF)
    assert [(p.partition_id, p.node_id) for p in screened.failed] == [(1, 102)]
    assert "Node Unavailable" in screened.failed[0].reason
    stray = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=_sent(103))  # asked another time
    stray.metadata.__dict__["_src_node_id"] = 1
    again = screen_replies(sent, [_reply(sent[0]), _reply(sent[1]), stray], PARTITION_OF)
    assert again.failed == [] and len(again.accepted) == 2  # no phantom failure of "partition None"


def test_two_nodes_claiming_one_partition_are_refused_by_node_id():
    """Three sites that set only data-path all report partition-id 0: the run stops at discovery
    naming the nodes, instead of training one of them and silently dropping the others."""
    from flwr.app import ConfigRecord

    from anther.server.federated_run import _one_node_per_partition

    info = {n: ConfigRecord({"partition-id": 0}) for n in (30, 10, 20)}
    with pytest.raises(ValueError, match="nodes 10, 20, 30 all have partition-id 0: give each SuperNode its own"):
        _one_node_per_partition(info)
    distinct = {n: ConfigRecord({"partition-id": p}) for n, p in ((30, 1), (10, 0))}
    assert _one_node_per_partition(distinct) == {0: 10, 1: 30}


def test_the_partition_table_comes_from_what_clients_report(tmp_path):
    """A client on a partition of the run's data this side can read gets its labels from that copy;
    a site with its own data shows the counts and modalities it reported, and nothing else."""
    from anther.core.sample import write_split
    from anther.data import shapes_vqa
    from anther.data.client_data import client_data
    from anther.data.partition_report import holdings, reported_partitions
    from anther.simulations.experiment import load_config

    write_split(shapes_vqa.generate(40, seed=1, prefix="train"), tmp_path, "train")
    cfg = load_config("default", [f"data.path={tmp_path}", "federation.num_clients=2"])
    shared = holdings(*client_data(cfg, tmp_path, 0, 2), own_data=False)
    own = {"train": 7, "test": 3, "presence": {"image+text": 10}, "own_data": True}
    table = reported_partitions(cfg, tmp_path, {0: shared, 1: own})
    assert table[0].labels and table[0].train == shared["train"]
    assert (table[1].train, table[1].test, table[1].presence, table[1].labels, table[1].domains) == (
        7, 3, {"image+text": 10}, {}, {})
