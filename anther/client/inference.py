"""Answering with a NanoEdge and a backbone: multiple-choice scoring and greedy generation.

Both run the same split path as training (NanoEdge embeddings, backbone on
``inputs_embeds``), so what is evaluated is exactly what is trained, in either mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from anther.backbone.interface import Backbone, greedy_decode
from anther.client.metrics import choice_metrics, normalise_answer
from anther.core.sample import Sample
from anther.model.sample_encoder import SampleEncoder


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def option_scores(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample],
                  batch_size: int = 64) -> list[list[float]]:
    """Log-likelihood of every answer option of every sample (the answer's tokens only)."""
    turns = [encoder.render(s) for s in samples]
    pairs = [(i, s, o) for i, s in enumerate(samples) for o in s.options]
    scores: list[list[float]] = [[] for _ in samples]
    for chunk in _chunks(pairs, batch_size):
        batch = encoder.encode([s for _, s, _ in chunk], [turns[i] for i, _, _ in chunk], [o for _, _, o in chunk])
        totals = backbone.score(encoder.edge(batch), batch.attention_mask, batch.labels, batch.position_ids)
        for (i, _, _), total in zip(chunk, totals.tolist()):
            scores[i].append(total)
    return scores


@torch.no_grad()
def greedy_answers(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample],
                   max_new_tokens: int = 4, batch_size: int = 64) -> list[str]:
    """Greedy decoding driven by the client: each new token is embedded (and adapted)
    here, so generation sees exactly the embeddings training did."""
    tokenizer = encoder.processor.tokenizer
    edge = encoder.edge

    answers: list[str] = []
    for chunk in _chunks(samples, batch_size):
        batch = encoder(chunk)
        tokens = greedy_decode(backbone.next_token_logits, edge.embed_text, edge(batch), batch.attention_mask,
                               max_new_tokens, encoder.stop_token_ids, batch.position_ids)
        answers += [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip()
                    for row in tokens.tolist()]
    return answers


def answer_length(encoder: SampleEncoder, samples: list[Sample]) -> int:
    """Tokens to generate so the longest reference answer fits, with two to spare (the end of
    turn, and a token that shows a longer wrong answer)."""
    tokenizer = encoder.processor.tokenizer
    return 2 + max(len(tokenizer(" " + s.answer, add_special_tokens=False)["input_ids"]) for s in samples)


@dataclass
class Answers:
    """What the model answered to each sample: the option scoring picked (None for a sample without
    options), every option's log-likelihood, and the greedy generation (empty if not asked)."""

    picked: list[str | None]
    scores: list[list[float]]
    generated: list[str] = field(default_factory=list)


def answer_samples(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample], generate: bool = True,
                   max_new_tokens: int | None = None, batch_size: int = 128) -> Answers:
    """Score the options of every sample that has some and, with ``generate``, answer every sample
    greedily (``max_new_tokens`` None fits the longest reference answer)."""
    closed = [i for i, s in enumerate(samples) if s.options]
    scores: list[list[float]] = [[] for _ in samples]
    for i, sc in zip(closed, option_scores(encoder, backbone, [samples[i] for i in closed], batch_size)):
        scores[i] = sc
    picked = [s.options[max(range(len(sc)), key=sc.__getitem__)] if sc else None for s, sc in zip(samples, scores)]
    generated = []
    if generate:
        length = max_new_tokens or answer_length(encoder, samples)
        generated = greedy_answers(encoder, backbone, samples, length, batch_size)
    return Answers(picked, scores, generated)


def metrics_of(samples: list[Sample], picked: list[str | None], scores: list[list[float]],
               generated: list[str] | None) -> dict[str, float]:
    """Accuracy by multiple-choice scoring (``acc_mc``, over the samples that have options),
    normalised exact match of the generated answers (``acc_gen``, over all), multiple-choice
    accuracy per task (``acc_mc/<task>``), and macro-F1 and ROC AUC of the multiple-choice answers
    (:mod:`anther.client.metrics`)."""
    metrics = {"num_examples": float(len(samples))}
    closed = [i for i, s in enumerate(samples) if s.options]
    if closed:
        hits = {i: picked[i] == samples[i].answer for i in closed}
        metrics["acc_mc"] = sum(hits.values()) / len(hits)
        for task in sorted({samples[i].task for i in closed}):
            task_hits = [hits[i] for i in closed if samples[i].task == task]
            metrics[f"acc_mc/{task}"] = sum(task_hits) / len(task_hits)
        metrics |= choice_metrics([samples[i] for i in closed], [scores[i] for i in closed],
                                  [picked[i] for i in closed])
    if generated:
        metrics["acc_gen"] = sum(normalise_answer(a) == normalise_answer(s.answer)
                                 for a, s in zip(generated, samples)) / len(samples)
    return metrics


def evaluate_samples(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample], generate: bool = True,
                     max_new_tokens: int | None = None, batch_size: int = 128) -> dict[str, float]:
    """:func:`metrics_of` the answers to ``samples`` (:func:`answer_samples`); {} for no samples."""
    if not samples:
        return {}
    answers = answer_samples(encoder, backbone, samples, generate, max_new_tokens, batch_size)
    return metrics_of(samples, answers.picked, answers.scores, answers.generated if generate else None)
