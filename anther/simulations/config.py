"""The experiment configuration: one Hydra schema for `flwr run`, `anther simulate` and the benchmarks.

Experiments are YAML files in ``anther/simulations/configs/`` composed over the
structured schema below, so a misspelt key or a wrong type is rejected by Hydra
with the key's name, and :func:`validate` rejects out-of-range values the same way.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"


def anther_home() -> Path:
    """Where models, data and runs go by default (``$ANTHER_HOME``, else ``~/.cache/anther``)."""
    return Path(os.environ.get("ANTHER_HOME", Path.home() / ".cache" / "anther")).expanduser()


@dataclass
class ModelConfig:
    path: str | None = None  # HF checkpoint directory; None = anther's tiny LLaVA (made if missing)
    dtype: str = "float32"
    device: str = "cpu"
    tiny_seed: int = 0
    tiny_pretrain_steps: int = 2000


@dataclass
class DataConfig:
    path: str | None = None  # folder in anther's on-disk format; None = built-in ShapesVQA
    train_size: int = 4000
    test_size: int = 400  # server-side held-out set
    seed: int = 0
    client_test_fraction: float = 0.2
    modality_agnostic_prompt: bool = False  # FedMLLM prompt augmentation


@dataclass
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet
    alpha: float = 0.5
    seed: int = 0


@dataclass
class FederationConfig:
    num_clients: int = 10
    rounds: int = 5
    fraction_train: float = 1.0
    min_train_clients: int = 2
    round_timeout_s: float = 1800.0
    client_eval_every: int = 0  # 0 = client-side evaluation after the last round only


@dataclass
class TrainConfig:
    local_steps: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class AdapterConfig:
    rank: int = 16
    alpha: float = 16.0
    activation: str = "gelu"


@dataclass
class EvalConfig:
    server_test_size: int = 400
    generate: bool = True
    max_new_tokens: int = 3
    batch_size: int = 128


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str | None = None  # None = $ANTHER_HOME/runs
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    eval: EvalConfig = field(default_factory=EvalConfig)


ConfigStore.instance().store(name="anther_schema", node=ExperimentConfig)


class ConfigError(ValueError):
    """An experiment config value is out of range; the message names the key."""


def _check(ok: bool, key: str, value: object, need: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is invalid: {need}")


def validate(cfg: DictConfig) -> DictConfig:
    """Range checks Hydra's types cannot express."""
    f, t, d = cfg.federation, cfg.train, cfg.data
    _check(f.num_clients >= 1, "federation.num_clients", f.num_clients, "must be >= 1")
    _check(f.rounds >= 1, "federation.rounds", f.rounds, "must be >= 1")
    _check(0 < f.fraction_train <= 1, "federation.fraction_train", f.fraction_train, "must be in (0, 1]")
    _check(f.min_train_clients >= 1, "federation.min_train_clients", f.min_train_clients, "must be >= 1")
    _check(t.local_steps >= 1, "train.local_steps", t.local_steps, "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(cfg.adapter.rank >= 1, "adapter.rank", cfg.adapter.rank, "must be >= 1")
    _check(0 <= d.client_test_fraction < 1, "data.client_test_fraction", d.client_test_fraction,
           "must be in [0, 1)")
    _check(d.train_size >= f.num_clients, "data.train_size", d.train_size,
           f"must be at least federation.num_clients ({f.num_clients})")
    _check(cfg.partition.scheme in ("iid", "dirichlet"), "partition.scheme", cfg.partition.scheme,
           "must be 'iid' or 'dirichlet'")
    _check(cfg.partition.alpha > 0, "partition.alpha", cfg.partition.alpha, "must be > 0")
    _check(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", cfg.model.dtype,
           "must be float32, bfloat16 or float16")
    _check("name" in cfg.strategy or "_target_" in cfg.strategy, "strategy", dict(cfg.strategy),
           "needs a 'name' (built-in) or a '_target_' (your own class)")
    return cfg


def load_config(experiment: str = "default", overrides: list[str] | str | None = None) -> DictConfig:
    """Compose ``configs/<experiment>.yaml`` with Hydra overrides (a list or one string)."""
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    if not (CONFIG_DIR / f"{experiment}.yaml").is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown experiment {experiment!r}; known: {known}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=experiment, overrides=list(overrides or []))
    return validate(cfg)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
