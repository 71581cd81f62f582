"""The experiment configuration: one Hydra schema for `flwr run`, `anther simulate` and the benchmarks.

Experiments are YAML files in ``anther/configs/`` composed over the
structured schema below, so a misspelt key or a wrong type is rejected by Hydra
with the key's name, and :func:`validate` rejects out-of-range values the same way.
This module is the bottom of the package: it imports nothing of anther, so every
layer can read a config. Checks that need a layer above (is this a model family, a data
format, a strategy that averages?) are in :mod:`anther.simulations.experiment`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anther.core.experiment_source import PACKAGE_CONFIGS, ExperimentNotFound, composition

CONFIG_DIR = PACKAGE_CONFIGS
BACKBONE_MODES = ("in_process", "service", "remote")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")  # model.dtype, and embeddings and gradients on the wire
# One byte an element and a float32 scale a row on the wire (anther/backbone/wire.py)
SCALED_WIRE_DTYPES = ("float8_e4m3fn", "float8_e5m2", "int8")
WIRE_DTYPES = (*FLOAT_DTYPES, *SCALED_WIRE_DTYPES)  # backbone.wire_dtype
AUTOCAST_DTYPES = ("none", "bfloat16", "float16")  # model.autocast
TINY_MODEL_MARKER = "anther_tiny.json"  # in every checkpoint anther.model.tiny_model makes: how it was made
QUANTIZATIONS = ("none", "8bit", "4bit")  # the backbone's, through bitsandbytes (anther/backbone/quantization.py)
PRIVACY_ACCOUNTANTS = ("rdp", "prv")  # opacus accountants that compose (noise, rate, steps) histories
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")  # listen on every interface
PARTITION_SCHEMES = ("iid", "dirichlet", "domain", "quantity")  # anther/data/scenarios.py
MODALITY_SCENARIOS = ("full", "missing", "cross", "hybrid")
MODES = ("split", "whole_model")  # docs/whole-model-mode.md
BASELINES = ("none", "zero_shot", "local_only", "centralised")  # anther/simulations/baselines.py
# privacy.client_level.mode: Flower's DP wrappers (anther/strategies/privacy/client_dp.py)
CLIENT_LEVEL_SERVER_MODES = ("server_fixed", "server_adaptive")
CLIENT_LEVEL_CLIENT_MODES = ("client_fixed", "client_adaptive")
CLIENT_LEVEL_MODES = ("off", *CLIENT_LEVEL_SERVER_MODES, *CLIENT_LEVEL_CLIENT_MODES)


def anther_home() -> Path:
    """Where models, data and runs go by default (``$ANTHER_HOME``, else ``~/.cache/anther``)."""
    return Path(os.environ.get("ANTHER_HOME", Path.home() / ".cache" / "anther")).expanduser()


@dataclass
class ModelConfig:
    path: str | None = None  # HF checkpoint directory; None = anther's tiny model (made if missing)
    dtype: str = "float32"
    device: str = "cpu"  # where the backbone service runs the LLM: cpu, cuda, cuda:N
    # where a client runs its NanoEdge (mode=whole_model: the whole MLLM): auto is the GPU the simulation
    # assigned it (federation.client_gpus) or its CUDA_VISIBLE_DEVICES in a deployment, else the CPU
    client_device: str = "auto"
    # compute of the frozen modules (client and backbone) under autocast: none | bfloat16 | float16, where
    # the device supports it; adapters keep fp32 weights and arithmetic (anther/model/placement.py)
    autocast: str = "none"
    # the prompt format: None = the checkpoint's own chat template; a built-in (llava, qwen2_vl, idefics3,
    # plain) or a Jinja file for a checkpoint without one (anther/model/chat_format.py)
    chat_template: str | None = None
    system_prompt: str | None = None  # a system turn at the start of every conversation
    # the client's frozen vision tower and connector: none | int8 (dynamic, CPU; the edge profile,
    # configs/profile/edge.yaml; anther/model/edge_quantization.py)
    vision_quantization: str = "none"
    tiny_family: str = "llava"  # the tiny model's family (anther.model.families); only llava is pretrained
    tiny_seed: int = 0
    tiny_pretrain_steps: int = 2500  # 0 (untrained) or at least TINY_MIN_PRETRAIN_STEPS


@dataclass
class DataConfig:
    path: str | None = None  # data set folder; None = built-in ShapesVQA
    # layout of data.path: anther, scienceqa, iconqa, hateful_memes, crisismmd, vqa_rad, slake, llava
    # (anther/data/formats/registry.py; each loader's module says which files it reads)
    format: str = "anther"
    # the format's name of the split clients train on, and of the server's held-out split; null: the
    # format's own labelled splits (anther/data/formats/registry.py DEFAULT_SPLITS)
    train_split: str | None = None
    test_split: str | None = None
    image_folder: str | None = None  # llava format: the folder its records' image paths are relative to
    multi_image: str = "auto"  # auto: several pictures to families that take them, tiled for others | tile
    # skip malformed records / missing images (and report the count by reason) instead of failing
    skip_bad: bool = False
    # records used of each split: a seeded random sample, stratified by task (null: all; the built-in
    # set generates 4000 and 400)
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    client_test_fraction: float = 0.2
    modality_agnostic_prompt: bool = False  # FedMLLM prompt augmentation
    # a closed question's options are listed in its prompt when it has at most this many (0: never)
    max_listed_options: int = 8


@dataclass
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet (label skew) | domain (one visual domain per client) | quantity
    alpha: float = 0.5  # Dirichlet concentration: of labels (dirichlet) or of client sizes (quantity)
    seed: int = 0  # the split and the scenario's modality drops are deterministic in it


@dataclass
class ScenarioConfig:
    """Modality heterogeneity on top of the partition (FedMLLM's scenarios).

    Named scenarios are the files of ``configs/scenario/`` (``scenario=missing_b30``); each
    sets this section and the partition it builds on. See anther/data/scenarios.py.
    """

    name: str = "iid"
    modality: str = "full"  # full | missing | cross | hybrid
    missing_rate: float = 0.0  # missing: each modality of each sample dropped with this probability (beta)
    image_share: float = 0.5  # cross: share of clients that are image-only (I / (I + T)); the rest text-only
    presence: float = 1.0  # hybrid: each client holds each modality with this probability (p)


@dataclass
class FederationConfig:
    num_clients: int = 10
    rounds: int = 5
    fraction_train: float = 1.0
    min_train_clients: int = 2
    round_timeout_s: float = 1800.0
    client_eval_every: int = 0  # 0 = client-side evaluation after the last round only
    # A round aggregates when at least this many updates passed the checks (docs/reliability.md);
    # with fewer it is skipped: the global adapters stay as they were and the run goes on.
    min_replies: int = 1
    # Reject an update whose norm is more than this many times the round's median (None: off).
    outlier_factor: float | None = 10.0
    # Simulation only: Ray resources per ClientApp (Flower's client-resources-num-cpus / -num-gpus).
    # Clients run at once = CPUs (GPUs) / these; None keeps Flower's default (2 CPUs, no GPU).
    # A ClientApp computes on one torch thread (client/runtime.py), so one CPU each keeps every
    # core busy; Flower's 2 left one of two cores idle while a client waited for the backbone.
    # With a GPU per client half or a quarter of one (0.5, 0.25) packs several on each
    # (docs/performance.md, multi-GPU).
    client_cpus: int | None = 1
    client_gpus: float | None = None


# The tiny model's pretraining stages follow a one-cycle schedule that warms up over a tenth of
# their steps: fewer than this leave it no warm-up step (PyTorch divides by zero).
TINY_MIN_PRETRAIN_STEPS = 20


@dataclass
class TrainConfig:
    """A client's local training each round (anther/client/local_training.py)."""

    local_steps: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # the batch gradient is clipped to this norm (0: not clipped)
    # adamw, adam, sgd, or a mapping: {name: sgd, momentum: 0.9, nesterov: true} or
    # {_target_: torch.optim.RMSprop, ...}; lr and weight_decay above unless it gives its own
    optimizer: Any = "adamw"
    # over a round's local steps: constant, linear, cosine, or {_target_: a torch.optim.lr_scheduler class, ...}
    lr_schedule: Any = "constant"
    warmup_steps: int = 0  # linear warm-up before the schedule
    # where strategies' gradient hooks and regularisers run: before_clipping or after_clipping
    hook_order: str = "before_clipping"


@dataclass
class AdapterConfig:
    rank: int = 16
    alpha: float = 16.0
    activation: str = "gelu"


@dataclass
class LoraConfig:
    """``mode=whole_model`` only: LoRA inside the LLM's decoder, trained on the client (peft), as
    FedMLLM and OpenFedLLM do: by default rank 16 on the attention projections, what
    ``anther model report`` counts for whole-model mode."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class FeatureCacheConfig:
    """Each client's on-disk cache of frozen image features, reused across steps and rounds
    (anther/model/feature_cache.py). Off by default, since it writes to the client's disk; on
    the tiny model it saves 10-22% of round time (docs/performance.md), on a real vision encoder
    more, since the encoder is most of a client's compute."""

    enabled: bool = False
    dir: str | None = None  # None = $ANTHER_HOME/feature-cache
    max_mb: float = 1024.0  # least recently used entries are deleted beyond this


@dataclass
class EvalConfig:
    server_test_size: int = 400  # a seeded random sample of the test split, stratified by task
    generate: bool = True
    max_new_tokens: int | None = None  # null: the longest answer of the set in tokens, plus 2
    batch_size: int = 128


@dataclass
class BackboneConfig:
    """Where the frozen LLM runs and how clients reach it (docs/deployment.md).

    ``in_process``: every client process loads its own copy next to its NanoEdge (no network).
    ``service``: the ServerApp starts the backbone service in a child process and tells the
    clients its address and credentials through the run's config.
    ``remote``: clients and the server's evaluator dial a service already running at ``address``
    (``anther backbone serve``). Per-site credentials go in each SuperNode's ``--node-config``
    (``backbone-token-file``, ``backbone-ca``, ``backbone-cert``, ``backbone-key``,
    ``backbone-address``) and win over the values here.
    """

    mode: str = "in_process"  # in_process | service | remote
    # service: host:port to listen on (None = 127.0.0.1, free port); remote: to dial
    address: str | None = None
    advertise_address: str | None = None  # service: host:port clients dial, if not ``address``
    # embeddings up, gradients down: float32 | bfloat16 | float16 | auto (bfloat16 for a real
    # checkpoint, float32 for anther's tiny model, whose correctness tests are exact), or one byte an
    # element with a float32 scale per token: float8_e4m3fn | float8_e5m2 | int8 (docs/wire.md)
    wire_dtype: str = "auto"
    batching: bool = True
    window_ms: float = 5.0
    max_batch: int = 32  # sequences per batched pass
    # service: sequences x tokens one request, and one batched pass, may hold (bounds a pass's memory);
    # clients send a bigger batch in parts
    max_request_tokens: int = 16384
    # service: calls one client (token) may have in flight; upload MiB all calls may hold at once;
    # seconds a call may send nothing before it is ended (docs/reliability.md, the service's limits)
    max_calls_per_client: int = 16
    max_inflight_mib: int = 1024
    read_timeout_s: float = 60.0
    quantization: str = "none"  # service / remote: none | 8bit | 4bit, bitsandbytes on a CUDA model.device
    # service: backbone processes the ServerApp starts, replica i on devices[i] (default: all on
    # model.device, e.g. [cuda:0, cuda:1]); simulated clients are spread over them by partition id
    replicas: int = 1
    devices: list[str] | None = None
    # host:port of every replica: the ServerApp fills it in for mode=service; for mode=remote, list
    # several running services to spread the clients over them
    replica_addresses: list[str] | None = None
    tls_dir: str | None = None  # service: folder from `anther certs`; None = a fresh CA + token per run
    ca_cert: str | None = None  # CA that signed the service's certificate (enables TLS)
    token_file: str | None = None  # file holding this side's bearer token
    client_cert: str | None = None  # this side's certificate, for a service that requires mutual TLS
    client_key: str | None = None
    server_name: str | None = None  # TLS name to expect when the address does not carry it
    insecure: bool = False  # remote without TLS: only on a network you trust
    startup_timeout_s: float = 300.0  # service: how long the ServerApp waits for it to load
    retry_s: float = 120.0  # service/remote: how long a client retries an unavailable backbone (a restart)
    # keep labels on the client: it computes the LM head and the loss from the backbone's hidden
    # states (anther/client/private_labels.py; cost in docs/what-leaves-a-client.md)
    private_labels: bool = False


@dataclass
class ClientLevelDPConfig:
    """Client-level DP: Flower's DP strategy wrappers (anther/strategies/privacy/client_dp.py; docs/privacy.md).

    ``mode``: off | server_fixed | server_adaptive | client_fixed | client_adaptive. Noise of std
    ``noise_multiplier * clipping_norm / m`` (m = clients sampled per round) goes on the aggregate;
    ``clipping_norm`` is the fixed norm, or the initial one of the adaptive modes.
    """

    mode: str = "off"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    target_clipped_quantile: float = 0.5  # adaptive: the share of updates to clip
    clip_norm_lr: float = 0.2  # adaptive: geometric update rate of the norm
    clipped_count_stddev: float | None = None  # adaptive: noise on the clipped count (None: m / 20)


@dataclass
class SecAggConfig:
    """Secure aggregation with SecAgg+ (anther/strategies/privacy/secure_aggregation.py; docs/privacy.md).

    ``num_shares`` and ``reconstruction_threshold`` in (0, 1] are fractions (of the sampled clients,
    of the shares), above 1 counts. Each client's weighted update is quantised to
    ``quantization_range`` levels over [-clipping_range, clipping_range] and masked modulo
    ``modulus_range``; weights (sample counts) are divided by ``max_weight`` first.
    """

    enabled: bool = False
    # SecAgg+ over two clients protects nothing (each learns the other's update from the sum);
    # rounds with fewer than three are refused unless this is set
    unsafe_allow_two_clients: bool = False
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 8.0
    quantization_range: int = 4194304  # 2**22
    modulus_range: int = 4294967296  # 2**32
    max_weight: float = 1000.0


@dataclass
class PrivacyConfig:
    """Sample-level DP-SGD on each client's NanoAdapters (:mod:`anther.client.dp`).

    Give either ``noise_multiplier`` or ``target_epsilon``: with a target, each client picks the
    smallest noise that keeps its ``federation.rounds * train.local_steps`` steps at its own
    sample rate (``train.batch_size`` / its samples) within (target_epsilon, delta).
    """

    dp: bool = False
    noise_multiplier: float | None = None  # noise std / max_grad_norm
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0  # per-sample clipping bound (replaces train.max_grad_norm)
    accountant: str = "rdp"  # opacus accountant: rdp | prv
    secure_mode: bool = False  # opacus's DPOptimizer noise robust to floating-point attacks (4 draws per value)
    client_level: ClientLevelDPConfig = field(default_factory=ClientLevelDPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str | None = None  # None = $ANTHER_HOME/runs
    run_dir: str | None = None  # the run's exact folder (the benchmark's cells); None = output_dir/<name>-<time>
    # none = federated training with `strategy`; zero_shot | local_only | centralised: that baseline
    # instead, on the same data, scenario and step budget (anther/simulations/baselines.py)
    baseline: str = "none"
    # split: NanoEdge clients train NanoAdapters against the frozen backbone (the default);
    # whole_model: each client holds the whole MLLM and trains LoRA in its LLM (`lora`), nothing exchanged
    mode: str = "split"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    eval: EvalConfig = field(default_factory=EvalConfig)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # copies of every round's metrics, the config and the final adapters, each in its tool's own files
    # in the run folder: any of tensorboard, mlflow, wandb (docs/export.md; pip install "anther[tracking]")
    tracking: list[str] = field(default_factory=list)


ConfigStore.instance().store(name="anther_schema", node=ExperimentConfig)


TRACKING_BACKENDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> module


class ConfigError(ValueError):
    """An experiment config value is out of range; the message names the key."""


def check(ok: bool, key: str, value: object, need: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is invalid: {need}")


# Values that were renamed, by key: old value -> new. A new config with an old value is refused
# with the new name; an earlier run's config.yaml is read with the new one (read_run_config).
RENAMED_VALUES = {
    "mode": {"local": "whole_model"},  # the whole MLLM on the client
    "backbone.mode": {"local": "in_process"},  # the frozen LLM in the client's own process
}


def validate(cfg: DictConfig) -> DictConfig:
    """Range checks Hydra's types cannot express."""
    for key, renamed in RENAMED_VALUES.items():
        old = OmegaConf.select(cfg, key)
        check(old not in renamed, key, old, f"was renamed: use {key}={renamed.get(old)}")
    f, t, d = cfg.federation, cfg.train, cfg.data
    check(f.num_clients >= 1, "federation.num_clients", f.num_clients, "must be >= 1")
    check(f.rounds >= 1, "federation.rounds", f.rounds, "must be >= 1")
    check(0 < f.fraction_train <= 1, "federation.fraction_train", f.fraction_train, "must be in (0, 1]")
    check(1 <= f.min_train_clients <= f.num_clients, "federation.min_train_clients", f.min_train_clients,
          f"must be in [1, federation.num_clients={f.num_clients}]")
    check(1 <= f.min_replies <= f.num_clients, "federation.min_replies", f.min_replies,
          f"must be in [1, federation.num_clients={f.num_clients}]")
    check(f.outlier_factor is None or f.outlier_factor > 1, "federation.outlier_factor", f.outlier_factor,
          "must be > 1 (a multiple of the round's median update norm), or null to turn the check off")
    for key in ("client_cpus", "client_gpus"):
        check(f[key] is None or f[key] >= 0, f"federation.{key}", f[key], "must be >= 0 (or null)")
    check(f.client_cpus != 0, "federation.client_cpus", f.client_cpus, "must be > 0 (or null)")
    check(t.local_steps >= 1, "train.local_steps", t.local_steps, "must be >= 1")
    check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    check(cfg.adapter.rank >= 1, "adapter.rank", cfg.adapter.rank, "must be >= 1")
    check(0 <= d.client_test_fraction < 1, "data.client_test_fraction", d.client_test_fraction,
          "must be in [0, 1)")
    check(d.train_size is None or d.train_size >= f.num_clients, "data.train_size", d.train_size,
          f"must be at least federation.num_clients ({f.num_clients}), or null for all")
    check(d.test_size is None or d.test_size >= 1, "data.test_size", d.test_size, "must be >= 1, or null for all")
    check(d.multi_image in ("auto", "tile"), "data.multi_image", d.multi_image, "must be auto or tile")
    e = cfg.eval
    check(e.max_new_tokens is None or e.max_new_tokens >= 1, "eval.max_new_tokens", e.max_new_tokens,
          "must be >= 1, or null (the longest answer, plus 2)")
    check(e.server_test_size >= 0, "eval.server_test_size", e.server_test_size,
          "must be >= 0 (0: no server evaluation)")
    check(cfg.partition.scheme in PARTITION_SCHEMES, "partition.scheme", cfg.partition.scheme,
          f"must be one of {', '.join(PARTITION_SCHEMES)}")
    check(cfg.partition.alpha > 0, "partition.alpha", cfg.partition.alpha, "must be > 0")
    _validate_scenario(cfg.scenario)
    check(cfg.model.dtype in FLOAT_DTYPES, "model.dtype", cfg.model.dtype, f"must be one of {', '.join(FLOAT_DTYPES)}")
    check(cfg.model.autocast in AUTOCAST_DTYPES, "model.autocast", cfg.model.autocast,
          f"must be one of {', '.join(AUTOCAST_DTYPES)}")
    check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.model.client_device) is not None, "model.client_device",
          cfg.model.client_device, "must be auto, cpu, cuda or cuda:N")
    steps = cfg.model.tiny_pretrain_steps
    check(steps == 0 or steps >= TINY_MIN_PRETRAIN_STEPS, "model.tiny_pretrain_steps", steps,
          f"must be 0 (untrained) or >= {TINY_MIN_PRETRAIN_STEPS}")
    _validate_vision_quantization(cfg.model)
    check(d.max_listed_options >= 0, "data.max_listed_options", d.max_listed_options, "must be >= 0")
    check(cfg.feature_cache.max_mb > 0, "feature_cache.max_mb", cfg.feature_cache.max_mb, "must be > 0")
    _validate_backbone(cfg.backbone)
    _validate_privacy(cfg.privacy, cfg.strategy)
    _validate_client_level(cfg)
    _validate_secagg(cfg)
    check(cfg.baseline in BASELINES, "baseline", cfg.baseline, f"must be one of {', '.join(BASELINES)}")
    _validate_tracking(list(cfg.tracking))
    _validate_mode(cfg)
    check("name" in cfg.strategy or "_target_" in cfg.strategy, "strategy", dict(cfg.strategy),
          "needs a 'name' (built-in) or a '_target_' (your own class)")
    return cfg


# what a client in mode=whole_model cannot do, and why: (key, bad value, reason)
LOCAL_MODE_EXCLUDES = (
    ("backbone.mode", ("service", "remote"),
     "the client holds the whole model, so there is no backbone to serve; set backbone.mode=in_process"),
    ("privacy.dp", (True,), "DP-SGD clips per-sample gradients of the NanoAdapters, not of LoRA in the LLM"),
    ("backbone.private_labels", (True,), "the labels never leave a client that holds the whole model"),
    ("strategy.name", ("hetero_rank", "personalised"), "that strategy works on NanoAdapters"),
)


def _validate_tracking(names: list[str]) -> None:
    for name in names:
        check(name in TRACKING_BACKENDS, "tracking", names, f"each must be one of {', '.join(TRACKING_BACKENDS)}")
    missing = [n for n in names if importlib.util.find_spec(TRACKING_BACKENDS[n]) is None]
    check(not missing, "tracking", names, f"needs {', '.join(missing)} installed: pip install \"anther[tracking]\"")


def _validate_vision_quantization(m: DictConfig) -> None:
    check(m.vision_quantization in ("none", "int8"), "model.vision_quantization", m.vision_quantization,
          "must be none or int8")
    if m.vision_quantization == "int8":
        check(m.client_device == "cpu", "model.client_device", m.client_device,
              "must be cpu with model.vision_quantization=int8 (dynamic int8 kernels are the CPU's)")
        check(m.dtype == "float32", "model.dtype", m.dtype,
              "must be float32 with model.vision_quantization=int8 (it quantises fp32 weights)")


def _validate_mode(cfg: DictConfig) -> None:
    check(cfg.mode in MODES, "mode", cfg.mode, f"must be one of {', '.join(MODES)}")
    if cfg.mode != "whole_model":
        return
    lora = cfg.lora
    check(lora.rank >= 1, "lora.rank", lora.rank, "must be >= 1")
    check(0 <= lora.dropout < 1, "lora.dropout", lora.dropout, "must be in [0, 1)")
    check(len(lora.target_modules) > 0, "lora.target_modules", list(lora.target_modules),
          "must name at least one module of the LLM (e.g. q_proj)")
    for key, bad, reason in LOCAL_MODE_EXCLUDES:
        value = OmegaConf.select(cfg, key)
        check(value not in bad, key, value, f"cannot go with mode=whole_model: {reason}")


def wire_dtype(cfg: DictConfig) -> str:
    """``backbone.wire_dtype`` with ``auto`` resolved: bfloat16 for a real checkpoint (half the bytes
    of float32, the precision its activations have anyway), float32 for anther's tiny model (made for
    this run, or given by ``model.path``), whose split is tested exact."""
    chosen = cfg.backbone.wire_dtype
    if chosen != "auto":
        return chosen
    tiny = cfg.model.path is None or (Path(cfg.model.path).expanduser() / TINY_MODEL_MARKER).is_file()
    return "float32" if tiny else "bfloat16"


def simulation_resources(f: DictConfig) -> dict[str, str]:
    """``flwr run --federation-config`` keys for the Ray resources of each ClientApp."""
    keys = {"client_cpus": "client-resources-num-cpus", "client_gpus": "client-resources-num-gpus"}
    return {flag: str(f[key]) for key, flag in keys.items() if f[key] is not None}


def clients_per_round(f: DictConfig, available: int) -> int:
    """How many clients a round trains: ``fraction_train`` of those available, at least
    ``min_train_clients``, at most all of them."""
    return min(available, max(f.min_train_clients, round(f.fraction_train * available)))


def sampled_per_round(federation: DictConfig) -> int:
    """How many clients the round loop samples each round (``m``): the DP noise's divisor."""
    return clients_per_round(federation, int(federation.num_clients))


def _validate_scenario(s: DictConfig) -> None:
    check(s.modality in MODALITY_SCENARIOS, "scenario.modality", s.modality,
          f"must be one of {', '.join(MODALITY_SCENARIOS)}")
    for key in ("missing_rate", "image_share", "presence"):
        check(0 <= s[key] <= 1, f"scenario.{key}", s[key], "must be in [0, 1]")


def _validate_backbone(b: DictConfig) -> None:
    check(b.mode in BACKBONE_MODES, "backbone.mode", b.mode, f"must be one of {', '.join(BACKBONE_MODES)}")
    check(b.wire_dtype in (*WIRE_DTYPES, "auto"), "backbone.wire_dtype", b.wire_dtype,
          f"must be auto or one of {', '.join(FLOAT_DTYPES)}")
    check(b.window_ms >= 0, "backbone.window_ms", b.window_ms, "must be >= 0")
    check(b.max_batch >= 1, "backbone.max_batch", b.max_batch, "must be >= 1")
    check(b.max_request_tokens >= 1, "backbone.max_request_tokens", b.max_request_tokens, "must be >= 1")
    check(b.max_calls_per_client >= 1, "backbone.max_calls_per_client", b.max_calls_per_client, "must be >= 1")
    check(b.max_inflight_mib >= 256, "backbone.max_inflight_mib", b.max_inflight_mib,
          "must be >= 256 (one request may hold up to 256 MiB)")
    check(b.read_timeout_s > 0, "backbone.read_timeout_s", b.read_timeout_s, "must be > 0")
    check(b.replicas >= 1, "backbone.replicas", b.replicas, "must be >= 1")
    check(b.replicas == 1 or b.mode == "service", "backbone.replicas", b.replicas,
          "more than 1 needs backbone.mode=service (the ServerApp starts the replicas)")
    check(not b.replica_addresses or all(_is_host_port(a) for a in b.replica_addresses),
          "backbone.replica_addresses", b.replica_addresses, "must be a list of host:port")
    check(b.devices is None or len(b.devices) == b.replicas, "backbone.devices", b.devices,
          f"must name one device per replica (backbone.replicas={b.replicas})")
    check(b.quantization in QUANTIZATIONS, "backbone.quantization", b.quantization,
          f"must be one of {', '.join(QUANTIZATIONS)}")
    check(b.quantization == "none" or b.mode != "in_process", "backbone.quantization", b.quantization,
          "needs backbone.mode=service or remote: an in-process backbone shares its weights with the NanoEdge")
    check(b.startup_timeout_s > 0, "backbone.startup_timeout_s", b.startup_timeout_s, "must be > 0")
    check(b.retry_s >= 0, "backbone.retry_s", b.retry_s, "must be >= 0")
    for key in ("address", "advertise_address"):
        check(b[key] is None or _is_host_port(b[key]), f"backbone.{key}", b[key], "must be host:port")
    listens_everywhere = b.address is not None and split_address(b.address)[0] in WILDCARD_HOSTS
    check(not (b.mode == "service" and listens_everywhere and b.advertise_address is None),
          "backbone.advertise_address", b.advertise_address,
          f"must say which host:port clients dial when the service listens on {b.address}")
    check(b.mode != "remote" or b.address is not None, "backbone.address", b.address,
          "must be set (host:port of a running `anther backbone serve`) when backbone.mode=remote")
    check(b.mode != "remote" or b.insecure or b.ca_cert is not None, "backbone.ca_cert", b.ca_cert,
          "must name the CA that signed the service's certificate when backbone.mode=remote "
          "(or set backbone.insecure=true on a network you trust)")
    check((b.client_cert is None) == (b.client_key is None), "backbone.client_key", b.client_key,
          "backbone.client_cert and backbone.client_key go together")


def _validate_client_level(cfg: DictConfig) -> None:
    c = cfg.privacy.client_level
    check(c.mode in CLIENT_LEVEL_MODES, "privacy.client_level.mode", c.mode,
          f"must be one of {', '.join(CLIENT_LEVEL_MODES)}")
    if c.mode == "off":
        return
    check(c.noise_multiplier >= 0, "privacy.client_level.noise_multiplier", c.noise_multiplier, "must be >= 0")
    check(c.clipping_norm > 0, "privacy.client_level.clipping_norm", c.clipping_norm, "must be > 0")
    check(0 <= c.target_clipped_quantile <= 1, "privacy.client_level.target_clipped_quantile",
          c.target_clipped_quantile, "must be in [0, 1]")
    check(c.clip_norm_lr > 0, "privacy.client_level.clip_norm_lr", c.clip_norm_lr, "must be > 0")
    check(0 < cfg.privacy.delta < 1, "privacy.delta", cfg.privacy.delta, "must be in (0, 1)")
    check(not (cfg.privacy.secagg.enabled and c.mode in CLIENT_LEVEL_SERVER_MODES), "privacy.client_level.mode", c.mode,
          "cannot clip on the server under privacy.secagg.enabled=true (the server never sees an "
          "update); use client_fixed or client_adaptive")
    if c.mode.endswith("adaptive") and c.noise_multiplier > 0:
        m = sampled_per_round(cfg.federation)
        stddev = m / 20 if c.clipped_count_stddev is None else c.clipped_count_stddev
        check(c.noise_multiplier < 2 * stddev, "privacy.client_level.clipped_count_stddev", c.clipped_count_stddev,
              f"must exceed noise_multiplier / 2 = {c.noise_multiplier / 2} (default: {m} sampled clients / 20): "
              "adaptive clipping spends part of the noise on the clipped count")


def _validate_secagg(cfg: DictConfig) -> None:
    s = cfg.privacy.secagg
    if not s.enabled:
        return
    m = sampled_per_round(cfg.federation)
    least = 2 if s.unsafe_allow_two_clients else 3
    check(m >= least, "federation.min_train_clients", cfg.federation.min_train_clients,
          f"secure aggregation needs at least {least} clients per round, this run samples {m}"
          + ("" if least == 2 else " (with two, each client learns the other's update from the sum; "
                                   "privacy.secagg.unsafe_allow_two_clients=true allows it anyway)"))
    for key in ("num_shares", "reconstruction_threshold"):
        v = s[key]
        check(0 < v <= 1 or float(v).is_integer(), f"privacy.secagg.{key}", v,
              "must be a fraction in (0, 1] or a whole count")
    check(s.num_shares <= 1 or s.num_shares > 2, "privacy.secagg.num_shares", s.num_shares,
          "as a count must be > 2 (or a fraction)")
    check(s.clipping_range > 0, "privacy.secagg.clipping_range", s.clipping_range, "must be > 0")
    check(s.max_weight > 0, "privacy.secagg.max_weight", s.max_weight, "must be > 0")
    check(s.modulus_range > 0 and s.modulus_range & (s.modulus_range - 1) == 0 and s.modulus_range <= 2**32,
          "privacy.secagg.modulus_range", s.modulus_range, "must be a power of 2, at most 2**32")
    check(0 < s.quantization_range and m * s.quantization_range < s.modulus_range,
          "privacy.secagg.quantization_range", s.quantization_range,
          f"times the {m} clients summed per round must stay below privacy.secagg.modulus_range="
          f"{s.modulus_range} (or the sum wraps around)")


def _validate_privacy(p: DictConfig, strategy: DictConfig) -> None:
    if not p.dp:
        return
    check(strategy.get("name") != "fisher", "privacy.dp", p.dp,
          "cannot go with strategy.name=fisher: each client would send a Fisher computed from its "
          "data without DP noise")
    check((p.noise_multiplier is None) != (p.target_epsilon is None), "privacy.noise_multiplier",
          p.noise_multiplier, f"give exactly one of privacy.noise_multiplier and privacy.target_epsilon "
          f"(target_epsilon={p.target_epsilon}) when privacy.dp=true")
    check(p.noise_multiplier is None or p.noise_multiplier >= 0, "privacy.noise_multiplier",
          p.noise_multiplier, "must be >= 0")
    check(p.target_epsilon is None or p.target_epsilon > 0, "privacy.target_epsilon", p.target_epsilon,
          "must be > 0")
    check(0 < p.delta < 1, "privacy.delta", p.delta, "must be in (0, 1)")
    check(p.max_grad_norm > 0, "privacy.max_grad_norm", p.max_grad_norm, "must be > 0")
    check(p.accountant in PRIVACY_ACCOUNTANTS, "privacy.accountant", p.accountant,
          f"must be one of {', '.join(PRIVACY_ACCOUNTANTS)}")
    check(p.accountant != "prv" or p.noise_multiplier != 0, "privacy.noise_multiplier", p.noise_multiplier,
          "must be > 0 with privacy.accountant=prv (no noise is no privacy: epsilon is infinite, "
          "which only the rdp accountant reports)")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); IPv6 hosts keep their brackets (``[::1]:50051``)."""
    host, _, port = address.rpartition(":")
    return host, int(port)


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536


def compose_experiment(experiment: str = "default", overrides: list[str] | str | None = None,
                       config_dir: str | Path | None = None) -> DictConfig:
    """Compose an experiment (a name in ``config_dir`` or the package's configs, or a YAML file:
    :mod:`anther.core.experiment_source`) with Hydra overrides (a list or one string), checked
    against the schema and its ranges. Names that the layers above define (model families, data
    formats, strategies) are checked by :func:`anther.simulations.experiment.load_config`."""
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    try:
        with composition(experiment, config_dir) as source, \
                initialize_config_dir(config_dir=str(source.primary_dir), version_base="1.3"):
            cfg = compose(config_name=source.name, overrides=[*(overrides or []), source.searchpath_override()])
    except ExperimentNotFound as e:
        raise ConfigError(str(e)) from None
    except (HydraException, OmegaConfBaseException) as e:  # a typo, a bad type: one line, never a traceback
        raise ConfigError(_hydra_message(e)) from None
    check_known_keys(cfg)
    return validate(cfg)


# Sections whose keys are their own class's constructor arguments, not the schema's.
FREE_FORM_SECTIONS = frozenset({"strategy", "train.optimizer", "train.lr_schedule"})


def _schema_keys(node: Any = None, prefix: str = "") -> set[str]:
    """Every dotted key of the schema (a free-form section's, such as ``strategy``'s, are its own)."""
    node = OmegaConf.structured(ExperimentConfig) if node is None else node
    keys = set()
    for key, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else ():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, DictConfig) and dotted not in FREE_FORM_SECTIONS:
            keys |= _schema_keys(value, dotted + ".")
    return keys


@functools.cache
def _known_keys() -> frozenset[str]:
    """The schema's own dotted keys, walked once."""
    return frozenset(_schema_keys())


def _closest(key: str) -> str:
    """", did you mean 'x'?" for the schema key nearest to ``key``, or nothing."""
    near = difflib.get_close_matches(key, sorted(_known_keys()), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse a key the schema does not have (Hydra accepts a ``+key`` that matches no field and it
    would be silently ignored), naming the closest one."""
    unknown = sorted(_schema_keys(cfg) - _known_keys() - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}{_closest(unknown[0])}"
                          + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))


def _hydra_message(error: Exception) -> str:
    """Hydra's or OmegaConf's complaint in one line, naming the key: an unknown key with the closest
    known one (Hydra's own hint, to add it with ``+``, would be accepted and then ignored), a value
    of the wrong type with the key and the type, a config group option that does not exist with
    the options there are."""
    text = str(error)
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    full_key = re.search(r"full_key: (\S+)", str(cause))
    overridden = re.search(r"Could not override '([^']+)'", text)
    if overridden or re.search(r"Key '[^']+' (?:is not in struct|not in)", str(cause)):
        key = overridden.group(1) if overridden else full_key.group(1) if full_key else "?"
        return f"unknown config key {key!r}{_closest(key)}"
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if full_key:
        return f"config value {full_key.group(1)}: {first}"
    group = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if group:
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], re.MULTILINE)
        return f"{group.group(1)}={group.group(2)} does not exist; one of: {', '.join(options)}"
    return f"config: {first}"


def read_saved_config(path: Path | str) -> DictConfig:
    """A ``config.yaml`` anther wrote (a run's, an export's) on today's schema: keys added since it
    was written take their defaults, a value renamed since (:data:`RENAMED_VALUES`) its new name."""
    path = Path(path).expanduser()
    saved = OmegaConf.load(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), saved)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_hydra_message(e)}") from None
    if "strategy" in saved:  # free-form: the run's own section, not merged into the default {name: fedavg}
        cfg.strategy = saved.strategy
    for key, renamed in RENAMED_VALUES.items():
        old = OmegaConf.select(cfg, key)
        if old in renamed:
            OmegaConf.update(cfg, key, renamed[old])
    return cfg


def read_run_config(run_dir: Path | str) -> DictConfig:
    """The config of an earlier run, from its ``config.yaml``, pointed at that same folder
    (``run_dir``): what ``--resume RUN_DIR`` continues with, older runs as they were
    (:func:`read_saved_config`)."""
    path = Path(run_dir).expanduser() / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume: {path} does not exist; give the folder of an earlier run "
                          "(it holds config.yaml, result.json and checkpoints/)")
    try:
        cfg = read_saved_config(path)
    except ConfigError as e:
        raise ConfigError(f"resume: {e}") from None
    cfg.run_dir = str(path.parent.resolve())
    return validate(cfg)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
