"""What the pretrained tiny model can do before any federated tuning, per question kind.

Scores fresh ShapesVQA scenes in the tiny model's own pretraining phrasing
(``<image> q: colour circle a:``) by multiple choice (the option with the highest
likelihood), in the two visual domains its language model was pretrained on and in the
two it never saw. This is the ceiling the NanoAdapters work towards: they learn the
task's phrasing and the unseen domains, they cannot teach the frozen LLM a skill it lacks.

    python -m anther.bench.tiny_model_skills [--model DIR] [--per-task 60] [--out FILE]

``--out`` defaults to ``$ANTHER_HOME/bench/tiny_model_skills/tiny_model_skills.json``.

Without ``--model`` it scores the default run's model (made if missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from anther.bench.results import results_dir
from anther.data import shapes_vqa
from anther.data.shapes_vqa import DOMAINS, PRETRAIN_DOMAINS, TASKS
from anther.model.families.llava import LlavaFamily
from anther.model.tiny_model import IMAGE_PLACEHOLDER
from anther.simulations.experiment import load_config


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
    """Multiple-choice accuracy per question kind on fresh scenes drawn from ``domains``."""
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for image, q, _ in shapes_vqa.generate_terse_qa(per_task * len(TASKS), seed, domains):
        scores = option_scores(model, processor, image, f"{IMAGE_PLACEHOLDER}\nq: {q.terse}\na:", q.options)
        hits[q.task].append(q.options[int(scores.argmax())] == q.answer)
    acc = {t: sum(h) / len(h) for t, h in hits.items()}
    return {**acc, "all": sum(acc.values()) / len(acc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="tiny model folder (default: the default run's)")
    parser.add_argument("--per-task", type=int, default=60)
    parser.add_argument("--seed", type=int, default=99991)
    parser.add_argument("--out", type=Path, default=results_dir("tiny_model_skills") / "tiny_model_skills.json")
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        from anther.simulations.assets import prepare_assets

        model_dir = Path(prepare_assets(load_config("default", [])).model.path)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    unseen = tuple(d for d in DOMAINS if d not in PRETRAIN_DOMAINS)
    result = {"model": str(model_dir), "per_task": args.per_task, "seed": args.seed,
              "pretraining_domains": skills(model, processor, PRETRAIN_DOMAINS, args.per_task, args.seed),
              "unseen_domains": skills(model, processor, unseen, args.per_task, args.seed)}
    print(f"{'domains':<22}" + "".join(f"{t:>10}" for t in (*TASKS, "all")))
    for key in ("pretraining_domains", "unseen_domains"):
        print(f"{key:<22}" + "".join(f"{result[key][t]:>10.2f}" for t in (*TASKS, "all")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
