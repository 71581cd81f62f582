"""``anther model pretrain``: make the tiny LLaVA by its recipe, probe it, keep the best seed.

The recipe (:mod:`anther.model.tiny_model`) is deterministic for a seed, but what a tiny language
model learns in a few thousand steps depends on its seed (whether it learns yes/no at all, for
one). So the command makes one checkpoint per seed of ``seeds``, scores each with the skill probe
(:mod:`anther.model.skill_probe`), keeps the best in ``--out`` and writes its model card: how it
was made, every seed's probe, and the untrained model's probe beside the kept one's. The shipped
checkpoint is this command's output with ``anther/configs/pretrain/tiny_llava.yaml``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from anther.core.config import TINY_MIN_PRETRAIN_STEPS, ConfigError
from anther.core.settings_file import load_settings
from anther.model.shipped_model import CHECKSUMS, PRETRAIN_STEPS, PROVENANCE_FILE, checksums
from anther.model.skill_probe import markdown, probe, score
from anther.model.tiny_model import Recipe, init_tiny

CARD = "README.md"  # the model card, in the checkpoint's folder as on the Hugging Face Hub


@dataclass
class PretrainConfig:
    """``anther model pretrain``'s settings (``configs/pretrain/<name>.yaml``, then ``key=value``)."""

    seeds: list[int] = field(default_factory=lambda: [0])  # one checkpoint each; the best probe is kept
    steps: int = PRETRAIN_STEPS  # language-model steps (the experiment's model.tiny_pretrain_steps)
    vision_steps: int = Recipe.vision_steps
    vision_batch_size: int = Recipe.vision_batch_size
    vision_lr: float = Recipe.vision_lr
    batch_size: int = Recipe.batch_size
    lr: float = Recipe.lr
    weight_decay: float = Recipe.weight_decay
    probe_per_task: int = 60  # fresh questions per kind and domain set
    probe_seed: int = 99991  # a seed stream apart from every pretraining one

    @property
    def recipe(self) -> Recipe:
        return Recipe(**{f.name: getattr(self, f.name) for f in fields(Recipe)})

    def check(self) -> None:
        """Refuse settings no pretraining can run with (ConfigError naming the setting)."""
        problems = [(self.seeds and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds,
                     "must be distinct seeds, at least one"),
                    (self.steps >= TINY_MIN_PRETRAIN_STEPS, "steps", self.steps,
                     f"must be >= {TINY_MIN_PRETRAIN_STEPS}"),
                    (self.probe_per_task >= 1, "probe_per_task", self.probe_per_task, "must be >= 1")]
        for ok, key, value, rule in problems:
            if not ok:
                raise ConfigError(f"pretrain config value {key}={value} is invalid: {rule}")
        try:
            self.recipe.check()
        except ValueError as e:
            raise ConfigError(f"pretrain config value {e}") from None


def load_pretrain(name_or_file: str = "tiny_llava", overrides: list[str] | None = None) -> PretrainConfig:
    """``configs/pretrain/<name>.yaml`` (or a YAML path) with ``key=value`` overrides, checked."""
    merged = load_settings(PretrainConfig, "pretrain", name_or_file, overrides, "pretrain")
    cfg: PretrainConfig = OmegaConf.to_object(merged)
    cfg.check()
    return cfg


def pretrain_tiny(cfg: PretrainConfig, out: Path, command: str) -> dict[str, Any]:
    """Make a checkpoint per seed, probe each, move the best to ``out`` with its model card; what
    was measured (also in the checkpoint's provenance file)."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="anther-pretrain-", dir=out.parent if out.parent.is_dir() else None) as tmp:
        untrained = probe(init_tiny(Path(tmp) / "untrained", seed=cfg.seeds[0], pretrain_steps=0),
                          cfg.probe_per_task, cfg.probe_seed)
        probes = {}
        for seed in cfg.seeds:
            made = init_tiny(Path(tmp) / f"seed{seed}", seed=seed, pretrain_steps=cfg.steps, recipe=cfg.recipe)
            probes[seed] = probe(made, cfg.probe_per_task, cfg.probe_seed)
        best = max(cfg.seeds, key=lambda s: score(probes[s]))
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(Path(tmp) / f"seed{best}"), out)
    made = json.loads((out / PROVENANCE_FILE).read_text())
    made.update(created_by=command, probe=probes[best], untrained_probe=untrained,
                seed_search={str(s): round(score(p), 4) for s, p in probes.items()})
    (out / PROVENANCE_FILE).write_text(json.dumps(made, indent=2))
    (out / CARD).write_text(model_card(cfg, made, command, out))
    (out / CHECKSUMS).write_text(checksums(out))
    return made


def model_card(cfg: PretrainConfig, made: dict[str, Any], command: str, folder: Path) -> str:
    """The checkpoint's README.md: what it is, how it was made, what the probe measured."""
    size_mb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6
    vocab = json.loads((folder / "config.json").read_text())["text_config"]["vocab_size"]
    seeds = ", ".join(f"{s}: {v:.3f}" for s, v in made["seed_search"].items())
    settings = "\n".join(f"{k}: {v}" for k, v in cfg.__dict__.items())
    return f"""# anther's tiny LLaVA

A real `LlavaForConditionalGeneration` made offline by anther's recipe (`anther/model/tiny_model.py`):
it loads with `from_pretrained` like any Hugging Face checkpoint.

| | |
| --- | --- |
| parameters | {made["parameters"]:,} ({size_mb:.1f} MB of float32 safetensors) |
| tokenizer | byte-level BPE, {vocab} tokens, trained on the built-in corpus and the chat templates' words |
| image processor | CLIP's |
| chat template | LLaVA-1.5's (`USER: <image>\\n... ASSISTANT:`) |
| made by | `{command}` (recipe version {made["recipe_version"]}) |
| pretraining | {cfg.vision_steps} steps of the vision tower alone, then {cfg.steps} of the projector and LLM |
| final language loss | {made["pretrain_final_loss"]:.3f} (mean of the last 20 steps) |
| seed search | seed: probe score ({seeds}); seed {made["seed"]} kept |
| time to make the kept seed | {made["seconds"]:.0f} s |

## How it was made

Seeded random weights, then a pretraining of its own on a separate seed stream of ShapesVQA scenes.
First the CLIP vision tower alone on all four visual domains (per-patch colour, kind and size);
then, with the tower frozen, the projector and the language model on captions, terse questions
("q: colour circle" / "a: red") and context sentences in two of the four domains. The federated
task's phrasing and the other two domains are never seen by the language model: they are what
federated tuning has to teach. The settings (`anther model pretrain --out DIR` with
`anther/configs/pretrain/tiny_llava.yaml` and the overrides above):

```yaml
{settings}
```

## What the skill probe measured

Multiple-choice accuracy per question kind (the option the model finds likeliest) on
{cfg.probe_per_task} fresh questions per kind and domain set (probe seed {cfg.probe_seed}), in the
pretraining phrasing, before any tuning. The untrained model is the recipe's seed {cfg.seeds[0]} with no
pretraining. `anther model probe --model DIR` measures any tiny LLaVA the same way.

{markdown({"untrained": made["untrained_probe"], "this checkpoint": made["probe"]})}

`SHA256SUMS` holds the checksum of every file of the checkpoint; anther checks the shipped
checkpoint's before it copies it into `$ANTHER_HOME/models` and refuses a damaged file by name.
On another CPU the recipe's arithmetic differs in its last bits, so a remade checkpoint's weights
and checksums differ too.
"""
