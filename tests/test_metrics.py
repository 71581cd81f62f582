"""Evaluation metrics (issue 5 item 4) and the model path under missing modalities (item 2).

The metric functions are checked against hand-computed values; evaluation and training then
run on the tiny model with batches that lack images, text context or both."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor

from anther.backbone.in_process import InProcessBackbone
from anther.client.inference import evaluate_samples
from anther.client.local_training import LocalTraining
from anther.client.metrics import binary_auc, choice_metrics, macro_f1, summarise_clients
from anther.client.trainer import train_adapters
from anther.core.sample import Sample
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder

YES_NO = ["yes", "no"]


def _yes_no(answer: str, options: list[str] = YES_NO, task: str = "yesno") -> Sample:
    return Sample(id=answer, question="q?", answer=answer, options=options, task=task)


def test_macro_f1_weights_every_class_equally():
    # class a: P 1, R 0.5 -> F1 2/3; class b: P 0.5, R 1 -> 2/3; class c: P 1, R 1 -> 1
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", "c"]) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1, max_size=30))
def test_macro_f1_is_scikit_learns(pairs):
    from sklearn.metrics import f1_score

    answers, picked = [a for a, _ in pairs], [p for _, p in pairs]
    assert macro_f1(answers, picked) == pytest.approx(f1_score(answers, picked, average="macro", zero_division=0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([-1.5, -0.5, 0.0, 0.25, 2.0])), min_size=2, max_size=30))
def test_binary_auc_is_scikit_learns_ties_included(rows):
    from sklearn.metrics import roc_auc_score

    answers = ["yes" if positive else "no" for positive, _ in rows]
    if len(set(answers)) < 2:
        return
    samples = [_yes_no(a) for a in answers]
    scores = [[margin, 0.0] for _, margin in rows]  # yes is the positive option: its margin is the score
    expected = roc_auc_score([a == "yes" for a in answers], [m for _, m in rows])
    assert binary_auc(samples, scores) == pytest.approx(expected)


def test_binary_auc_ranks_by_the_positive_option_margin():
    samples = [_yes_no("yes"), _yes_no("no"), _yes_no("yes"), _yes_no("no")]
    # margins log p(yes) - log p(no): 2, 1, 0.5, -1 -> positives at ranks 1 and 3 -> AUC 3/4
    scores = [[0.0, -2.0], [0.0, -1.0], [0.0, -0.5], [-1.0, 0.0]]
    assert binary_auc(samples, scores) == pytest.approx(0.75)


def test_binary_auc_follows_each_samples_option_order():
    samples = [_yes_no("yes"), _yes_no("no", ["no", "yes"])]
    scores = [[-0.1, -3.0], [-0.2, -4.0]]  # sample 2 lists "no" first: its margin is -4 - -0.2 < 0
    assert binary_auc(samples, scores) == 1.0


def test_auc_is_left_out_where_undefined_or_not_binary():
    assert binary_auc([_yes_no("yes"), _yes_no("yes")], [[0, 1], [1, 0]]) is None  # one class only
    three = [Sample(id=str(i), question="q?", answer=a, options=["a", "b", "c"]) for i, a in enumerate("abc")]
    assert binary_auc(three, [[0, 1, 2]] * 3) is None
    mixed = [_yes_no("yes"), _yes_no("no", ["no", "maybe"])]
    assert binary_auc(mixed, [[0, 1], [1, 0]]) is None


def test_choice_metrics_per_task_and_the_mean_auc():
    colour = Sample(id="c", question="q?", answer="red", options=["red", "blue", "green"], task="colour")
    samples = [_yes_no("yes"), _yes_no("no"), _yes_no("yes", YES_NO, "other"), _yes_no("no", YES_NO, "other"),
               colour]
    scores = [[0, -1], [0, -2], [-1, 0], [0, -1], [0, -1, -2]]
    picked = ["yes", "yes", "no", "yes", "red"]
    m = choice_metrics(samples, scores, picked)
    assert m["auc/yesno"] == 0.0 and m["auc/other"] == 0.0 and m["auc"] == 0.0
    assert "auc/colour" not in m
    assert m["f1_macro/colour"] == 1.0
    assert m["f1_macro/yesno"] == pytest.approx((2 / 3 + 0) / 2)
    assert set(m) == {"f1_macro", "f1_macro/yesno", "f1_macro/other", "f1_macro/colour", "auc/yesno",
                      "auc/other", "auc"}


def test_summarise_clients_gives_mean_worst_and_spread():
    per_client = {0: {"acc_mc": 0.5, "auc": 0.6}, 1: {"acc_mc": 0.7}, 2: {"acc_mc": 0.9, "f1_macro": 0.4}}
    s = summarise_clients(per_client)
    assert s["acc_mc_mean"] == pytest.approx(0.7) and s["acc_mc_worst"] == 0.5
    assert s["acc_mc_std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert (s["auc_mean"], s["auc_worst"], s["auc_std"]) == (0.6, 0.6, 0.0)
    assert s["f1_macro_mean"] == 0.4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    return SampleEncoder(edge, processor), InProcessBackbone.from_pretrained(tiny_model_dir)


def _modality_mix(samples: list[Sample]) -> list[Sample]:
    """Every combination: image+text, image only, text only, question only."""
    return [[s, s.without_text(), s.without_image(), s.without_image().without_text()][i % 4]
            for i, s in enumerate(samples)]


def test_evaluation_reports_new_metrics_next_to_accuracy_on_mixed_modalities(tiny, samples):
    encoder, backbone = tiny
    batch = _modality_mix(list(samples))
    metrics = evaluate_samples(encoder, backbone, batch, generate=True, max_new_tokens=2, batch_size=5)
    for key in ("acc_mc", "acc_gen", "num_examples", "f1_macro"):
        assert key in metrics
    for task in {s.task for s in batch}:
        assert f"acc_mc/{task}" in metrics and f"f1_macro/{task}" in metrics
    yesno = [s for s in batch if s.task == "yesno"]
    assert ("auc/yesno" in metrics) == (len({s.answer for s in yesno}) == 2)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "num_examples")


@pytest.mark.parametrize("drop", ["image", "text", "both"])
def test_training_accepts_batches_without_a_modality(tiny, samples, drop):
    """Text-only and image-only clients train on batches that never carry the other modality."""
    encoder, backbone = tiny
    strip = {"image": lambda s: s.without_image(), "text": lambda s: s.without_text(),
             "both": lambda s: s.without_image().without_text()}[drop]
    batch = [strip(s) for s in samples]
    before = {k: v.clone() for k, v in encoder.edge.adapter_state().items()}
    report = train_adapters(encoder, backbone, batch, LocalTraining(steps=2, batch_size=4, lr=1e-2), seed=0)
    assert math.isfinite(report.loss)
    after = encoder.edge.adapter_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    encoder.edge.load_adapter_state(before)
