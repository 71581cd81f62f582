"""The model and data a run needs, made when missing, resolved to absolute paths.

Run once by whoever starts a run (``anther simulate`` or the ServerApp) before any
client starts, so simulated clients never race to create the same files.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from anther.core.config import anther_home
from anther.data.client_data import dataset_dir
from anther.model.shipped_model import PRETRAIN_STEPS, RECIPE_VERSION, install_shipped, shipped_for, shipped_id


def tiny_model_dir(family: str, seed: int, pretrain_steps: int) -> Path:
    """Where the tiny model of these settings is kept. The shipped one's name carries its checksum,
    so a copy pretrained on this machine before the model shipped (same settings, other weights)
    is not taken for it, and a newer shipped model gets a folder of its own."""
    name = f"tiny-{family}-r{RECIPE_VERSION}-seed{seed}-pretrain{pretrain_steps}"
    if shipped_for(family, seed, pretrain_steps):
        name += f"-shipped-{shipped_id()}"
    return anther_home() / "models" / name


def ensure_tiny(out: Path, seed: int = 0, pretrain_steps: int = PRETRAIN_STEPS, family: str = "llava") -> Path:
    """The tiny checkpoint at ``out``, unless it is already there: the shipped one copied when it was
    made with these settings, else made by :func:`anther.model.tiny_model.init_tiny` (safe across
    processes)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").is_file():
            if shipped_for(family, seed, pretrain_steps):
                install_shipped(out)
            else:
                from anther.model.tiny_model import init_tiny  # the recipe: PyTorch and model code

                init_tiny(out, seed=seed, pretrain_steps=pretrain_steps, family=family)
    return out


def prepare_assets(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``model.path`` and ``data.path`` point at existing folders."""
    cfg = cfg.copy()
    m = cfg.model
    model_path = Path(m.path).expanduser() if m.path else ensure_tiny(
        tiny_model_dir(m.tiny_family, m.tiny_seed, m.tiny_pretrain_steps), m.tiny_seed, m.tiny_pretrain_steps,
        m.tiny_family)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"model.path={model_path} is not a Hugging Face checkpoint directory "
                                "(no config.json)")
    OmegaConf.update(cfg, "model.path", str(model_path.resolve()))
    OmegaConf.update(cfg, "data.path", str(dataset_dir(cfg).resolve()))
    return cfg
