"""SecAgg+ through anther's strategy wrapper and Flower's client mod (issue 7 item 3).

Real ClientApps behind anther's privacy mod answer over an in-process grid; the secure
aggregate must equal the plain strategy's within the quantisation bound, the server must
never receive an adapter, and a client dying mid-round must not stop the others' sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.exception import AggregationError

from anther.core.config import ConfigError, to_yaml
from anther.simulations.experiment import load_config
from anther.strategies.privacy import with_privacy
from anther.strategies.privacy.secagg_protocol import SecAggParams, protocol_sizes
from anther.strategies.privacy.secure_vector import VectorLayout, decode, encode
from anther.strategies.registry import build_strategy

NODES = [101, 102, 103, 104]
WEIGHTS = [30, 50, 20, 40]
SIZES = {"image.down.weight": (4, 3), "image.up.weight": (3, 4), "text.down.weight": (4, 3), "text.up.bias": (3,)}


@pytest.fixture(autouse=True)
def _runtime(monkeypatch):
    from fakes import play_serverapp_runtime

    play_serverapp_runtime(monkeypatch)


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SIZES.items()}


def _update(node: int, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: v + rng.normal(0, 0.05, v.shape) for k, v in received.items()}


def _metrics(images: list[int]):
    def metrics(node: int) -> dict[str, float]:
        i = NODES.index(node)
        return {"num-examples": WEIGHTS[i], "num-image-examples": images[i],
                "num-text-examples": WEIGHTS[i], "partition-id": i, "train_loss": float(i)}
    return metrics


def _round(strategy, cfg, grid) -> dict[str, np.ndarray]:
    arrays = ArrayRecord({k: Array(v) for k, v in _global().items()})
    config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": 1})
    messages = list(strategy.configure_train(1, arrays, config, grid))
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    result, _ = strategy.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in result.items()}


def _plain_and_secure(name: str, images: list[int], fail: frozenset = frozenset(), secagg=()):
    from loopback import LoopbackGrid, training_app

    app = training_app(_update, _metrics(images), set(fail))
    plain_cfg = load_config(
        "default", [f"strategy.name={name}", "federation.num_clients=4", "federation.fraction_train=1.0"]
    )
    secure_cfg = load_config(
        "default",
        [
            f"strategy.name={name}",
            "federation.num_clients=4",
            "federation.fraction_train=1.0",
            "privacy.secagg.enabled=true",
            *secagg,
        ],
    )
    plain = _round(build_strategy({"name": name}), plain_cfg, LoopbackGrid(app, NODES))
    grid = LoopbackGrid(app, NODES)
    secure = _round(with_privacy(build_strategy({"name": name}), secure_cfg), secure_cfg, grid)
    return plain, secure, grid, secure_cfg.privacy.secagg


def _tolerance(s, clients: int, weight_sum: float, largest: float) -> float:
    """|S/U - S'/U'| for sums S, U each off by < clients quantisation steps (stochastic rounding)."""
    err = clients * 2 * s.clipping_range / s.quantization_range
    u = weight_sum / s.max_weight
    return err / u * (1 + largest) * 1.01 + 1e-6  # + float32 rounding of the result


@pytest.mark.parametrize("name", ["fedavg", "modality_aware"])
def test_secure_aggregate_equals_plain_within_quantisation(name):
    plain, secure, _, s = _plain_and_secure(name, images=[30, 0, 10, 20])
    for k in SIZES:
        weight_sum = 60 if (name == "modality_aware" and k.startswith("image")) else 140
        largest = float(np.abs(plain[k] - _global()[k]).max())
        np.testing.assert_allclose(secure[k], plain[k], rtol=0, atol=_tolerance(s, 4, weight_sum, largest))
    assert any(not np.array_equal(secure[k], plain[k]) for k in SIZES), "quantisation leaves a trace"


def test_modality_nobody_trained_keeps_its_global_value():
    plain, secure, _, _ = _plain_and_secure("modality_aware", images=[0, 0, 0, 0])
    for k in ("image.down.weight", "image.up.weight"):
        np.testing.assert_array_equal(plain[k], _global()[k])
        np.testing.assert_allclose(secure[k], _global()[k], rtol=0, atol=1e-7)


def test_server_receives_no_adapter_only_masked_vectors():
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    _, _, grid, _ = _plain_and_secure("fedavg", images=[30, 0, 10, 20])
    assert grid.seen_by_server and all(not r.content.array_records for r in grid.seen_by_server)
    masked = [r for r in grid.seen_by_server if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 4 and all(set(r.content.metric_records) == {"metrics"} for r in masked)


def test_a_client_dying_mid_round_leaves_the_others_sum():
    """Node 104 fails after sharing its keys; survivors' shares rebuild its pairwise masks."""
    plain, secure, _, s = _plain_and_secure("fedavg", images=[30, 0, 10, 20], fail=frozenset({104}))
    for k in SIZES:
        largest = float(np.abs(plain[k] - _global()[k]).max())
        np.testing.assert_allclose(secure[k], plain[k], rtol=0, atol=_tolerance(s, 3, 100, largest))


def test_two_survivors_are_refused_unless_explicitly_allowed():
    """A sum of two updates gives each client the other's: refused, saying why, by default; the
    loudly named setting lets it through (and the masks still cancel)."""
    with pytest.raises(AggregationError, match=r"only 2 client\(s\) left.*unsafe_allow_two_clients"):
        _plain_and_secure("fedavg", images=[30, 0, 10, 20], fail=frozenset({103, 104}))
    plain, secure, _, s = _plain_and_secure("fedavg", images=[30, 0, 10, 20], fail=frozenset({103, 104}),
                                            secagg=("privacy.secagg.unsafe_allow_two_clients=true",))
    for k in SIZES:
        largest = float(np.abs(plain[k] - _global()[k]).max())
        np.testing.assert_allclose(secure[k], plain[k], rtol=0, atol=_tolerance(s, 2, 80, largest))


def test_too_few_survivors_aggregate_nothing():
    """With a threshold of 4 of 4 shares, one failure leaves masks that cannot be removed."""
    from loopback import LoopbackGrid, training_app

    cfg = load_config(
        "default",
        [
            "federation.num_clients=4",
            "federation.fraction_train=1.0",
            "privacy.secagg.enabled=true",
            "privacy.secagg.reconstruction_threshold=4",
            "privacy.secagg.num_shares=4",
        ],
    )
    grid = LoopbackGrid(training_app(_update, _metrics([1, 1, 1, 1]), {104}), NODES)
    strategy = with_privacy(build_strategy({"name": "fedavg"}), cfg)
    arrays = ArrayRecord({k: Array(v) for k, v in _global().items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"experiment": to_yaml(cfg)}), grid))
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    with pytest.raises(AggregationError, match="fewer than the reconstruction threshold 4"):
        strategy.aggregate_train(1, replies)


def test_encode_decode_is_the_weighted_mean_by_hand():
    layout = VectorLayout(("image.w", "text.w"), ("num-image-examples", "num-text-examples"), max_weight=10.0)
    g = {"image.w": np.array([1.0]), "text.w": np.array([0.0])}
    a = encode(layout, g, {"image.w": np.array([3.0]), "text.w": np.array([1.0])},
               {"num-image-examples": 2, "num-text-examples": 1}, clipping_range=8.0)
    b = encode(layout, g, {"image.w": np.array([9.0]), "text.w": np.array([4.0])},
               {"num-image-examples": 0, "num-text-examples": 3}, clipping_range=8.0)
    out = decode(layout, [x + y for x, y in zip(a, b)], g)
    assert out["image.w"] == pytest.approx([3.0])  # only the client with images counts
    assert out["text.w"] == pytest.approx([(1 * 1 + 3 * 4) / 4])


def test_encode_refuses_values_the_quantiser_would_clip():
    layout = VectorLayout(("w",), ("num-examples",), max_weight=10.0)
    with pytest.raises(ValueError, match=r"privacy\.secagg\.clipping_range"):
        encode(layout, {"w": np.zeros(2)}, {"w": np.full(2, 100.0)}, {"num-examples": 10}, clipping_range=8.0)


def test_protocol_sizes_follow_flower():
    assert protocol_sizes(SecAggParams(num_shares=1.0, reconstruction_threshold=0.5), 3) == (3, 2)
    assert protocol_sizes(SecAggParams(num_shares=0.5, reconstruction_threshold=0.5), 10) == (5, 2)
    assert protocol_sizes(SecAggParams(num_shares=1.0, reconstruction_threshold=0.5), 2) == (2, 2)


@pytest.mark.parametrize("override, key", [
    ("privacy.secagg.enabled=true strategy.name=fisher", "privacy.secagg.enabled"),
    ("privacy.secagg.enabled=true strategy.name=fedmedian", "privacy.secagg.enabled"),
    ("privacy.secagg.enabled=true privacy.client_level.mode=server_fixed", "privacy.client_level.mode"),
    ("privacy.secagg.enabled=true privacy.secagg.modulus_range=1000", "privacy.secagg.modulus_range"),
    ("privacy.secagg.enabled=true privacy.secagg.quantization_range=1073741824",
     "privacy.secagg.quantization_range"),
    ("privacy.secagg.enabled=true privacy.secagg.num_shares=2.5", "privacy.secagg.num_shares"),
    ("privacy.secagg.enabled=true federation.num_clients=1 federation.min_train_clients=1",
     "federation.min_train_clients"),
])
def test_bad_secagg_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("default", override)


def test_two_clients_a_round_need_the_unsafe_setting():
    with pytest.raises(ConfigError, match=r"federation\.min_train_clients=2 .*unsafe_allow_two_clients=true"):
        load_config("default", "privacy.secagg.enabled=true federation.num_clients=2")
    cfg = load_config("default", "privacy.secagg.enabled=true federation.num_clients=2 "
                                 "privacy.secagg.unsafe_allow_two_clients=true")
    assert cfg.privacy.secagg.unsafe_allow_two_clients


def test_custom_strategy_that_needs_each_update_is_refused():
    cfg = load_config("default", ["privacy.secagg.enabled=true"])
    with pytest.raises(ValueError, match="FedMedian"):
        with_privacy(build_strategy({"_target_": "flwr.serverapp.strategy.FedMedian"}), cfg)


@pytest.mark.slow
def test_simulation_with_secagg_matches_plain_modality_aware(tmp_path):
    """Real ``anther simulate`` runs, 3 clients, 1 round, missing modalities (so the image and text
    adapters have different weights): SecAgg+ on gives plain modality-aware FedAvg's adapters."""
    from simulation_run import simulate

    from anther.server.checkpoint import load_checkpoint

    common = [
        "federation.num_clients=3",
        "federation.fraction_train=1.0",
        "federation.rounds=1",
        "strategy.name=modality_aware",
        "scenario=missing_b40",
    ]
    plain_dir, _ = simulate(tmp_path / "plain", common)
    secure_dir, result = simulate(tmp_path / "secure", [*common, "privacy.secagg.enabled=true",
                                                        "privacy.secagg.max_weight=100"])
    trained = result["rounds"][1]
    assert trained["clients"] == 3 and trained["adapter_bytes_up"] == 0  # no adapter reached the server
    assert trained["train_metrics"]["secagg_bytes_up"] > 0
    plain, secure = load_checkpoint(plain_dir, 1).adapters, load_checkpoint(secure_dir, 1).adapters
    s = result["config"]["privacy"]["secagg"]
    # each of the sums S (updates) and U (weights / max_weight) is off by < 3 quantisation steps;
    # every modality was carried by well over 5 of the ~32 training samples, so U > 5 / max_weight
    # and S / U (updates far below 0.1) is off by < 3 step max_weight / 5 (1 + 0.1)
    step = 2 * s["clipping_range"] / s["quantization_range"]
    for name, value in plain.items():
        largest = float((value - secure[name]).abs().max())
        assert largest <= 3 * step * s["max_weight"] / 5 * 1.1 + 1e-6, (name, largest)
    assert any(not torch.equal(plain[k], secure[k]) for k in plain)
