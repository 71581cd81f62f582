"""An experiment's config, checked whole before anything starts.

The core (:mod:`anther.core.config`) composes the Hydra config and checks every value it can
judge on its own. Whether ``model.tiny_family`` names a model family, ``data.format`` a data
set's layout, and whether the strategy can go with client-level DP or SecAgg+, only the model,
data and strategies layers know: this module asks them. Every command that starts a run
(``anther simulate``, the ServerApp, the benchmarks) loads its config here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from anther.client.local_training import LocalTraining
from anther.core.config import ConfigError, check, compose_experiment, read_run_config
from anther.data.formats.registry import FORMATS
from anther.model.chat_format import template_problem
from anther.model.families import FAMILIES
from anther.strategies.registry import STRATEGIES, build_strategy, strategy_class
from anther.strategies.weighted_mean import is_weighted_mean


def load_config(experiment: str = "default", overrides: list[str] | str | None = None,
                config_dir: str | Path | None = None) -> DictConfig:
    """Compose an experiment (a name in ``config_dir`` or ``anther/configs``, or a YAML file's path) with
    Hydra overrides (a list or one string) and check it."""
    return check_names(compose_experiment(experiment, overrides, config_dir))


def load_run_config(run_dir: Path | str) -> DictConfig:
    """The config of an earlier run, from its ``config.yaml``, pointed at that same folder
    (``run_dir``): what ``--resume RUN_DIR`` continues with."""
    return check_names(read_run_config(run_dir))


def check_names(cfg: DictConfig) -> DictConfig:
    """Refuse names no layer defines, and a strategy that cannot carry the run's privacy settings."""
    check(cfg.data.format in FORMATS, "data.format", cfg.data.format, f"must be one of {', '.join(FORMATS)}")
    families = sorted(FAMILIES)
    check(cfg.model.tiny_family in families, "model.tiny_family", cfg.model.tiny_family,
          f"must be one of {', '.join(families)}")
    check(cfg.model.tiny_family == "llava" or cfg.model.tiny_pretrain_steps == 0 or cfg.model.path,
          "model.tiny_pretrain_steps", cfg.model.tiny_pretrain_steps,
          f"must be 0 for model.tiny_family={cfg.model.tiny_family} (the pretraining recipe is LLaVA's)")
    problem = template_problem(cfg.model.chat_template, cfg.model.path)
    check(problem is None, "model.chat_template", cfg.model.chat_template, problem or "")
    _check_local_training(cfg.train)  # first: a strategy may ask what the optimiser is
    _check_strategy(cfg)
    if cfg.privacy.client_level.mode != "off":
        _check_weighted_mean(cfg.strategy, "privacy.client_level.mode", cfg.privacy.client_level.mode)
    if cfg.privacy.secagg.enabled:
        _check_weighted_mean(cfg.strategy, "privacy.secagg.enabled", cfg.privacy.secagg.enabled)
    return cfg


def _check_weighted_mean(strategy: DictConfig, key: str, value: object) -> None:
    """A built-in strategy named in ``strategy.name`` must aggregate by a weighted mean for DP
    wrappers and SecAgg+ (``_target_`` strategies are checked when the run builds them)."""
    name = strategy.get("name")
    check(name not in STRATEGIES or is_weighted_mean(strategy_class(strategy)), key, value,
          f"cannot go with strategy.name={name}: it does not aggregate by a weighted mean of the "
          "adapters (its clients send data-dependent extras, or it needs each client's own update)")


def _check_local_training(train: DictConfig) -> None:
    """Check the optimiser and schedule, building them once over a dummy weight unless they are
    built-ins named by a string, so a bad name, class or keyword stops the run here and PyTorch
    (over a second of CPU) is imported only when a class must be built."""
    training = LocalTraining.from_config(train)
    try:
        training.check()
        if not training.names_builtins:
            from anther.client.local_optimiser import build_trial  # PyTorch, only to build a class

            build_trial(training)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config value {e}") from None


def _check_strategy(cfg: DictConfig) -> None:
    """Build the strategy once, here, so that an unknown name, a class that cannot be imported or a
    constructor argument it does not take is refused before anything starts; a strategy with a
    ``check_experiment(cfg) -> str | None`` method says what else it needs of the experiment."""
    spec = OmegaConf.to_container(cfg.strategy, resolve=True)
    try:
        built = build_strategy(spec)
    except Exception as e:  # noqa: BLE001 - whatever the class raises, it is the config's mistake
        reason = " ".join(str(e).split())
        raise ConfigError(f"config value strategy={spec} cannot be built: {type(e).__name__}: {reason}") from None
    check_experiment = getattr(built, "check_experiment", None)  # a strategy's own demands on the rest
    problem = check_experiment(cfg) if callable(check_experiment) else None
    check(problem is None, "strategy", spec, problem or "")
