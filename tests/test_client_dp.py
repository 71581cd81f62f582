"""Client-level DP: Flower's DP wrappers around anther strategies, the clipping mods, the accountant.

Checked by hand: clipping bounds each update's norm (server side and in the client mod),
the noise on the aggregate has std z C / m, a wrapper around a non-Flower anther strategy
(modality-aware FedAvg) aggregates the clipped updates as that strategy would, and the
spent epsilon is opacus's RDP accountant's for the round's effective noise multiplier.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from opacus.accountants import RDPAccountant

from anther.core.config import ConfigError, to_yaml
from anther.server import checkpoint
from anther.server.run_state import load_strategy_state, strategy_state
from anther.simulations.experiment import load_config
from anther.strategies.privacy import with_privacy
from anther.strategies.privacy.client_dp import CLIENT_EPSILON_METRIC, effective_noise_multiplier
from anther.strategies.registry import build_strategy

NODES = [201, 202]
GLOBAL = {"image.w": np.zeros(3, np.float32), "text.w": np.zeros(4, np.float32)}
# node 201's update has norm 5 (3-4-0 in image.w; 0 in text.w); node 202's has norm 0.5
UPDATES = {201: {"image.w": np.array([3.0, 4.0, 0.0]), "text.w": np.zeros(4)},
           202: {"image.w": np.zeros(3), "text.w": np.array([0.3, 0.4, 0.0, 0.0])}}


@pytest.fixture(autouse=True)
def _runtime(monkeypatch):
    from fakes import play_serverapp_runtime

    play_serverapp_runtime(monkeypatch)


def _metrics(node: int) -> dict[str, float]:
    return {"num-examples": 10, "num-image-examples": 10 if node == 201 else 0, "num-text-examples": 10,
            "partition-id": NODES.index(node)}


def _cfg(*overrides: str):
    return load_config("default", ["federation.num_clients=2", *overrides])


def _round(strategy, cfg, global_arrays=GLOBAL, updates=UPDATES, server_round: int = 1):
    from loopback import LoopbackGrid, training_app

    grid = LoopbackGrid(training_app(lambda n, r: {k: r[k] + updates[n][k] for k in r}, _metrics), NODES)
    arrays = ArrayRecord({k: Array(v) for k, v in global_arrays.items()})
    config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": server_round})
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    replies = grid.send_and_receive(messages)
    assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
    result, metrics = strategy.aggregate_train(server_round, replies)
    return {k: v.numpy() for k, v in result.items()}, metrics, replies


@pytest.mark.parametrize("mode", ["server_fixed", "client_fixed"])
def test_clipping_bounds_updates_around_modality_aware(mode):
    """C = 1, no noise: node 201's update (norm 5) is scaled to norm 1, node 202's (0.5) kept;
    modality-aware FedAvg then averages image.w over node 201 alone and text.w over both."""
    cfg = _cfg("strategy.name=modality_aware", f"privacy.client_level.mode={mode}",
               "privacy.client_level.noise_multiplier=0", "privacy.client_level.clipping_norm=1")
    out, _, replies = _round(with_privacy(build_strategy({"name": "modality_aware"}), cfg), cfg)
    np.testing.assert_allclose(out["image.w"], [0.6, 0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["text.w"], [0.15, 0.2, 0.0, 0.0], atol=1e-6)
    if mode == "client_fixed":  # the mod clipped on the client: the server got norm-1 updates
        norms = {r.metadata.src_node_id: np.sqrt(sum(float(np.sum(v.numpy() ** 2))
                                                     for v in r.content["arrays"].values())) for r in replies}
        assert norms == pytest.approx({201: 1.0, 202: 0.5}, abs=1e-6)


def test_noise_std_is_z_c_over_m():
    """Clients send back (nearly) what they got: the aggregate is noise of std z C / m. (An update
    of exactly zero makes Flower's clipping divide by zero: see test_zero_update_skips_the_round.)"""
    z, c, m = 1.5, 0.4, 2
    cfg = _cfg("privacy.client_level.mode=server_fixed", f"privacy.client_level.noise_multiplier={z}",
               f"privacy.client_level.clipping_norm={c}")
    big = {"text.w": np.zeros(40_000, np.float32)}
    zero = {n: {"text.w": np.full(40_000, 1e-7)} for n in NODES}
    out, _, _ = _round(with_privacy(build_strategy({"name": "fedavg"}), cfg), cfg, big, zero)
    assert float(np.std(out["text.w"])) == pytest.approx(z * c / m, rel=0.02)
    assert abs(float(np.mean(out["text.w"]))) < 0.01


def test_adaptive_client_mod_reports_the_norm_bit_and_the_norm_moves():
    cfg = _cfg("privacy.client_level.mode=client_adaptive", "privacy.client_level.noise_multiplier=0",
               "privacy.client_level.clipping_norm=1")
    strategy = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    _, _, replies = _round(strategy, cfg)
    bits = {r.metadata.src_node_id: r.content["metrics"]["norm_bit"] for r in replies}
    assert bits == {201: 1, 202: 0}  # only the norm-5 update was clipped
    assert strategy.dp.clipping_norm == pytest.approx(1.0)  # 1/2 clipped = the target quantile 0.5


def test_epsilon_is_opacus_rdp_at_the_effective_noise_multiplier():
    """Equal weights: the configured z; the accountant steps once per round at q = m / N."""
    cfg = _cfg("privacy.client_level.mode=server_fixed", "privacy.client_level.noise_multiplier=1.2",
               "federation.num_clients=4", "federation.fraction_train=0.5")
    strategy = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    reference = RDPAccountant()
    for server_round in (1, 2):
        _, metrics, _ = _round(strategy, cfg, server_round=server_round)
        reference.step(noise_multiplier=1.2, sample_rate=2 / 4)
        assert metrics[CLIENT_EPSILON_METRIC] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_unequal_weights_lower_the_effective_noise_multiplier():
    assert effective_noise_multiplier(1.0, 2, 0.5) == 1.0  # equal weights: noise as configured
    assert effective_noise_multiplier(1.0, 2, 0.8) == pytest.approx(1 / 1.6)  # one client moves 80%


def test_round_table_shows_client_epsilon():
    from rich.console import Console

    from anther.server.run_report import RoundTable, round_columns

    assert "dp_client_epsilon" not in [k for k, _, _ in round_columns(dp=False)]
    console = Console(record=True, width=200)
    RoundTable(console, round_columns(dp=False, client_dp=True)).add({"round": 1, "dp_client_epsilon": 3.456})
    text = console.export_text()  # export_text clears the record
    assert "eps (client)" in text and "3.46" in text


@pytest.mark.parametrize("override, key", [
    ("privacy.client_level.mode=client_fixed strategy.name=fisher", "privacy.client_level.mode"),
    ("privacy.client_level.mode=server_fixed strategy.name=hetero_rank", "privacy.client_level.mode"),
    ("privacy.client_level.mode=server_fixed strategy.name=krum", "privacy.client_level.mode"),
    ("privacy.client_level.mode=sideways", "privacy.client_level.mode"),
    ("privacy.client_level.mode=server_fixed privacy.client_level.clipping_norm=0",
     "privacy.client_level.clipping_norm"),
    ("privacy.client_level.mode=server_adaptive privacy.client_level.noise_multiplier=1",
     "privacy.client_level.clipped_count_stddev"),
])
def test_bad_client_level_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("default", override)


def test_extra_arrays_from_a_custom_strategy_are_refused():
    """A reply with a second ArrayRecord (a Fisher...) would reach the server without noise."""
    from flwr.app import Message, MetricRecord, RecordDict

    cfg = _cfg("privacy.client_level.mode=server_fixed")
    strategy = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    from loopback import LoopbackGrid

    (msg, _) = strategy.configure_train(1, arrays, ConfigRecord({}), LoopbackGrid(None, NODES))
    leaky = Message(RecordDict({"arrays": arrays, "fisher": arrays,
                                "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
    with pytest.raises(ValueError, match="without DP noise"):
        strategy.aggregate_train(1, [leaky])


def test_zero_update_skips_the_round():
    """Flower's server-side clipping divides by the update norm; an update of exactly zero
    becomes an AggregationError (the round loop skips the round) instead of a crash."""
    from flwr.serverapp.exception import AggregationError

    cfg = _cfg("privacy.client_level.mode=server_fixed")
    zero = {n: {k: np.zeros_like(v) for k, v in GLOBAL.items()} for n in NODES}
    with pytest.raises(AggregationError, match="zero"):
        _round(with_privacy(build_strategy({"name": "fedavg"}), cfg), cfg, updates=zero)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["client_adaptive"])
def test_simulation_records_client_epsilon_each_round(tmp_path, mode):
    """A real ``anther simulate`` run (2 clients, 2 rounds) with client-side adaptive clipping, the
    mode whose pieces run on both sides (the clients' mod, the server's noise): epsilon in
    result.json. The server-side modes' aggregation is checked above, without processes."""
    from simulation_run import simulate

    _, result = simulate(tmp_path, [f"privacy.client_level.mode={mode}", "privacy.client_level.noise_multiplier=0.8",
                                    "privacy.client_level.clipping_norm=0.5",
                                    "privacy.client_level.clipped_count_stddev=1"])
    trained = result["rounds"][1:]
    assert all(r["clients"] == 2 for r in trained), [(r["rejected"], r["failed"], r["skipped"]) for r in trained]
    reference = RDPAccountant()
    for r in trained:  # 2 of 2 clients: q = 1; weights are near-equal, so z_eff <= 0.8
        reference.step(noise_multiplier=0.8, sample_rate=1.0)
        assert r["dp_client_epsilon"] >= reference.get_epsilon(1e-5) * (1 - 1e-9)
    assert trained[0]["dp_client_epsilon"] < trained[1]["dp_client_epsilon"]
    assert "dp_client_epsilon" not in result["rounds"][0]


def test_round_loop_sees_masked_replies_under_dp_and_secagg():
    from anther.server.round_guard import replies_are_masked

    both = _cfg("privacy.client_level.mode=client_fixed", "privacy.secagg.enabled=true", "federation.num_clients=3",
                "federation.fraction_train=1.0")
    assert replies_are_masked(with_privacy(build_strategy({"name": "fedavg"}), both))
    dp_only = _cfg("privacy.client_level.mode=client_fixed")
    assert not replies_are_masked(with_privacy(build_strategy({"name": "fedavg"}), dp_only))


def test_accountant_and_clipping_norm_survive_a_checkpoint(tmp_path):
    """Resume: a fresh wrapper loaded from round 1's checkpoint has the accountant's history and
    the adaptive clipping norm, and reports round 2's epsilon and norm as the wrapper that never
    stopped."""
    cfg = _cfg(
        "privacy.client_level.mode=client_adaptive",
        "privacy.client_level.noise_multiplier=0.8",
        "privacy.client_level.clipped_count_stddev=1",
        "privacy.client_level.clipping_norm=1",
    )
    straight = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    _round(straight, cfg, server_round=1)
    tensors: dict[str, torch.Tensor] = {}
    saved = strategy_state(straight, "strategy", tensors)
    checkpoint.save_checkpoint(tmp_path, 1, {}, {"strategy": saved}, tensors)
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    resumed = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    load_strategy_state(resumed, json.loads(json.dumps(ckpt.state["strategy"])), ckpt.tensors)
    assert resumed.accountant.history == straight.accountant.history != []
    assert resumed.dp.clipping_norm == straight.dp.clipping_norm != 1.0
    np.random.seed(7)  # the noise on the clipped count (a run's checkpoint saves this RNG too)
    _, want, _ = _round(straight, cfg, server_round=2)
    np.random.seed(7)
    _, got, _ = _round(resumed, cfg, server_round=2)
    assert got[CLIENT_EPSILON_METRIC] == want[CLIENT_EPSILON_METRIC]
    assert resumed.dp.clipping_norm == straight.dp.clipping_norm
