"""SCAFFOLD, FedDyn and FedNova, both halves, against numbers worked out by hand; and the local
loop they plug into (optimiser, schedule, the gradient hook's place around clipping).

The client halves run on the scalar split exchange of ``fakes.py``: the text adapter computes
h + u relu(d h + b1) + b2 with (u, d, b1, b2) = (2, 1, 0, 0) and the backbone's loss is its
output, so at h = 1 the task gradient is (u, b2, d, b1) -> (1, 1, 2, 2) and the image adapter
gets none.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import FakeGrid, MeanBackbone, ScalarEncoder, play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from anther.client.api import ExtraContext, LocalTraining
from anther.client.extras import build_hooks
from anther.client.local_optimiser import build_optimiser
from anther.client.trainer import train_adapters
from anther.strategies import feddyn, fednova, scaffold
from anther.strategies.registry import build_strategy

ONE = [SimpleNamespace(h=1.0, answer="a")]
TASK_AT_H1 = {"text.up.weight": 1.0, "text.up.bias": 1.0, "text.down.weight": 2.0, "text.down.bias": 2.0}


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


def _client(config: dict, records: dict | None = None, state: RecordDict | None = None,
            training: LocalTraining | None = None) -> ExtraContext:
    encoder = ScalarEncoder()
    runtime = SimpleNamespace(edge=encoder.edge, encoder=encoder, backbone=MeanBackbone())
    received = {n: p.detach().clone() for n, p in encoder.edge.adapters.named_parameters()}
    return ExtraContext(ConfigRecord(config), None, runtime, ONE, received, RecordDict() if state is None else state, 0,
                        records or {}, training)


def _full(ctx: ExtraContext, value: float) -> ArrayRecord:
    return ArrayRecord({n: torch.full_like(p, value) for n, p in ctx.parameters().items()})


def _sgd_steps(ctx: ExtraContext, steps: int = 1, lr: float = 0.1):
    """``steps`` plain SGD steps, unclipped, with the round's hooks; the report is left in ``ctx``."""
    ctx.training = LocalTraining(steps=steps, batch_size=1, lr=lr, max_grad_norm=0.0, optimizer="sgd")
    ctx.report = train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples, ctx.training, seed=0,
                                hooks=build_hooks(ctx))
    return {n: p.detach().clone() for n, p in ctx.parameters().items()}


def _reply(node: int, arrays: dict, examples: int, **records) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": examples, "train_loss": 1.0}), **records})
    return Message(content, reply_to=sent)


def _global(value) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(value, dtype=np.float32))})


# -- SCAFFOLD -------------------------------------------------------------------------------
def test_scaffold_client_corrects_each_step_and_updates_its_variate():
    state = RecordDict()
    ctx = _client({"scaffold": True}, state=state)
    state["scaffold-ci"] = _full(ctx, 0.2)
    ctx.records = {"scaffold-c": _full(ctx, 0.5)}
    after = _sgd_steps(ctx)  # one step: y = x - 0.1 (g + c - c_i) = x - 0.1 (g + 0.3)
    assert after["text.up.weight"].item() == pytest.approx(2.0 - 0.1 * (1.0 + 0.3))
    assert after["image.up.bias"].item() == pytest.approx(-0.1 * 0.3)  # no task gradient: the correction only
    reply = scaffold.variate_update(ctx)
    new = state["scaffold-ci"].to_torch_state_dict()
    # option II after one step: c_i+ = c_i - c + (x - y) / lr = the task gradient at x
    for name, grad in TASK_AT_H1.items():
        assert new[name].item() == pytest.approx(grad, abs=1e-5), name
        assert reply["scaffold-dc"][name].numpy().item() == pytest.approx(grad - 0.2, abs=1e-5)
    assert new["image.down.bias"].item() == pytest.approx(0.0, abs=1e-6)


def test_scaffold_client_starts_from_a_zero_variate_and_needs_the_servers():
    ctx = _client({"scaffold": True})
    with pytest.raises(KeyError, match="no ArrayRecord named 'scaffold-c'"):
        build_hooks(ctx)
    ctx.records = {"scaffold-c": _full(ctx, 0.0)}
    after = _sgd_steps(ctx)  # c = c_i = 0: plain SGD
    assert after["text.down.weight"].item() == pytest.approx(1.0 - 0.1 * 2.0)


def test_scaffold_server_by_hand():
    strategy = build_strategy({"name": "scaffold"})
    strategy.set_node_info({1: ConfigRecord(), 2: ConfigRecord(), 3: ConfigRecord(), 4: ConfigRecord()})
    messages = list(strategy.configure_train(1, _global([0.0, 0.0]), ConfigRecord(), FakeGrid([1, 2])))
    assert all(m.content["config"]["scaffold"] for m in messages)
    np.testing.assert_array_equal(messages[0].content["scaffold-c"]["w"].numpy(), [0.0, 0.0])
    replies = [_reply(1, {"w": [1.0, 2.0]}, 1, **{"scaffold-dc": _global([0.4, 0.0])}),
               _reply(2, {"w": [3.0, 6.0]}, 3, **{"scaffold-dc": _global([0.8, 1.0])})]
    arrays, _ = strategy.aggregate_train(1, replies)
    # x = (1 y1 + 3 y2) / 4; c = 0 + (2 / 4) * mean(dc)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 5.0])
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1])))
    np.testing.assert_allclose(messages[0].content["scaffold-c"]["w"].numpy(), [0.3, 0.25])


def test_scaffold_server_step_and_a_reply_without_its_variate():
    strategy = build_strategy({"name": "scaffold", "server_learning_rate": 0.5})
    list(strategy.configure_train(1, _global([1.0]), ConfigRecord(), FakeGrid([1])))
    arrays, _ = strategy.aggregate_train(1, [_reply(1, {"w": [3.0]}, 1, **{"scaffold-dc": _global([0.0])})])
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0])  # 1 + 0.5 (3 - 1)
    list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1])))
    with pytest.raises(Exception, match="scaffold-dc"):
        strategy.aggregate_train(2, [_reply(1, {"w": [3.0]}, 1)])


# -- FedDyn ---------------------------------------------------------------------------------
def test_feddyn_client_adds_its_linear_and_quadratic_terms_and_keeps_its_gradient():
    state = RecordDict()
    ctx = _client({"feddyn-alpha": 0.1}, state=state)
    state["feddyn-grad"] = _full(ctx, 0.4)
    after = _sgd_steps(ctx)  # at theta = x: grad = task - g_k
    assert after["text.up.weight"].item() == pytest.approx(2.0 - 0.1 * (1.0 - 0.4))
    assert feddyn.gradient_update(ctx) == {}
    kept = state["feddyn-grad"].to_torch_state_dict()
    # g_k <- g_k - alpha (theta_k - x) = 0.4 - 0.1 * (1.94 - 2)
    assert kept["text.up.weight"].item() == pytest.approx(0.4 - 0.1 * (1.94 - 2.0))


def test_feddyn_client_second_step_pulls_back_to_the_global_weights():
    ctx = _client({"feddyn-alpha": 0.1})
    after = _sgd_steps(ctx, steps=2)
    # step 1: (u, d, b1) = (2 - 0.1, 1 - 0.2, 0 - 0.2) = (1.9, 0.8, -0.2); step 2's u gradient:
    # relu(0.8 - 0.2) + alpha (1.9 - 2) = 0.6 - 0.01
    assert after["text.up.weight"].item() == pytest.approx(1.9 - 0.1 * (0.6 - 0.01))


def test_feddyn_server_by_hand():
    strategy = build_strategy({"name": "feddyn", "alpha": 0.1})
    strategy.set_node_info({n: ConfigRecord() for n in range(4)})
    messages = list(strategy.configure_train(1, _global([0.0]), ConfigRecord(), FakeGrid([1, 2])))
    assert messages[0].content["config"]["feddyn-alpha"] == pytest.approx(0.1)
    arrays, _ = strategy.aggregate_train(1, [_reply(1, {"w": [1.0]}, 1), _reply(2, {"w": [3.0]}, 5)])
    # h = -0.1 (1 + 3) / 4 = -0.1; theta = mean(1, 3) - h / alpha = 2 + 1 (unweighted)
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0])
    list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1, 2])))
    arrays, _ = strategy.aggregate_train(2, [_reply(1, {"w": [3.5]}, 1), _reply(2, {"w": [4.5]}, 1)])
    # h = -0.1 - 0.1 (0.5 + 1.5) / 4 = -0.15; theta = 4 + 1.5
    np.testing.assert_allclose(arrays["w"].numpy(), [5.5], rtol=1e-6)


# -- FedNova --------------------------------------------------------------------------------
def test_fednova_weight_sums_by_hand():
    assert fednova.sgd_weight_sum([0.1] * 3) == pytest.approx(0.3)
    # momentum 0.5: buffers 1, 1.5, 1.75; the paper's [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) = 4.25
    assert fednova.sgd_weight_sum([0.1] * 3, momentum=0.5) == pytest.approx(0.425)
    assert fednova.sgd_weight_sum([0.1] * 3, momentum=0.5, nesterov=True) == pytest.approx(0.1 * (1.5 + 1.75 + 1.875))


@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.5, 0.3, False),
                                                          (0.9, 0.0, True)])
def test_fednova_weight_sum_is_what_torch_sgd_moves(momentum, dampening, nesterov):
    """With a gradient of 1 at every step, SGD moves a weight by exactly the sum of the weights."""
    w = torch.nn.Parameter(torch.zeros(()))
    lrs = [0.1, 0.05, 0.2, 0.1, 0.01]
    opt = torch.optim.SGD([w], lr=lrs[0], momentum=momentum, dampening=dampening, nesterov=nesterov)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.ones(())
        opt.step()
    assert -w.item() == pytest.approx(fednova.sgd_weight_sum(lrs, momentum, dampening, nesterov), rel=1e-6)


def test_fednova_client_reports_its_accumulation_and_refuses_adam():
    ctx = _client({"fednova": True})
    ctx.training = LocalTraining(steps=3, batch_size=1, lr=0.1,
                                 optimizer={"name": "sgd", "momentum": 0.5}, lr_schedule="linear")
    ctx.report = train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples, ctx.training, seed=0)
    assert ctx.report.lrs == pytest.approx([0.1, 0.1 * 2 / 3, 0.1 / 3])
    a = fednova.accumulated(ctx)["fednova"]["a"]
    assert a == pytest.approx(0.1 * 1 + 0.1 * 2 / 3 * 1.5 + 0.1 / 3 * 1.75)
    ctx.report = train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples,
                                LocalTraining(steps=1, batch_size=1, lr=0.1), seed=0)
    with pytest.raises(ValueError, match="FedNova needs train.optimizer=sgd; this client trained with AdamW"):
        fednova.accumulated(ctx)


def test_fednova_server_by_hand():
    strategy = build_strategy({"name": "fednova", "local_epochs": 2})
    messages = list(strategy.configure_train(1, _global([0.0]), ConfigRecord(), FakeGrid([1, 2])))
    assert messages[0].content["config"]["local-epochs"] == 2.0 and messages[0].content["config"]["fednova"]
    # client 1: 2 SGD steps of 0.1 (a = 0.2), moved 0.2; client 2: 6 steps (a = 0.6), moved 1.2; p = (1/4, 3/4)
    replies = [_reply(1, {"w": [-0.2]}, 1, fednova=ConfigRecord({"a": 0.2})),
               _reply(2, {"w": [-1.2]}, 3, fednova=ConfigRecord({"a": 0.6}))]
    arrays, _ = strategy.aggregate_train(1, replies)
    # tau_eff = 0.25 * 0.2 + 0.75 * 0.6 = 0.5; sum p d = 0.25 * 1 + 0.75 * 2 = 1.75 -> -0.875 (FedAvg: -0.95)
    np.testing.assert_allclose(arrays["w"].numpy(), [-0.875], rtol=1e-6)
    list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1])))
    with pytest.raises(Exception, match="FedNova a_i"):
        strategy.aggregate_train(2, [_reply(1, {"w": [0.0]}, 1, fednova=ConfigRecord({"a": 0.0}))])


def test_equal_steps_make_fednova_fedavg():
    strategy = build_strategy({"name": "fednova"})
    list(strategy.configure_train(1, _global([1.0, 1.0]), ConfigRecord(), FakeGrid([1, 2])))
    replies = [_reply(1, {"w": [0.0, 2.0]}, 1, fednova=ConfigRecord({"a": 0.5})),
               _reply(2, {"w": [4.0, 2.0]}, 3, fednova=ConfigRecord({"a": 0.5}))]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 2.0])


# -- the local loop: optimiser, schedule, where the hooks run --------------------------------
def _displacement(hook_order: str) -> dict[str, float]:
    """One SGD step of 1 with the batch gradient clipped to norm 1 and a hook adding 1 to u's gradient."""
    encoder = ScalarEncoder()
    u = encoder.edge.adapters["text"].up.weight

    def add_one() -> None:
        u.grad.add_(1.0)

    before = {n: p.detach().clone() for n, p in encoder.edge.adapters.named_parameters()}
    training = LocalTraining(steps=1, batch_size=1, lr=1.0, max_grad_norm=1.0, optimizer="sgd", hook_order=hook_order)
    train_adapters(encoder, MeanBackbone(), ONE, training, seed=0, hooks=[add_one])
    return {n: (before[n] - p.detach()).item() for n, p in encoder.edge.adapters.named_parameters()
            if n.startswith("text.")}


def test_hooks_run_before_clipping_by_default():
    moved = _displacement("before_clipping")  # (u, b2, d, b1) = (1 + 1, 1, 2, 2), norm sqrt(13), clipped to 1
    assert moved["text.up.weight"] == pytest.approx(2 / 13 ** 0.5, rel=1e-5)
    assert moved["text.down.weight"] == pytest.approx(2 / 13 ** 0.5, rel=1e-5)


def test_hooks_after_clipping_add_to_the_clipped_task_gradient():
    moved = _displacement("after_clipping")  # task (1, 1, 2, 2) has norm sqrt(10): clipped, then + 1 on u
    assert moved["text.up.weight"] == pytest.approx(1 / 10 ** 0.5 + 1, rel=1e-5)
    assert moved["text.down.weight"] == pytest.approx(2 / 10 ** 0.5, rel=1e-5)


def test_optimisers_by_name_and_by_target():
    w = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimiser(w, LocalTraining(1, 1, 0.5, weight_decay=0.01,
                                           optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True}))
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 0.5
    assert sgd.defaults["weight_decay"] == 0.01
    rms = build_optimiser(w, LocalTraining(1, 1, 0.5, optimizer={"_target_": "torch.optim.RMSprop", "lr": 0.2}))
    assert type(rms) is torch.optim.RMSprop and rms.defaults["lr"] == 0.2  # its own lr wins
    assert type(build_optimiser(w, LocalTraining(1, 1, 0.5))) is torch.optim.AdamW
    with pytest.raises(ValueError, match="name 'lion' is unknown"):
        build_optimiser(w, LocalTraining(1, 1, 0.5, optimizer="lion"))
    with pytest.raises(ValueError, match="cannot be built \\(SGD\\).*momentun"):
        build_optimiser(w, LocalTraining(1, 1, 0.5, optimizer={"name": "sgd", "momentun": 0.9}))


@pytest.mark.parametrize("schedule,warmup,expected", [
    ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
    ("linear", 0, [1.0, 0.75, 0.5, 0.25]),
    ("cosine", 0, [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))]),
    ("constant", 2, [1 / 3, 2 / 3, 1.0, 1.0]),
    ({"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.1}, 0, [1.0, 1.0, 0.1, 0.1]),
])
def test_learning_rate_schedules(schedule, warmup, expected):
    training = LocalTraining(steps=4, batch_size=1, lr=0.2, lr_schedule=schedule, warmup_steps=warmup,
                             optimizer="sgd")
    report = train_adapters(ScalarEncoder(), MeanBackbone(), ONE, training, seed=0)
    assert report.lrs == pytest.approx([0.2 * e for e in expected])
    assert report.optimiser == "SGD" and report.hyperparameters["momentum"] == 0
