"""Classification metrics of multiple-choice answers, and their spread over clients.

FedMLLM reports accuracy, ROC AUC and macro-F1. Here every sample is a multiple-choice
question scored by the log-likelihood of each option, so:

- **macro-F1** (``f1_macro``, and ``f1_macro/<task>``) compares the picked option with the
  answer, each distinct answer a class, classes weighted equally;
- **ROC AUC** (``auc/<task>``) is computed for every *binary* task, one whose samples all
  offer the same two options (yes / no, hateful / not): the positive class is the first option
  of the task's first sample and a sample's score is the log-likelihood of the positive option
  minus that of the other, so no threshold is involved. ``auc`` is their mean. A task whose
  samples all share one answer has no AUC (it is undefined) and is left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from anther.core.sample import Sample

ARTICLES = {"a", "an", "the"}


def normalise_answer(text: str) -> str:
    """An answer as exact match compares it (as VQA's evaluation does): lower case, punctuation
    and the articles a, an, the left out, white space collapsed."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    return " ".join(w for w in words if w not in ARTICLES)


def macro_f1(answers: Sequence[str], picked: Sequence[str]) -> float:
    """The mean over classes (every label among the answers or the picks) of each class's F1,
    ``2 * hits / (answers + picks)``: scikit-learn's ``f1_score(average="macro", zero_division=0)``,
    without importing it (half a second in every process that evaluates)."""
    true, chosen = Counter(answers), Counter(picked)
    hits = Counter(a for a, p in zip(answers, picked) if a == p)
    labels = true.keys() | chosen.keys()
    return sum(2 * hits[c] / (true[c] + chosen[c]) for c in labels) / len(labels) if labels else 0.0


def _auc(positive: Sequence[bool], score: Sequence[float]) -> float:
    """ROC AUC: the chance that a random positive scores above a random negative, ties counting
    half (the Mann-Whitney U statistic over the two classes' sizes, from average ranks)."""
    rank_sum, below = 0.0, 0
    for _, group in groupby(sorted(zip(score, positive)), key=itemgetter(0)):
        tied = [y for _, y in group]  # whether each sample of this score is positive
        rank_sum += (below + (len(tied) + 1) / 2) * sum(tied)  # tied scores share their mean rank
        below += len(tied)
    n_pos = sum(positive)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (len(positive) - n_pos))


def binary_auc(samples: Sequence[Sample], scores: Sequence[Sequence[float]]) -> float | None:
    """ROC AUC of a binary task (see the module doc), or None if it is not binary or has one class."""
    options = set(samples[0].options)
    if len(options) != 2 or any(set(s.options) != options for s in samples):
        return None
    positive = samples[0].options[0]
    y = [s.answer == positive for s in samples]
    if all(y) or not any(y):
        return None
    margin = [sc[s.options.index(positive)] - sc[1 - s.options.index(positive)] for s, sc in zip(samples, scores)]
    return _auc(y, margin)


def choice_metrics(samples: Sequence[Sample], scores: Sequence[Sequence[float]],
                   picked: Sequence[str]) -> dict[str, float]:
    """``f1_macro``, ``f1_macro/<task>``, ``auc/<task>`` for binary tasks and their mean ``auc``."""
    metrics = {"f1_macro": macro_f1([s.answer for s in samples], picked)}
    aucs = []
    for task in sorted({s.task for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.task == task]
        metrics[f"f1_macro/{task}"] = macro_f1([samples[i].answer for i in idx], [picked[i] for i in idx])
        auc = binary_auc([samples[i] for i in idx], [scores[i] for i in idx])
        if auc is not None:
            metrics[f"auc/{task}"] = auc
            aucs.append(auc)
    if aucs:
        metrics["auc"] = sum(aucs) / len(aucs)
    return metrics


def summarise_clients(per_client: dict[Any, dict[str, Any]],
                      keys: Sequence[str] = ("acc_mc", "f1_macro", "auc")) -> dict[str, float]:
    """Mean, worst client and spread (population std) of each metric in ``keys`` over the clients
    that report it: ``<key>_mean``, ``<key>_worst``, ``<key>_std``."""
    summary = {}
    for key in keys:
        values = [float(m[key]) for m in per_client.values() if key in m]
        if values:
            mean = sum(values) / len(values)
            summary |= {f"{key}_mean": mean, f"{key}_worst": min(values),
                        f"{key}_std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}
    return summary
