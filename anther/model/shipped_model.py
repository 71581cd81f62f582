"""The built-in checkpoint: the tiny LLaVA that ships in ``anther/model/builtin/tiny-llava``, which
settings it was made with, and its checksums, checked when it is copied into place.

Kept apart from the recipe that makes it (:mod:`anther.model.tiny_model`, PyTorch and model code)
so that whoever only needs a run's model folder (the CLI before it starts a run) imports neither;
:func:`anther.simulations.assets.ensure_tiny` imports the recipe only when a checkpoint must be made.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from anther.core.config import TINY_MODEL_MARKER, ModelConfig

PROVENANCE_FILE = TINY_MODEL_MARKER
PRETRAIN_STEPS = ModelConfig.tiny_pretrain_steps  # the language steps; the experiment config's default
# Bumped whenever the recipe (data, stages, hyper-parameters) changes, so cached models are remade
# (and the shipped one, which records the version it was made with, is no longer used).
RECIPE_VERSION = 8
SHIPPED = Path(__file__).with_name("builtin") / "tiny-llava"  # the default settings' checkpoint
CHECKSUMS = "SHA256SUMS"  # in SHIPPED: "<sha256>  <file>" for each file of the checkpoint


def shipped_for(family: str, seed: int, pretrain_steps: int) -> bool:
    """Whether the shipped checkpoint is what :func:`anther.model.tiny_model.init_tiny` makes with
    these settings (it is absent from a Flower app bundle, which carries no weights: then the
    recipe makes it)."""
    marker = SHIPPED / PROVENANCE_FILE
    if not marker.is_file():
        return False
    made = json.loads(marker.read_text())
    return (made.get("recipe_version"), made.get("family"), made.get("seed"), made.get("pretrain_steps")) == (
        RECIPE_VERSION, family, seed, pretrain_steps)


def shipped_id() -> str:
    """A short name for the shipped checkpoint's contents: the start of its ``SHA256SUMS``'s sha256."""
    return hashlib.sha256((SHIPPED / CHECKSUMS).read_bytes()).hexdigest()[:12]


def install_shipped(out: Path) -> Path:
    """Copy the shipped checkpoint to ``out`` once every file matches its checksum (a damaged
    install is refused, naming the file, rather than trained on)."""
    files = {}
    for line in (SHIPPED / CHECKSUMS).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        files[name] = (SHIPPED / name).read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise ValueError(f"the shipped tiny model's {SHIPPED / name} does not match its checksum in "
                             f"{SHIPPED / CHECKSUMS}: reinstall anther, or make it with `anther model init-tiny`")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    tmp.rename(out)
    return out


def checksums(folder: Path) -> str:
    """``SHA256SUMS`` for every file of the checkpoint in ``folder`` (the lines ``sha256sum`` writes)."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name != CHECKSUMS)
    return "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n" for f in files)
