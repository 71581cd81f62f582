"""The client side of the strategies: the extras registry and the trainer's regulariser hook.

Gradients are worked out by hand on the scalar split exchange of ``fakes.py``: the text
adapter computes h + u relu(d h + b1) + b2, the backbone's loss is its output, so
d loss / d (u, b2, d, b1) = (relu(d h + b1), 1, u h, u) for d h + b1 > 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from fakes import MeanBackbone, ScalarEncoder
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from anther.client import extras
from anther.client.extras import (
    ExtraContext,
    add_reply_records,
    after_training,
    build_hooks,
    evaluation,
    evaluation_view,
    import_client_modules,
)
from anther.client.local_training import LocalTraining
from anther.client.trainer import regulariser_hook, split_step, train_adapters
from anther.strategies.registry import client_modules


def _context(config: dict, encoder: ScalarEncoder | None = None) -> ExtraContext:
    runtime = SimpleNamespace(edge=encoder.edge, encoder=encoder) if encoder else None
    return ExtraContext(ConfigRecord(config), None, runtime, [], {}, RecordDict(), 0)


def _grads_after_one_step(config: dict) -> dict[str, torch.Tensor]:
    """Build the round's regularisers at the global weights, move two weights, take one step at h = 1."""
    encoder = ScalarEncoder()
    hooks = build_hooks(_context(config, encoder))
    text = encoder.edge.adapters["text"]
    with torch.no_grad():
        text.up.weight.fill_(3.0)  # global 2
        text.down.bias.fill_(0.5)  # global 0
    split_step(encoder, MeanBackbone(), [SimpleNamespace(h=1.0, answer="a")], hooks)
    return {n: p.grad for n, p in encoder.edge.adapters.named_parameters()}


def test_fedprox_term_joins_the_task_gradient():
    grads = _grads_after_one_step({"proximal-mu": 0.1})
    # task: u = 3, relu(1 + 0.5) = 1.5 -> (1.5, 1, 3, 3); proximal: mu (w - w_global) = (0.1, 0, 0, 0.05)
    expected = {"text.up.weight": 1.5 + 0.1, "text.up.bias": 1.0, "text.down.weight": 3.0,
                "text.down.bias": 3.0 + 0.1 * 0.5}
    for name, value in expected.items():
        assert grads[name].item() == pytest.approx(value), name
    # the image adapter saw no image; the proximal term covers it, at its global value: zero
    assert all(float(grads[n].abs().sum()) == 0.0 for n in grads if n.startswith("image."))


def test_adaptive_regularisation_pulls_the_middle_only():
    # 8 parameters in order image.{down.weight, down.bias, up.weight, up.bias}, text.{...}:
    # the middle half is image.up.*, text.down.*; text.up.weight is outside it
    grads = _grads_after_one_step({"proximal-mu": 0.1, "proximal-start": 0.25, "proximal-end": 0.75})
    assert grads["text.up.weight"].item() == pytest.approx(1.5)
    assert grads["text.down.bias"].item() == pytest.approx(3.0 + 0.05)


def test_no_proximal_key_no_regulariser():
    assert build_hooks(_context({"proximal-start": 0.25}, ScalarEncoder())) == []


def test_train_adapters_applies_regularisers_every_step():
    calls = []

    def counting() -> torch.Tensor:
        calls.append(1)
        return torch.zeros(())

    samples = [SimpleNamespace(h=1.0, answer="a"), SimpleNamespace(h=2.0, answer="b")]
    report = train_adapters(ScalarEncoder(), MeanBackbone(), samples, LocalTraining(steps=3, batch_size=1, lr=0.1),
                            seed=0, hooks=[regulariser_hook(counting)])
    assert len(calls) == 3 and report.steps == 3


# -- the registry ---------------------------------------------------------------------------
@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extras registered by a test vanish with it."""
    for table in ("_REGULARISERS", "_GRADIENT_HOOKS", "_AFTER_TRAINING", "_EVALUATION"):
        monkeypatch.setattr(extras, table, dict(getattr(extras, table)))


def test_after_training_records_go_into_the_reply(private_registry):
    @after_training("x-ask")
    def answer(ctx):
        return {"x": ArrayRecord({"w": torch.ones(2)}), "metrics": MetricRecord({"x-count": 3})}

    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(2)}), "metrics": MetricRecord({"num-examples": 1})})
    add_reply_records(_context({"x-ask": 1}), content)
    assert sorted(content) == ["arrays", "metrics", "x"]
    assert dict(content["metrics"]) == {"num-examples": 1, "x-count": 3}  # still one MetricRecord


def test_after_training_clashes_are_errors(private_registry):
    @after_training("x-ask")
    def clobber(ctx):
        return {"arrays": ArrayRecord({"w": torch.ones(1)})}

    @after_training("y-ask")
    def same_metric(ctx):
        return {"m": MetricRecord({"num-examples": 5})}

    base = {"arrays": ArrayRecord({"w": torch.zeros(1)}), "metrics": MetricRecord({"num-examples": 1})}
    with pytest.raises(ValueError, match="'x-ask' extra returned a record named 'arrays'"):
        add_reply_records(_context({"x-ask": 1}), RecordDict(dict(base)))
    with pytest.raises(ValueError, match=r"'y-ask' extra returned metrics \['num-examples'\]"):
        add_reply_records(_context({"y-ask": 1}), RecordDict(dict(base)))


def test_a_key_has_one_extra(private_registry):
    def first(ctx):
        return {}

    def second(ctx):
        return {}

    after_training("z-ask")(first)
    after_training("z-ask")(first)  # the same function again (a module imported twice) is fine
    with pytest.raises(ValueError, match="'z-ask' already has an extra for after_training"):
        after_training("z-ask")(second)


def test_evaluation_extras_wrap_evaluation(private_registry):
    events = []

    @evaluation("v-ask")
    def view(ctx):
        @contextmanager
        def active():
            events.append("enter")
            yield
            events.append("exit")

        return active()

    with evaluation_view(_context({"v-ask": 1})):
        events.append("evaluate")
    with evaluation_view(_context({})):
        events.append("plain")
    assert events == ["enter", "evaluate", "exit", "plain"]


def test_client_modules_are_imported_or_named_in_the_error():
    import_client_modules(client_modules({"name": "fedavg", "client_modules": ["json"]}))
    with pytest.raises(ImportError, match="'no_such_lab.extras'.*PYTHONPATH"):
        import_client_modules(client_modules({"name": "fedavg", "client_modules": ["no_such_lab.extras"]}))
