"""What a tiny LLaVA can do on its own, per question kind: the skill probe.

Scores fresh ShapesVQA scenes in the tiny model's own pretraining phrasing
(``<image> q: colour circle a:``) by multiple choice (the option with the highest
likelihood), in the two visual domains its language model was pretrained on and in the
two it never saw. This is the ceiling the NanoAdapters work towards: they learn the
task's phrasing and the unseen domains, they cannot teach the frozen LLM a skill it lacks.
``anther model pretrain`` probes every checkpoint it makes and keeps the best;
``anther model probe`` probes any tiny LLaVA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from anther.data import shapes_vqa
from anther.data.shapes_vqa import DOMAINS, PRETRAIN_DOMAINS, TASKS
from anther.model.families.llava import LlavaFamily
from anther.model.tiny_model import IMAGE_PLACEHOLDER

DOMAIN_SETS = {"pretraining_domains": PRETRAIN_DOMAINS,
               "unseen_domains": tuple(d for d in DOMAINS if d not in PRETRAIN_DOMAINS)}


@torch.no_grad()
def option_scores(model, processor, image, prompt: str, options: list[str]) -> torch.Tensor:
    """Summed log-likelihood of each option's tokens (and end of sequence) after ``prompt``."""
    eos = processor.tokenizer.eos_token
    batch = LlavaFamily().encode(processor, [prompt] * len(options), [[image]] * len(options),
                                 [f" {o}{eos}" for o in options])
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   pixel_values=batch.pixel_values).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    labels = batch.labels[:, 1:]
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logp * (labels != -100)).sum(dim=1)


def skills(model, processor, domains: tuple[str, ...], per_task: int, seed: int) -> dict[str, float]:
    """Multiple-choice accuracy per question kind on fresh scenes drawn from ``domains``, and their mean."""
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for image, q, _ in shapes_vqa.generate_terse_qa(per_task * len(TASKS), seed, domains):
        scores = option_scores(model, processor, image, f"{IMAGE_PLACEHOLDER}\nq: {q.terse}\na:", q.options)
        hits[q.task].append(q.options[int(scores.argmax())] == q.answer)
    acc = {t: sum(h) / len(h) for t, h in hits.items()}
    return {**acc, "all": sum(acc.values()) / len(acc)}


def probe(model_dir: Path, per_task: int, seed: int) -> dict[str, dict[str, float]]:
    """The probe of the checkpoint in ``model_dir``: accuracy per kind in each domain set."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return {name: skills(model, processor, domains, per_task, seed) for name, domains in DOMAIN_SETS.items()}


def score(result: dict[str, dict[str, float]]) -> float:
    """One number to rank checkpoints by: the mean accuracy over both domain sets."""
    return sum(r["all"] for r in result.values()) / len(result)


def markdown(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """A table of probes side by side: a row per domain set and kind, a column per probe."""
    lines = ["| domains | kind | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for name in DOMAIN_SETS:
        for kind in (*TASKS, "all"):
            cells = " | ".join(f"{c[name][kind]:.2f}" for c in columns.values())
            lines.append(f"| {name.replace('_', ' ')} | {kind} | {cells} |")
    return "\n".join(lines)
