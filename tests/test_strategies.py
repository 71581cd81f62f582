"""Every strategy anther offers, checked against aggregates worked out by hand.

Two to four clients with one- or two-element arrays; every expected number is written
here (as a literal or the arithmetic that derives it), never computed by the code under
test. Replies are real ``flwr.app.Message`` replies, built with ``reply_to`` as a
ClientApp builds them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import FakeGrid, MeanBackbone, ScalarEdge, ScalarEncoder, play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from torch import nn

from anther.client.api import ExtraContext
from anther.model.nano_adapter import NanoAdapter, NanoAdapterConfig
from anther.strategies.fedprox import MiddleProximal, middle_range, proximal_term
from anther.strategies.fisher_merging import FisherMerging, diagonal_fisher
from anther.strategies.hetero_rank import HeteroRankFedAvg, truncate_to_rank
from anther.strategies.modality_aware import ModalityAwareFedAvg
from anther.strategies.personalised import PersonalisedAdapters, PersonalisedFedAvg
from anther.strategies.registry import STRATEGIES, build_strategy


# -- fake federation ---------------------------------------------------------------------
@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


# What anther's registry passes to every built-in: the round loop samples, the strategy takes all.
TAKE_ALL = {"min_train_nodes": 1, "min_available_nodes": 1, "min_evaluate_nodes": 1}


def record(arrays: dict[str, list]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()})


def reply(node_id: int, arrays: dict[str, list], metrics: dict[str, float] | None = None,
          num_examples: int = 1, **extra: dict[str, list]) -> Message:
    """A train reply from ``node_id``, as the ClientApp sends it (``Message(content, reply_to=msg)``)."""
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": record(arrays),
                          "metrics": MetricRecord({"num-examples": num_examples, **(metrics or {})})})
    for key, values in extra.items():
        content[key] = record(values)
    return Message(content, reply_to=instruction)


def run_round(strategy, server_round: int, global_arrays: dict[str, list] | ArrayRecord,
              replies: list[Message], nodes: tuple[int, ...] = (1, 2, 3)):
    """configure_train then aggregate_train, as anther's round loop calls them."""
    arrays = global_arrays if isinstance(global_arrays, ArrayRecord) else record(global_arrays)
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(list(nodes))))
    aggregated, metrics = strategy.aggregate_train(server_round, replies)
    return aggregated, metrics, messages


def as_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def assert_arrays(arrays: ArrayRecord, expected: dict[str, list]) -> None:
    got = as_numpy(arrays)
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], np.asarray(value, dtype=np.float64), rtol=1e-12, atol=1e-12,
                                   err_msg=name)


# -- Flower's strategies, built through the registry -------------------------------------
def test_fedavg_weights_by_examples():
    strategy = build_strategy({"name": "fedavg"})
    replies = [reply(1, {"w": [1, 2]}, {"train_loss": 1.0}, num_examples=1),
               reply(2, {"w": [4, 8]}, {"train_loss": 2.0}, num_examples=3)]
    arrays, metrics, _ = run_round(strategy, 1, {"w": [0, 0]}, replies)
    # (1*[1,2] + 3*[4,8]) / 4
    assert_arrays(arrays, {"w": [3.25, 6.5]})
    assert metrics["train_loss"] == pytest.approx(1.75)


def test_fedprox_sends_mu_and_averages_like_fedavg():
    strategy = build_strategy({"name": "fedprox", "proximal_mu": 0.1})
    replies = [reply(1, {"w": [1, 2]}, num_examples=1), reply(2, {"w": [4, 8]}, num_examples=3)]
    arrays, _, messages = run_round(strategy, 1, {"w": [0, 0]}, replies)
    assert all(m.content["config"]["proximal-mu"] == 0.1 for m in messages)
    assert_arrays(arrays, {"w": [3.25, 6.5]})


def test_fedprox_proximal_term_value_and_gradient():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([3.0, 3.0], requires_grad=True)}
    g = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0, 1.0])}
    # mu/2 * (||[1,2]||^2 + ||[2,2]||^2) = 0.05 * (5 + 8)
    term = proximal_term(w, g, ["a", "b"], mu=0.1)
    assert term.item() == pytest.approx(0.65)
    term.backward()
    # d/dw = mu * (w - g)
    torch.testing.assert_close(w["a"].grad, torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(w["b"].grad, torch.tensor([0.2, 0.2]))
    # only the named parameters count: 0.05 * 8
    assert proximal_term(w, g, ["b"], mu=0.1).item() == pytest.approx(0.4)


def test_fedmedian_is_elementwise_median():
    strategy = build_strategy({"name": "fedmedian"})
    replies = [reply(1, {"w": [1, 10]}), reply(2, {"w": [2, 20]}), reply(3, {"w": [7, 0]})]
    arrays, _, _ = run_round(strategy, 1, {"w": [0, 0]}, replies)
    assert_arrays(arrays, {"w": [2, 10]})


def test_fedtrimmedavg_drops_one_each_side_of_five():
    strategy = build_strategy({"name": "fedtrimmedavg", "beta": 0.2})
    values = [[1, -5], [2, 0], [3, 1], [4, 2], [100, 3]]
    replies = [reply(i + 1, {"w": v}) for i, v in enumerate(values)]
    arrays, _, _ = run_round(strategy, 1, {"w": [0, 0]}, replies, nodes=(1, 2, 3, 4, 5))
    # mean(2, 3, 4), mean(0, 1, 2)
    assert_arrays(arrays, {"w": [3, 1]})


# Four clients at 0, 1, 3, 10. Squared distances: ab 1, ac 9, ad 100, bc 4, bd 81, cd 49.
# Krum score = sum of the n - f - 2 = 2 smallest: a 1+9=10, b 1+4=5, c 4+9=13, d 49+81=130.
KRUM_REPLIES = [({"w": [0]}, 1), ({"w": [1]}, 3), ({"w": [3]}, 1), ({"w": [10]}, 1)]


def test_krum_selects_the_most_central_client():
    strategy = build_strategy({"name": "krum"})
    replies = [reply(i + 1, a, num_examples=n) for i, (a, n) in enumerate(KRUM_REPLIES)]
    arrays, _, _ = run_round(strategy, 1, {"w": [0]}, replies, nodes=(1, 2, 3, 4))
    assert_arrays(arrays, {"w": [1]})  # b


def test_multikrum_averages_the_two_best():
    strategy = build_strategy({"name": "multikrum", "num_nodes_to_select": 2})
    replies = [reply(i + 1, a, num_examples=n) for i, (a, n) in enumerate(KRUM_REPLIES)]
    arrays, _, _ = run_round(strategy, 1, {"w": [0]}, replies, nodes=(1, 2, 3, 4))
    assert_arrays(arrays, {"w": [0.75]})  # b and a: (3*1 + 1*0) / 4


def _two_rounds(strategy, delta1: list[float], delta2: list[float]) -> tuple[ArrayRecord, ArrayRecord]:
    """Round 1 from x0 = 0, round 2 from the round-1 result. The two (equally weighted) clients
    reply x + 0.5 * delta and x + 1.5 * delta, so their mean update is ``delta1``, then ``delta2``."""
    x0 = {"w": [0.0, 0.0]}
    r1 = [reply(1, {"w": [0.5 * d for d in delta1]}), reply(2, {"w": [1.5 * d for d in delta1]})]
    x1, _, _ = run_round(strategy, 1, x0, r1)
    base = x1["w"].numpy()
    r2 = [reply(1, {"w": list(base + 0.5 * np.asarray(delta2))}),
          reply(2, {"w": list(base + 1.5 * np.asarray(delta2))})]
    x2, _, _ = run_round(strategy, 2, x1, r2)
    return x1, x2


def test_fedavgm_two_rounds():
    strategy = build_strategy({"name": "fedavgm", "server_learning_rate": 0.5, "server_momentum": 0.9})
    x1, x2 = _two_rounds(strategy, [1.0, 0.0], [1.0, 0.0])
    # round 1: pseudo-gradient 0 - 1 = -1, momentum -1, x1 = 0 - 0.5 * -1
    assert_arrays(x1, {"w": [0.5, 0.0]})
    # round 2: pseudo-gradient 0.5 - 1.5 = -1, momentum 0.9 * -1 + -1 = -1.9, x2 = 0.5 + 0.5 * 1.9
    assert_arrays(x2, {"w": [1.45, 0.0]})


def test_fedadagrad_two_rounds():
    strategy = build_strategy({"name": "fedadagrad", "eta": 0.1, "tau": 0.001})
    x1, x2 = _two_rounds(strategy, [1.0, -2.0], [3.0, 0.0])
    # v1 = delta1^2 = [1, 4]; x1 = 0.1 * delta1 / (sqrt(v1) + tau)
    x1_hand = [0.1 * 1 / (1 + 0.001), 0.1 * -2 / (2 + 0.001)]
    assert_arrays(x1, {"w": x1_hand})
    # v2 = v1 + delta2^2 = [10, 4]; m2 = delta2 (beta_1 = 0)
    assert_arrays(x2, {"w": [x1_hand[0] + 0.1 * 3 / (math.sqrt(10) + 0.001), x1_hand[1]]})


def test_fedadam_two_rounds():
    strategy = build_strategy({"name": "fedadam", "eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001})
    x1, x2 = _two_rounds(strategy, [1.0, -2.0], [3.0, 0.0])
    # m1 = 0.1 * delta1 = [0.1, -0.2]; v1 = 0.01 * delta1^2 = [0.01, 0.04].
    # Flower's bias correction uses exponent server_round + 1: eta * sqrt(1 - b2^2) / (1 - b1^2).
    eta1 = 0.1 * math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    x1_hand = [eta1 * 0.1 / (0.1 + 0.001), eta1 * -0.2 / (0.2 + 0.001)]
    assert_arrays(x1, {"w": x1_hand})
    # m2 = 0.9 m1 + 0.1 delta2 = [0.39, -0.18]; v2 = 0.99 v1 + 0.01 delta2^2 = [0.0999, 0.0396]
    eta2 = 0.1 * math.sqrt(1 - 0.99 ** 3) / (1 - 0.9 ** 3)
    assert_arrays(x2, {"w": [x1_hand[0] + eta2 * 0.39 / (math.sqrt(0.0999) + 0.001),
                             x1_hand[1] + eta2 * -0.18 / (math.sqrt(0.0396) + 0.001)]})


def test_fedyogi_two_rounds():
    strategy = build_strategy({"name": "fedyogi", "eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001})
    x1, x2 = _two_rounds(strategy, [1.0, -2.0], [3.0, 0.0])
    # v1 = 0 - 0.01 * delta1^2 * sign(0 - delta1^2) = [0.01, 0.04]; no bias correction
    x1_hand = [0.1 * 0.1 / (0.1 + 0.001), 0.1 * -0.2 / (0.2 + 0.001)]
    assert_arrays(x1, {"w": x1_hand})
    # v2 = v1 - 0.01 * delta2^2 * sign(v1 - delta2^2) = [0.01 + 0.09, 0.04]; m2 = [0.39, -0.18]
    assert_arrays(x2, {"w": [x1_hand[0] + 0.1 * 0.39 / (math.sqrt(0.1) + 0.001),
                             x1_hand[1] + 0.1 * -0.18 / (0.2 + 0.001)]})


# -- Fisher merging ----------------------------------------------------------------------
# A: theta [1, 2], F [1, 4], 1 example. B: theta [3, 6], F [3, 1], 3 examples.
def _fisher_replies(fisher_a=(1, 4), fisher_b=(3, 1)) -> list[Message]:
    return [reply(1, {"w": [1, 2]}, num_examples=1, fisher={"w": list(fisher_a)}),
            reply(2, {"w": [3, 6]}, num_examples=3, fisher={"w": list(fisher_b)})]


def test_fisher_merging_unweighted():
    strategy = build_strategy({"name": "fisher", "eps": 0.0, "weight_by_examples": False,
                               "fisher_batches": 2})
    assert isinstance(strategy, FisherMerging)
    arrays, _, messages = run_round(strategy, 1, {"w": [0, 0]}, _fisher_replies())
    assert all(m.content["config"]["fisher-batches"] == 2 for m in messages)  # asks clients for a Fisher
    # (1*1 + 3*3) / (1 + 3), (4*2 + 1*6) / (4 + 1)
    assert_arrays(arrays, {"w": [2.5, 2.8]})


def test_fisher_merging_weighted_by_examples():
    strategy = build_strategy({"name": "fisher", "eps": 0.0})
    arrays, _, _ = run_round(strategy, 1, {"w": [0, 0]}, _fisher_replies())
    # (1*1*1 + 3*3*3) / (1*1 + 3*3), (1*4*2 + 3*1*6) / (1*4 + 3*1)
    assert_arrays(arrays, {"w": [2.8, 26 / 7]})


def test_fisher_merging_floor_falls_back_to_fedavg_where_no_client_has_information():
    strategy = build_strategy({"name": "fisher"})  # eps 1e-8
    arrays, _, _ = run_round(strategy, 1, {"w": [0, 0]}, _fisher_replies((0, 0), (0, 0)))
    # plain example-weighted mean: (1*1 + 3*3) / 4, (1*2 + 3*6) / 4
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 5.0], rtol=1e-9)


def test_fisher_merging_floor_mixes_information_and_prior():
    strategy = build_strategy({"name": "fisher", "eps": 1.0, "weight_by_examples": False})
    arrays, _, _ = run_round(strategy, 1, {"w": [0, 0]}, _fisher_replies((0, 0), (0, 1)))
    # (F + 1) weights: [1, 1] and [1, 2] -> (1 + 3) / 2, (1*2 + 2*6) / 3
    assert_arrays(arrays, {"w": [2.0, 14 / 3]})


def test_fisher_merging_keeps_dtype_and_drops_fisher():
    strategy = FisherMerging(eps=0.0, weight_by_examples=False, **TAKE_ALL)
    replies = _fisher_replies()
    for m in replies:
        m.content["arrays"] = ArrayRecord({"w": Array(m.content["arrays"]["w"].numpy().astype(np.float32))})
    arrays, metrics, _ = run_round(strategy, 1, {"w": [0, 0]}, replies)
    assert list(arrays) == ["w"] and arrays["w"].numpy().dtype == np.float32
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 2.8], rtol=1e-6)
    assert "num-examples" not in metrics


def test_fisher_merging_rejects_mismatched_fisher():
    strategy = FisherMerging(**TAKE_ALL)
    bad = [reply(1, {"w": [1, 2]}, fisher={"v": [1, 1]}), reply(2, {"w": [3, 6]}, fisher={"w": [1, 1]})]
    with pytest.raises(InconsistentMessageReplies):
        run_round(strategy, 1, {"w": [0, 0]}, bad)


# -- the client's Fisher, through the split exchange -------------------------------------
def _client(encoder, backbone, samples) -> ExtraContext:
    """An extra's context around ``encoder`` and ``backbone``, training on ``samples``."""
    runtime = SimpleNamespace(edge=encoder.edge, encoder=encoder, backbone=backbone)
    return ExtraContext(ConfigRecord(), None, runtime, list(samples), {}, RecordDict(), 0)


def test_diagonal_fisher_by_hand():
    samples = [SimpleNamespace(h=1.0, answer="a"), SimpleNamespace(h=2.0, answer="b")]
    fisher = diagonal_fisher(_client(ScalarEncoder(), MeanBackbone(), samples), num_batches=2, batch_size=1, seed=0)
    # out = h + u * relu(d h + b1) + b2 with d=1, u=2: grads u: h, b2: 1, d: u*h = 2h, b1: u = 2.
    # Mean over the two single-sample batches (h = 1, 2) of the squared gradients:
    expected = {"text.up.weight": (1 + 4) / 2, "text.up.bias": 1.0,
                "text.down.weight": (4 + 16) / 2, "text.down.bias": 4.0}
    for name, value in expected.items():
        assert fisher[name].item() == pytest.approx(value), name
    # the image adapter saw no image: zero Fisher, same names as adapter_state()
    assert set(fisher) == set(ScalarEdge().adapters.state_dict())
    assert all(float(fisher[n].abs().sum()) == 0.0 for n in fisher if n.startswith("image."))


def test_diagonal_fisher_matches_the_composed_model(tiny_model_dir, samples):
    """On the tiny LLaVA, through the real split exchange: equal to the squared batch gradients of
    the composed model trained in one process (docs/design.md's correctness anchor, for the Fisher)."""
    from transformers import AutoProcessor

    from anther.backbone.in_process import InProcessBackbone
    from anther.backbone.interface import causal_lm_loss
    from anther.model.nano_edge import NanoEdge
    from anther.model.sample_encoder import SampleEncoder
    from anther.strategies.fisher_merging import batch_indices

    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    with torch.no_grad():  # non-zero up, so that down gets gradient too
        for p in edge.adapters.parameters():
            p.normal_(0, 0.1)
    encoder = SampleEncoder(edge, AutoProcessor.from_pretrained(tiny_model_dir))
    backbone = InProcessBackbone.from_pretrained(tiny_model_dir)
    mixed = [s if i % 2 else s.without_image() for i, s in enumerate(samples[:6])]
    fisher = diagonal_fisher(_client(encoder, backbone, mixed), num_batches=3, batch_size=2, seed=5)
    assert all(p.grad is None for p in edge.adapters.parameters())  # an optimizer's .grad is left alone
    expected = {n: torch.zeros_like(p) for n, p in edge.adapters.named_parameters()}
    for idx in batch_indices(len(mixed), 2, 3, 5):
        batch = encoder([mixed[i] for i in idx], [mixed[i].answer for i in idx])
        edge.adapters.zero_grad(set_to_none=True)
        causal_lm_loss(backbone.logits(edge(batch), batch.attention_mask), batch.labels).backward()
        for n, p in edge.adapters.named_parameters():
            if p.grad is not None:
                expected[n] += p.grad ** 2 / 3
    assert set(fisher) == set(edge.adapter_state())
    for n, value in expected.items():
        torch.testing.assert_close(fisher[n], value, rtol=1e-4, atol=1e-10)


# -- modality-aware ----------------------------------------------------------------------
MODALITY_GLOBAL = {"image.w": [10, 10], "text.w": [0, 0], "shared.w": [0]}


def _modal_reply(node: int, n: int, n_img: int, n_txt: int, image: list, text: list, shared: list) -> Message:
    return reply(node, {"image.w": image, "text.w": text, "shared.w": shared},
                 {"num-image-examples": n_img, "num-text-examples": n_txt}, num_examples=n)


def test_modality_aware_ignores_clients_without_the_modality():
    strategy = build_strategy({"name": "modality_aware"})
    assert isinstance(strategy, ModalityAwareFedAvg)
    replies = [_modal_reply(1, 4, 0, 4, [99, 99], [1, 2], [0]),  # no images: its image adapter is stale
               _modal_reply(2, 2, 2, 2, [3, 5], [4, 8], [6]),
               _modal_reply(3, 6, 6, 6, [7, 1], [0, 0], [2])]
    arrays, _, _ = run_round(strategy, 1, MODALITY_GLOBAL, replies)
    assert_arrays(arrays, {
        "image.w": [6, 2],  # (2*[3,5] + 6*[7,1]) / 8   (FedAvg would give 37 in the first entry)
        "text.w": [1, 2],  # (4*[1,2] + 2*[4,8] + 6*[0,0]) / 12
        "shared.w": [2],  # by num-examples: (4*0 + 2*6 + 6*2) / 12
    })


def test_modality_aware_keeps_global_when_nobody_trained_the_modality():
    strategy = build_strategy({"name": "modality_aware"})
    replies = [_modal_reply(1, 4, 0, 4, [99, 99], [1, 2], [0]),
               _modal_reply(2, 2, 0, 2, [50, 50], [4, 8], [3])]
    arrays, _, _ = run_round(strategy, 1, MODALITY_GLOBAL, replies)
    assert_arrays(arrays, {"image.w": [10, 10], "text.w": [2, 4], "shared.w": [1]})


def test_modality_aware_needs_the_counts():
    strategy = ModalityAwareFedAvg(**TAKE_ALL)
    with pytest.raises(InconsistentMessageReplies, match="num-image-examples"):
        run_round(strategy, 1, {"image.w": [0]}, [reply(1, {"image.w": [1]})])


# -- heterogeneous ranks -----------------------------------------------------------------
def _rank_arrays(down_w: list, down_b: list, up_w: list, up_b: list) -> dict[str, list]:
    return {"text.down.weight": down_w, "text.down.bias": down_b,
            "text.up.weight": up_w, "text.up.bias": up_b}


HR_GLOBAL = _rank_arrays([[9, 9]] * 4, [9] * 4, [[9] * 4] * 2, [9, 9])  # rank 4, dim 2
HR_A = _rank_arrays([[1, 1], [2, 2]], [1, 2], [[1, 1], [1, 1]], [2, 2])  # rank 2
HR_B = _rank_arrays([[3, 3], [4, 4], [5, 5], [6, 6]], [3, 4, 5, 6], [[1, 2, 3, 4], [1, 2, 3, 4]], [4, 4])


def test_hetero_rank_round_trip():
    strategy = build_strategy({"name": "hetero_rank"})
    assert isinstance(strategy, HeteroRankFedAvg)
    replies = [reply(1, HR_A, {"adapter-rank": 2}, num_examples=1),
               reply(2, HR_B, {"adapter-rank": 4}, num_examples=3)]
    merged, _, _ = run_round(strategy, 1, HR_GLOBAL, replies, nodes=(1, 2))
    # Rank slices 0-1 from both (weights 1 and 3), 2-3 from B alone. A's up.* enters at the
    # global scale alpha/4, i.e. times 4/2: up.weight [[2,2],[2,2]], up.bias [4,4].
    assert_arrays(merged, _rank_arrays(
        [[2.5, 2.5], [3.5, 3.5], [5, 5], [6, 6]],  # (1*1 + 3*3)/4, (1*2 + 3*4)/4
        [2.5, 3.5, 5, 6],
        [[1.25, 2, 3, 4], [1.25, 2, 3, 4]],  # (1*2 + 3*1)/4, (1*2 + 3*2)/4
        [4, 4]))  # (1*4 + 3*4)/4
    assert strategy.node_ranks == {1: 2, 2: 4}
    # Round 2: node 1 gets the first two units at its own scale (up.* times 2/4); node 2 everything.
    messages = list(strategy.configure_train(2, merged, ConfigRecord(), FakeGrid([1, 2])))
    by_node = {m.metadata.dst_node_id: m.content for m in messages}
    assert by_node[1]["config"]["adapter-rank"] == 2 and by_node[2]["config"]["adapter-rank"] == 4
    assert_arrays(by_node[1]["arrays"], _rank_arrays(
        [[2.5, 2.5], [3.5, 3.5]], [2.5, 3.5], [[0.625, 1], [0.625, 1]], [2, 2]))
    assert_arrays(by_node[2]["arrays"], {k: v.numpy().tolist() for k, v in merged.items()})


def test_hetero_rank_keeps_global_slices_nobody_holds():
    strategy = build_strategy({"name": "hetero_rank"})
    c = _rank_arrays([[3, 3], [4, 4]], [3, 4], [[2, 2], [2, 2]], [0, 0])
    replies = [reply(1, HR_A, num_examples=1), reply(3, c, num_examples=1)]  # ranks read off the shapes
    merged, _, _ = run_round(strategy, 1, HR_GLOBAL, replies, nodes=(1, 3))
    assert_arrays(merged, _rank_arrays(
        [[2, 2], [3, 3], [9, 9], [9, 9]], [2, 3, 9, 9],
        [[3, 3, 9, 9], [3, 3, 9, 9]],  # up at global scale: A 2*1, C 2*2 -> 3
        [2, 2]))  # A 2*2, C 2*0 -> 2
    assert strategy.node_ranks == {1: 2, 3: 2}


def test_hetero_rank_truncation_is_the_global_adapters_first_units():
    """A rank-2 NanoAdapter loaded with the truncated global computes exactly the rank-4 global
    adapter with units 2 and 3 switched off (alpha / rank scaling included)."""
    torch.manual_seed(0)
    config4, config2 = NanoAdapterConfig(rank=4, alpha=8.0), NanoAdapterConfig(rank=2, alpha=8.0)
    big = NanoAdapter(3, config4)
    with torch.no_grad():
        big.up.weight.normal_()
        big.up.bias.normal_()
    state = {k: v.numpy() for k, v in big.state_dict().items()}
    small = NanoAdapter(3, config2)
    small.load_state_dict({k: torch.from_numpy(v) for k, v in truncate_to_rank(state, 2).items()})
    with torch.no_grad():
        big.up.weight[:, 2:] = 0.0
        h = torch.randn(5, 3)
        torch.testing.assert_close(small(h), big(h))


def test_hetero_rank_sends_declared_and_default_ranks():
    strategy = HeteroRankFedAvg(node_ranks={"7": 2}, default_rank=1, **TAKE_ALL)  # keys as YAML gives them
    strategy.set_node_ranks({8: 4})
    messages = strategy.configure_train(1, record(HR_GLOBAL), ConfigRecord({"lr": 0.1}), FakeGrid([7, 8, 9]))
    sent = {m.metadata.dst_node_id: m.content for m in messages}
    shapes = {node: c["arrays"]["text.down.weight"].shape for node, c in sent.items()}
    assert shapes == {7: (2, 2), 8: (4, 2), 9: (1, 2)}
    assert {node: c["config"]["adapter-rank"] for node, c in sent.items()} == {7: 2, 8: 4, 9: 1}
    assert all(c["config"]["lr"] == 0.1 for c in sent.values())


def test_hetero_rank_ranks_from_node_info():
    """A node's own ``adapter-rank`` (node config, reported by QUERY) wins; the others take their
    partition's entry of ``partition_ranks``, cycled; evaluation is sent per rank too."""
    strategy = build_strategy({"name": "hetero_rank", "partition_ranks": [1, 2]})
    strategy.set_node_info({
        7: ConfigRecord({"partition-id": 0, "num-partitions": 3, "adapter-rank": 4}),
        8: ConfigRecord({"partition-id": 1, "num-partitions": 3}),
        9: ConfigRecord({"partition-id": 2, "num-partitions": 3}),
    })
    assert strategy.node_ranks == {7: 4, 8: 2, 9: 1}
    for configure in (strategy.configure_train, strategy.configure_evaluate):
        sent = {m.metadata.dst_node_id: m.content for m in configure(1, record(HR_GLOBAL), ConfigRecord(),
                                                                     FakeGrid([7, 8, 9]))}
        assert {n: c["arrays"]["text.down.weight"].shape for n, c in sent.items()} == {
            7: (4, 2), 8: (2, 2), 9: (1, 2)}
        assert {n: c["config"]["adapter-rank"] for n, c in sent.items()} == {7: 4, 8: 2, 9: 1}
    with pytest.raises(ValueError, match=r"partition_ranks\[1\]"):
        build_strategy({"name": "hetero_rank", "partition_ranks": [4, 0]})


def test_hetero_rank_rejects_ranks_above_global():
    strategy = HeteroRankFedAvg(**TAKE_ALL)
    too_big = _rank_arrays([[1, 1]] * 8, [1] * 8, [[1] * 8] * 2, [1, 1])
    with pytest.raises(AggregationError, match="rank-8"):
        run_round(strategy, 1, HR_GLOBAL, [reply(7, too_big)], nodes=(7,))


# -- personalisation (FedDPA) ------------------------------------------------------------
def _set(adapter: NanoAdapter, down: float, up: float) -> None:
    with torch.no_grad():
        adapter.down.weight.fill_(down), adapter.down.bias.zero_()
        adapter.up.weight.fill_(up), adapter.up.bias.zero_()


def test_personalised_adapters_combine_and_carry_their_local_state():
    config = NanoAdapterConfig(rank=1, alpha=1.0, activation="relu")
    adapters = nn.ModuleDict({"text": NanoAdapter(1, config)})
    _set(adapters["text"], 1.0, 2.0)  # global branch: 2 relu(h)
    personal = PersonalisedAdapters(adapters, mix=0.25)
    h = torch.tensor([[3.0]])
    with personal.combined():
        assert adapters["text"](h).item() == pytest.approx(9.0)  # fresh local (up = 0): the global model
    _set(personal.local["text"], 1.0, -1.0)  # local branch: -relu(h)
    with personal.combined(freeze_global=True):
        assert adapters["text"](h).item() == pytest.approx(3 + 6 + 0.25 * -3)
        assert not any(p.requires_grad for p in adapters["text"].global_adapter.parameters())
    assert adapters["text"](h).item() == pytest.approx(9.0)  # restored: the global part alone
    assert all(p.requires_grad for p in adapters["text"].parameters())
    assert set(adapters.state_dict()) == {"text.down.weight", "text.down.bias",
                                          "text.up.weight", "text.up.bias"}
    again = PersonalisedAdapters(adapters, mix=0.25, local_state=personal.local_state())  # next round
    with again.combined():
        assert adapters["text"](h).item() == pytest.approx(8.25)


def test_personalised_strategy_ships_steps_and_mix_and_averages_like_fedavg():
    strategy = build_strategy({"name": "personalised", "personal_steps": 3, "mix": 0.25})
    assert isinstance(strategy, PersonalisedFedAvg)
    replies = [reply(1, {"w": [1, 2]}, num_examples=1), reply(2, {"w": [4, 8]}, num_examples=3)]
    arrays, _, messages = run_round(strategy, 1, {"w": [0, 0]}, replies)
    assert all((m.content["config"]["personal-steps"], m.content["config"]["personal-mix"]) == (3, 0.25)
               for m in messages)
    assert_arrays(arrays, {"w": [3.25, 6.5]})
    evaluations = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), FakeGrid([1, 2])))
    assert [m.content["config"]["personal-mix"] for m in evaluations] == [0.25, 0.25]
    assert all("personal-steps" not in m.content["config"] for m in evaluations)


# -- adaptive regularisation (FedMLLM) ---------------------------------------------------
def test_middle_range_by_fraction():
    names = [f"p{i}" for i in range(8)]
    assert middle_range(names) == ["p2", "p3", "p4", "p5"]
    assert middle_range(names, 0.5, 1.0) == ["p4", "p5", "p6", "p7"]
    assert middle_range(["a", "b", "c"]) == ["b"]
    assert middle_range(["a", "b"]) == ["b"]  # no name fits entirely: the one at the midpoint 0.5
    with pytest.raises(ValueError):
        middle_range(names, 0.6, 0.4)


def test_adaptive_reg_ships_mu_and_range_and_averages_like_fedavg():
    strategy = build_strategy({"name": "adaptive_reg", "proximal_mu": 0.1, "proximal_start": 0.5,
                               "proximal_end": 1.0})
    replies = [reply(1, {"w": [1, 2]}, num_examples=1), reply(2, {"w": [4, 8]}, num_examples=3)]
    arrays, _, messages = run_round(strategy, 1, {"w": [0, 0]}, replies)
    configs = [m.content["config"] for m in messages]
    assert all((c["proximal-mu"], c["proximal-start"], c["proximal-end"]) == (0.1, 0.5, 1.0) for c in configs)
    assert_arrays(arrays, {"w": [3.25, 6.5]})


def test_middle_proximal_regularises_only_the_middle():
    params = {n: torch.nn.Parameter(torch.tensor([1.0])) for n in ("a", "b", "c", "d")}
    reg = MiddleProximal(params, mu=0.5)  # middle of 4: b, c
    assert reg.names == ["b", "c"]
    with torch.no_grad():
        for n, v in zip("abcd", (5.0, 3.0, -1.0, 7.0), strict=True):
            params[n].fill_(v)
    term = reg()
    assert term.item() == pytest.approx(0.25 * ((3 - 1) ** 2 + (-1 - 1) ** 2))
    term.backward()
    assert params["a"].grad is None and params["d"].grad is None
    assert params["b"].grad.item() == pytest.approx(0.5 * (3 - 1))
    assert params["c"].grad.item() == pytest.approx(0.5 * (-1 - 1))


# -- every strategy by name, through the protocol the ClientApp speaks --------------------
CLIENT_ARRAYS = {"image.down.weight": [[0.0, 0.0]] * 2, "image.down.bias": [0.0, 0.0],
                 "image.up.weight": [[0.0, 0.0]] * 2, "image.up.bias": [0.0, 0.0],
                 "text.down.weight": [[0.0, 0.0]] * 2, "text.down.bias": [0.0, 0.0],
                 "text.up.weight": [[0.0, 0.0]] * 2, "text.up.bias": [0.0, 0.0]}


def _client_reply(message: Message, k: int) -> Message:
    """What the ClientApp answers to ``message``: the arrays it got, moved; every metric it always
    sends; and a Fisher when the config asks for one."""
    arrays = {n: a.numpy() + 0.1 * k for n, a in message.content["arrays"].items()}
    content = RecordDict({
        "arrays": ArrayRecord({n: Array(a) for n, a in arrays.items()}),
        "metrics": MetricRecord({"num-examples": 2 + k, "num-image-examples": 2 + k, "num-text-examples": k,
                                 "adapter-rank": 2, "train_loss": 1.0})})
    if "fisher-batches" in message.content["config"]:
        content["fisher"] = ArrayRecord({n: Array(np.full_like(a, 1.0 + k)) for n, a in arrays.items()})
    if "scaffold" in message.content["config"]:
        content["scaffold-dc"] = ArrayRecord({n: Array(np.full_like(a, 0.01 * k)) for n, a in arrays.items()})
    if "fednova" in message.content["config"]:
        content["fednova"] = ConfigRecord({"a": 1.0 + k})
    return Message(content, reply_to=message)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_runs_a_round(name: str):
    strategy = build_strategy({"name": name})
    global_arrays = record(CLIENT_ARRAYS)
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), FakeGrid([1, 2, 3])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    arrays, metrics = strategy.aggregate_train(1, [_client_reply(m, k) for k, m in enumerate(messages)])
    assert {n: a.shape for n, a in arrays.items()} == {n: a.shape for n, a in global_arrays.items()}
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    assert metrics["train_loss"] == pytest.approx(1.0)
