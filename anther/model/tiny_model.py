"""anther's default model: a tiny LLaVA made offline and saved as an ordinary HF checkpoint.

Nothing can be downloaded where anther is built and tested, so the default model is
created here: a real ``LlavaForConditionalGeneration`` with a small config, a BPE
tokenizer trained with ``tokenizers`` on the built-in corpus (``tokenizer.json``), a
CLIP image processor, seeded random weights in safetensors. It is then given a short
*pretraining* of its own, as a real MLLM has before anyone fine-tunes it, on a separate
seed stream of ShapesVQA scenes: first the vision tower alone on all four visual domains
(per-patch colour, kind and size, as CLIP is pretrained on broad data before LLaVA uses
it), then, with the tower frozen, the projector and language model on captions, terse
questions ("q: colour circle" / "a: red") and context sentences in two of the four
domains. The federated task's phrasing and the other two domains are never seen by the
language model. The directory loads with ``from_pretrained`` exactly like a 7B one.

The LLaVA made with the default settings (seed 0, ``PRETRAIN_STEPS``, this ``RECIPE_VERSION``)
ships with anther, in ``anther/model/builtin/tiny-llava`` with a checksum of each file and a
model card: a run copies it instead of pretraining (minutes on a CPU), and every machine starts
from the same weights, so the default run's table is the same on each
(:mod:`anther.model.shipped_model`). ``anther model pretrain`` (:mod:`anther.model.tiny_pretraining`)
remakes it by this recipe, probes what it learned and writes its model card.

Every other registered family gets a tiny checkpoint the same way (``init_tiny(family=...)``,
its config and processor from the family's ``tiny``), untrained: the pretraining recipe is
LLaVA's. Those serve the correctness anchor and the end-to-end tests of each family.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from anther.core.config import TINY_MIN_PRETRAIN_STEPS
from anther.data import shapes_vqa
from anther.model.chat_templates import TEMPLATE_WORDS
from anther.model.families import family_for
from anther.model.shipped_model import CHECKSUMS, PRETRAIN_STEPS, PROVENANCE_FILE, RECIPE_VERSION, checksums

IMAGE_PLACEHOLDER = "<image>"  # the image token of every tiny checkpoint's tokenizer
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_PLACEHOLDER]


@dataclass(frozen=True)
class Recipe:
    """The pretraining's settings besides the seed and the language steps (which name a tiny model in
    the experiment config: ``model.tiny_seed``, ``model.tiny_pretrain_steps``). The defaults made the
    shipped checkpoint; ``anther model pretrain`` takes others from its config."""

    vision_steps: int = 300  # stage 0: the vision tower alone
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    batch_size: int = 32  # stage 1: the projector and the language model
    lr: float = 5e-4
    weight_decay: float = 0.1

    def check(self) -> None:
        """Refuse a setting no pretraining can run with (ValueError naming it)."""
        if self.vision_steps < TINY_MIN_PRETRAIN_STEPS:
            raise ValueError(f"vision_steps={self.vision_steps} must be >= {TINY_MIN_PRETRAIN_STEPS}")
        for key in ("vision_batch_size", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("vision_lr", "lr"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")


def train_tokenizer(lines: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``lines``; every corpus word ends up a single token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
        padding_side="right",
    )


def tiny_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """The tiny checkpoints' tokenizer: BPE over the built-in corpus and the chat templates' words."""
    return train_tokenizer(shapes_vqa.corpus(seed) + [" ".join(TEMPLATE_WORDS)] * 100)


def _pretrain_batches(family, processor, n: int, batch_size: int, seed: int):
    """``n`` image examples (a quarter captions, the rest terse questions, which the
    captions teach faster; half of the questions follow a context sentence, as the task's
    do) and ``n / 8`` context sentences alone, shuffled, as EncodedBatches.

    They are plain text (``<image>\nq: colour circle\na: red``), not the chat template the
    checkpoint ships: wrapped in it, the tiny language model learned yes/no questions only
    weakly (0.60 in its own domains) and the default run did no better (docs/results.md). The
    template is the fine-tuning's format, which the NanoAdapters learn to address, as they learn
    the task's phrasing."""
    eos = processor.tokenizer.eos_token
    examples = [(f"{IMAGE_PLACEHOLDER}\ncaption:", im, f" {cap}{eos}")
                for im, cap in shapes_vqa.generate_captions(n // 4, seed)]
    for i, (im, q, context) in enumerate(shapes_vqa.generate_terse_qa(n - n // 4, seed + 3)):
        said = f"\ncontext: {context}" if i % 2 else ""  # half of them after the scene's context sentence
        examples.append((f"{IMAGE_PLACEHOLDER}{said}\nq: {q.terse}\na:", im, f" {q.answer}{eos}"))
    examples += [("context:", None, f" {s.context}{eos}")
                 for s in shapes_vqa.generate(n // 8, seed + 7, prefix="p")]
    random.Random(seed).shuffle(examples)
    for i in range(0, len(examples) - batch_size + 1, batch_size):
        chunk = examples[i:i + batch_size]
        yield family.encode(processor, [c[0] for c in chunk], [[c[1]] if c[1] else [] for c in chunk],
                            [c[2] for c in chunk])


def pretrain_vision(tower: torch.nn.Module, processor, steps: int, seed: int, batch_size: int, lr: float) -> float:
    """Stage 0: pretrain the CLIP vision tower on its own, as CLIP is before LLaVA uses it.

    A linear head reads each patch token of the last hidden layer (the layer LLaVA feeds
    its projector) and predicts the colour, kind and size of the shape in that grid cell.
    Returns the final mean loss; the head is discarded.
    """
    width = tower.config.hidden_size
    heads = torch.nn.ModuleList([
        torch.nn.Linear(width, 1 + len(shapes_vqa.COLOURS)),
        torch.nn.Linear(width, 1 + len(shapes_vqa.KINDS)),
        torch.nn.Linear(width, 1 + len(shapes_vqa.SIZES)),
    ])
    scenes = shapes_vqa.generate_scenes(steps * batch_size // 4, seed, domains=shapes_vqa.DOMAINS)
    pixels = processor.image_processor([im for im, _ in scenes], return_tensors="pt")["pixel_values"]
    labels = torch.tensor([shapes_vqa.cell_labels(shapes) for _, shapes in scenes])  # (n, 9, 3)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    recent: list[float] = []
    bar = tqdm(range(steps), desc="pretraining vision tower", unit="step", disable=None)  # None: quiet off a terminal
    for _ in bar:
        idx = torch.randint(len(scenes), (batch_size,), generator=gen)
        tokens = tower(pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:]  # drop CLS
        loss = sum(torch.nn.functional.cross_entropy(head(tokens).flatten(0, 1), labels[idx, :, i].flatten())
                   for i, head in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    tower.eval()
    return sum(recent) / len(recent)


def pretrain(model, processor, steps: int, seed: int, batch_size: int, lr: float, weight_decay: float) -> float:
    """Train the projector and the language model (the vision tower stays frozen, as in
    LLaVA); returns the final mean loss.

    Freezing the tower matters: trained end to end on this little data, it collapses to
    colour-only features (a linear probe then finds the shape kind at chance). The low
    learning rate matters too: at 3e-3 the model captions well but never learns to look a
    shape up by one attribute and read another (terse colour questions stayed at chance);
    at 5e-4 it answers them, and yes/no, in the pretraining domains.
    """
    family = family_for(model.config.model_type)
    batches = list(_pretrain_batches(family, processor, steps * batch_size * 8 // 9, batch_size, seed))
    family.edge_parts(model).vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    recent: list[float] = []
    bar = tqdm(range(steps), desc="pretraining tiny model", unit="step", disable=None)
    for step in bar:
        b = batches[step % len(batches)]
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                    pixel_values=b.pixel_values, labels=b.labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        recent = (recent + [out.loss.item()])[-20:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    model.eval()
    return sum(recent) / len(recent)


def init_tiny(out: Path, seed: int = 0, pretrain_steps: int = PRETRAIN_STEPS, family: str = "llava",
              recipe: Recipe = Recipe()) -> Path:
    """Create, pretrain and save the tiny checkpoint directory ``out`` of a registered ``family``
    (a Hugging Face ``model_type``: its module in anther.model.families says the config and
    processor). ``recipe`` other than the default is recorded in the checkpoint's provenance."""
    out = Path(out)
    split = family_for(family)  # an unknown name is refused there, with the known ones
    if pretrain_steps and family != "llava":
        raise ValueError(f"the tiny pretraining recipe is written for LLaVA's CLIP tower; the tiny {family} "
                         "is made untrained: set model.tiny_pretrain_steps=0 (or --pretrain-steps 0)")
    if 0 < pretrain_steps < TINY_MIN_PRETRAIN_STEPS:
        raise ValueError(f"pretrain_steps={pretrain_steps} must be 0 (untrained) or >= {TINY_MIN_PRETRAIN_STEPS}")
    started = time.time()
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(seed)
    config, processor = split.tiny(tokenizer)
    model = split.model_class(config)
    final_loss = None
    if pretrain_steps:
        pretrain_vision(split.edge_parts(model).vision_tower, processor, recipe.vision_steps, seed + 500,
                        recipe.vision_batch_size, recipe.vision_lr)
        final_loss = pretrain(model, processor, pretrain_steps, seed + 1000, recipe.batch_size, recipe.lr,
                              recipe.weight_decay)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / PROVENANCE_FILE).write_text(json.dumps({
        "created_by": "anther model init-tiny", "recipe_version": RECIPE_VERSION, "family": family, "seed": seed,
        "pretrain_steps": pretrain_steps,
        **({"recipe": asdict(recipe)} if recipe != Recipe() else {}),
        "pretrain_final_loss": final_loss, "seconds": round(time.time() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }, indent=2))
    (tmp / CHECKSUMS).write_text(checksums(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
