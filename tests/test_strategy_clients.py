"""anther's strategies with the real ClientApp handlers and the tiny LLaVA, in one process.

Each test plays anther's round loop by hand: the strategy's ``configure_train`` builds the
messages, the ClientApp's ``train`` handler answers each with that node's ``Context`` (as a
SuperNode or the simulation engine would call it), and ``aggregate_train`` merges the
replies. What is checked is the contract between the two halves: the keys a strategy puts
in the round config and what the client does with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakeGrid, play_serverapp_runtime
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from omegaconf import OmegaConf
from transformers import AutoConfig

from anther import client_app
from anther.client.runtime import runtime_for
from anther.core.config import ConfigError, to_yaml
from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.data.client_data import client_data
from anther.model.nano_adapter import NanoAdapter, NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.simulations.experiment import check_names, load_config
from anther.strategies.fedprox import middle_range
from anther.strategies.personalised import LOCAL_ADAPTERS
from anther.strategies.registry import build_strategy

NODES = {11: 0, 12: 1}  # node id -> partition id


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


@pytest.fixture(scope="module")
def cfg(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("data")
    write_split(shapes_vqa.generate(40, seed=1, prefix="train"), data, "train")
    write_split(shapes_vqa.generate(8, seed=2, prefix="test"), data, "test")
    return load_config("default", [f"model.path={tiny_model_dir}", f"data.path={data}", "federation.num_clients=2",
                                   "train.local_steps=2", "train.batch_size=4", "adapter.rank=4",
                                   "data.client_test_fraction=0.25", "eval.batch_size=16"])


def _contexts(node_config: dict | None = None) -> dict[int, Context]:
    return {node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": pid, "num-partitions": len(NODES), **(node_config or {})})
            for node, pid in NODES.items()}


def _global(cfg) -> ArrayRecord:
    """The round-0 global adapters, as the ServerApp makes them (rank ``adapter.rank``)."""
    dim = AutoConfig.from_pretrained(cfg.model.path).text_config.hidden_size
    return ArrayRecord(initial_adapter_state(dim, NanoAdapterConfig(cfg.adapter.rank, float(cfg.adapter.alpha)),
                                             cfg.seed))


def _config(cfg, server_round: int) -> ConfigRecord:
    return ConfigRecord({"experiment": to_yaml(cfg), "server-round": server_round})


def _query(cfg, node: int, context: Context) -> Message:
    """The node's answer to the discovery QUERY, which carries the round-0 config as the server's does."""
    message = Message(RecordDict({"config": _config(cfg, 0)}), dst_node_id=node, message_type=MessageType.QUERY)
    return client_app.query(message, context)


def _train_round(strategy, cfg, arrays: ArrayRecord, contexts: dict[int, Context], server_round: int = 1):
    messages = list(strategy.configure_train(server_round, arrays, _config(cfg, server_round), FakeGrid(list(NODES))))
    replies = [client_app.train(m, contexts[m.metadata.dst_node_id]) for m in messages]
    merged, metrics = strategy.aggregate_train(server_round, replies)
    return merged, metrics, {r.metadata.src_node_id: r.content for r in replies}


def _evaluate(strategy, cfg, arrays: ArrayRecord, contexts: dict[int, Context]) -> dict[int, RecordDict]:
    messages = strategy.configure_evaluate(1, arrays, _config(cfg, 1), FakeGrid(list(NODES)))
    return {m.metadata.dst_node_id: client_app.evaluate(m, contexts[m.metadata.dst_node_id]).content
            for m in messages}


def test_every_reply_reports_modality_counts_and_rank(cfg):
    strategy = build_strategy({"name": "modality_aware"})
    _, _, replies = _train_round(strategy, cfg, _global(cfg), _contexts())
    for node, content in replies.items():
        train_set, _ = client_data(cfg, Path(cfg.data.path), NODES[node], len(NODES))
        metrics = content["metrics"]
        assert metrics["num-examples"] == len(train_set)
        assert metrics["num-image-examples"] == sum(s.image is not None for s in train_set)
        assert metrics["num-text-examples"] == sum(bool(s.context) for s in train_set)
        assert metrics["adapter-rank"] == 4
        assert list(content.array_records) == ["arrays"]  # nothing asked, nothing extra


def test_fisher_clients_send_a_fisher_the_server_merges(cfg):
    strategy = build_strategy({"name": "fisher", "fisher_batches": 2})
    merged, _, replies = _train_round(strategy, cfg, _global(cfg), _contexts())
    for content in replies.values():
        arrays, fisher = content["arrays"], content["fisher"]
        assert {n: a.shape for n, a in fisher.items()} == {n: a.shape for n, a in arrays.items()}
        assert all((f.numpy() >= 0).all() for f in fisher.values())
        assert fisher["text.up.weight"].numpy().sum() > 0  # up gets gradient from the first step
    assert {n: a.shape for n, a in merged.items()} == {n: a.shape for n, a in _global(cfg).items()}


def test_hetero_rank_clients_train_at_their_partition_rank(cfg):
    strategy = build_strategy({"name": "hetero_rank", "partition_ranks": [2, 4]})
    contexts = _contexts()
    queries = {node: _query(cfg, node, ctx) for node, ctx in contexts.items()}
    strategy.set_node_info({node: q.content["info"] for node, q in queries.items()})
    merged, _, replies = _train_round(strategy, cfg, _global(cfg), contexts)
    assert {n: c["metrics"]["adapter-rank"] for n, c in replies.items()} == {11: 2, 12: 4}
    assert replies[11]["arrays"]["text.down.weight"].shape[0] == 2
    assert merged["text.down.weight"].shape[0] == 4
    # units 2, 3 come from the rank-4 client alone
    np.testing.assert_allclose(merged["text.down.weight"].numpy()[2:],
                               replies[12]["arrays"]["text.down.weight"].numpy()[2:], rtol=1e-6)
    evaluated = _evaluate(strategy, cfg, merged, contexts)  # each at its own rank
    assert all(0.0 <= c["metrics"]["acc_mc"] <= 1.0 for c in evaluated.values())


def test_node_config_rank_reported_and_enforced(cfg):
    contexts = _contexts({"adapter-rank": 2})
    answer = _query(cfg, 11, contexts[11])
    assert answer.content["info"]["adapter-rank"] == 2
    with pytest.raises(ValueError, match="rank-2 adapters but the server sent ranks .*hetero_rank"):
        _train_round(build_strategy({"name": "fedavg"}), cfg, _global(cfg), contexts)


def test_personalised_clients_keep_a_local_adapter_and_evaluate_with_it(cfg):
    strategy = build_strategy({"name": "personalised", "personal_steps": 2, "mix": 0.5})
    contexts = _contexts()
    arrays = _global(cfg)
    for server_round in (1, 2):
        arrays, _, replies = _train_round(strategy, cfg, arrays, contexts, server_round)
        assert all(c["metrics"]["personal_rounds"] == server_round for c in replies.values())
        assert list(replies[11].array_records) == ["arrays"]  # the local part never leaves
    local = contexts[11].state[LOCAL_ADAPTERS].to_torch_state_dict()
    assert set(local) == set(arrays) and local["text.up.weight"].abs().sum() > 0  # trained, kept
    other = contexts[12].state[LOCAL_ADAPTERS].to_torch_state_dict()
    assert not torch.equal(local["text.up.weight"], other["text.up.weight"])  # each node its own
    evaluated = _evaluate(strategy, cfg, arrays, contexts)
    assert all("acc_mc" in c["metrics"] for c in evaluated.values())
    runtime = runtime_for(cfg)
    # restored after evaluation
    assert all(isinstance(a, NanoAdapter) for a in runtime.edge.adapters.values())


def _drift(cfg, spec: dict, steps: int = 12) -> dict[str, float]:
    """How far each of node 11's adapter parameters moved from the global ones in one round of
    ``steps`` local steps under the strategy ``spec`` (L2 norm of the difference)."""
    cfg = cfg.copy()
    cfg.train.local_steps = steps
    sent = _global(cfg)
    _, _, replies = _train_round(build_strategy(spec), cfg, sent, _contexts())
    got = replies[11]["arrays"]
    return {k: float(np.linalg.norm(got[k].numpy() - sent[k].numpy())) for k in sent}


def _total(drift: dict[str, float], names=None) -> float:
    return float(np.sqrt(sum(v * v for k, v in drift.items() if names is None or k in names)))


def test_fedprox_keeps_local_weights_near_the_global_ones_by_its_mu(cfg):
    """The same client, data and seed, trained without and with FedProx's proximal term: with a
    strong term (mu = 100) the weights end within a third of the distance plain training takes
    them, with a negligible one (mu = 1e-6) within 1% of it (measured: 0.08 and 0.99997 of it). A
    client that ignored the term would fail the first; one that added it at the wrong scale, the
    second."""
    plain = _total(_drift(cfg, {"name": "fedavg"}))
    strong = _total(_drift(cfg, {"name": "fedprox", "proximal_mu": 100.0}))
    faint = _total(_drift(cfg, {"name": "fedprox", "proximal_mu": 1e-6}))
    assert plain > 0
    assert strong < plain / 3, (strong, plain)
    assert faint == pytest.approx(plain, rel=0.01)


def test_adaptive_regularisation_holds_the_middle_of_the_stack_only(cfg):
    """Adaptive regularisation's term on the middle half of the ordered parameters: those end far
    nearer the global weights than under plain training, the others about as far as plain training
    takes them (measured: 0.07 and 0.88 of plain training's distance)."""
    names = list(_global(cfg).keys())
    middle = set(middle_range(names, 0.25, 0.75))
    assert middle and len(middle) < len(names)
    plain = _drift(cfg, {"name": "fedavg"})
    held = _drift(cfg, {"name": "adaptive_reg", "proximal_mu": 100.0})
    outside = set(names) - middle
    assert _total(held, middle) < _total(plain, middle) / 3, (held, plain)
    assert _total(held, outside) == pytest.approx(_total(plain, outside), rel=0.25), (held, plain)


def test_a_site_reports_what_it_holds_and_evaluates_on_its_own_test_split(cfg, tmp_path):
    """A node with its own data-path trains on all of its train split, evaluates on its test split,
    and its QUERY answer says so (the run's partition table is built from these answers)."""
    import json

    site = tmp_path / "site"
    write_split(shapes_vqa.generate(12, seed=5, prefix="train"), site, "train")
    write_split(shapes_vqa.generate(6, seed=6, prefix="test"), site, "test")
    contexts = _contexts({"data-path": str(site)})
    held = json.loads(_query(cfg, 11, contexts[11]).content["info"]["holdings"])
    assert (held["train"], held["test"], held["own_data"], sum(held["presence"].values())) == (12, 6, True, 18)
    strategy = build_strategy({"name": "fedavg"})
    evaluated = _evaluate(strategy, cfg, _global(cfg), contexts)
    assert all(c["metrics"]["num-examples"] == 6 for c in evaluated.values())


def _sgd(cfg):
    """``cfg`` with plain SGD of 0.05 (what SCAFFOLD's and FedNova's formulas are exact for)."""
    cfg = cfg.copy()
    cfg.train.optimizer, cfg.train.lr = "sgd", 0.05
    return cfg


def test_scaffold_sends_its_variate_and_clients_keep_theirs(cfg):
    """The server's c travels as an extra ArrayRecord; each client answers with delta_c_i and keeps
    c_i in its node state, where round 2 finds it (delta_c = c_i+ - c_i, so round 2's sent c_i is
    round 1's kept one)."""
    cfg = _sgd(cfg)
    strategy = build_strategy({"name": "scaffold"})
    strategy.set_node_info({node: ConfigRecord() for node in NODES})
    contexts = _contexts()
    arrays, _, replies = _train_round(strategy, cfg, _global(cfg), contexts)
    kept = {node: contexts[node].state["scaffold-ci"].to_torch_state_dict() for node in NODES}
    for node, content in replies.items():
        assert sorted(content.array_records) == ["arrays", "scaffold-dc"]
        delta = content["scaffold-dc"].to_torch_state_dict()
        assert all(torch.allclose(delta[n], kept[node][n]) for n in delta)  # c_i was zero: delta is c_i+
    c = {n: (kept[11][n] + kept[12][n]) / 2 for n in kept[11]}  # both of the two nodes replied
    messages = list(strategy.configure_train(2, arrays, _config(cfg, 2), FakeGrid(list(NODES))))
    sent = messages[0].content["scaffold-c"].to_torch_state_dict()
    assert all(torch.allclose(sent[n], c[n], atol=1e-6) for n in c)
    replies = {m.metadata.dst_node_id: client_app.train(m, contexts[m.metadata.dst_node_id]).content for m in messages}
    after = contexts[11].state["scaffold-ci"].to_torch_state_dict()
    delta = replies[11]["scaffold-dc"].to_torch_state_dict()
    assert all(torch.allclose(after[n] - kept[11][n], delta[n], atol=1e-6) for n in delta)


def test_feddyn_clients_keep_their_gradient_state_and_send_only_adapters(cfg):
    cfg = _sgd(cfg)
    strategy = build_strategy({"name": "feddyn", "alpha": 0.1})
    contexts = _contexts()
    sent = _global(cfg)
    _, _, replies = _train_round(strategy, cfg, sent, contexts)
    for node, content in replies.items():
        assert list(content.array_records) == ["arrays"]
        kept = contexts[node].state["feddyn-grad"].to_torch_state_dict()
        moved = content["arrays"].to_torch_state_dict()
        start = sent.to_torch_state_dict()
        assert all(torch.allclose(kept[n], -0.1 * (moved[n] - start[n]), atol=1e-6) for n in kept)


def test_fednova_clients_take_their_epochs_and_report_what_they_accumulated(cfg):
    """With local_epochs=1 each client takes ceil(its samples / batch size) steps; a_i is
    steps * lr for plain SGD at a constant rate."""
    cfg = _sgd(cfg)
    strategy = build_strategy({"name": "fednova", "local_epochs": 1.0})
    merged, _, replies = _train_round(strategy, cfg, _global(cfg), _contexts())
    for node, content in replies.items():
        train_set, _ = client_data(cfg, Path(cfg.data.path), NODES[node], len(NODES))
        steps = -(-len(train_set) // cfg.train.batch_size)
        assert content["metrics"]["local_steps"] == steps
        assert content["fednova"]["a"] == pytest.approx(steps * 0.05)
    assert {n: a.dtype for n, a in merged.items()} == {n: a.dtype for n, a in _global(cfg).items()}


def test_fednova_refuses_an_adaptive_optimiser_before_the_run(cfg):
    with pytest.raises(ConfigError, match="FedNova needs train.optimizer=sgd"):
        check_names(_with(cfg, strategy={"name": "fednova"}))
    check_names(_with(cfg, strategy={"name": "fednova"}, train={"optimizer": {"name": "sgd", "momentum": 0.9}}))
    with pytest.raises(ConfigError, match="local_epochs cannot go with privacy.dp"):
        check_names(_with(cfg, strategy={"name": "fednova", "local_epochs": 1}, train={"optimizer": "sgd"},
                          privacy={"dp": True}))


def _with(cfg, **sections):
    out = cfg.copy()
    for name, values in sections.items():
        if name == "strategy":
            out.strategy = values
        else:
            for key, value in values.items():
                OmegaConf.update(out, f"{name}.{key}", value, merge=False)
    return out
