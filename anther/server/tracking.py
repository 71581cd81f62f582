"""Experiment tracking: a run's config, rounds and final adapters in TensorBoard, MLflow or W&B.

``tracking=[tensorboard, mlflow, wandb]`` (any subset; none by default) logs, with each library's
own API and nothing that needs a network, into the run folder:

- ``tensorboard/``: event files (``tensorboard --logdir RUN_DIR/tensorboard``), every numeric
  round metric as a scalar by round, the config as text;
- ``mlruns/``: an MLflow file store (``mlflow ui --backend-store-uri RUN_DIR/mlruns``), the config
  as parameters, the metrics by round, ``result.json`` and the final adapters as artifacts;
- ``wandb/``: a W&B offline run (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it), the
  config, the metrics by round, the final adapters as an artifact.

``result.json`` stays the record; a tracker is a copy for the tools researchers compare runs in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf


class Tracker(Protocol):
    def log_round(self, record: Mapping[str, Any]) -> None: ...

    def finish(self, result_file: Path, adapters_file: Path | None) -> None: ...


def numeric(record: Mapping[str, Any]) -> dict[str, float]:
    """The round record's numbers (metrics, traffic, epsilon), not its lists and names."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"}


def flat_config(cfg: DictConfig) -> dict[str, str]:
    """The config as ``section.key: value`` strings (MLflow parameters)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)[:500]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


class TensorBoardTracker:
    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")

    def log_round(self, record: Mapping[str, Any]) -> None:
        for key, value in numeric(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["round"]))
        self.writer.flush()

    def finish(self, result_file: Path, adapters_file: Path | None) -> None:
        if adapters_file is not None:
            self.writer.add_text("final_adapters", str(adapters_file))
        self.writer.close()


class MlflowTracker:
    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(str(cfg.name))
        self.run = mlflow.start_run(run_name=run_dir.name)
        params = flat_config(cfg)
        keys = list(params)
        for i in range(0, len(keys), 100):  # MLflow takes at most 100 parameters a call
            mlflow.log_params({k: params[k] for k in keys[i:i + 100]})

    def log_round(self, record: Mapping[str, Any]) -> None:
        metrics = {k.replace("/", "."): v for k, v in numeric(record).items()}
        self.mlflow.log_metrics(metrics, step=int(record["round"]))

    def finish(self, result_file: Path, adapters_file: Path | None) -> None:
        self.mlflow.log_artifact(str(result_file))
        if adapters_file is not None:
            self.mlflow.log_artifact(str(adapters_file), artifact_path="adapters")
        self.mlflow.end_run()


class WandbTracker:
    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="anther", name=run_dir.name, dir=str(run_dir), mode="offline",
                              config=OmegaConf.to_container(cfg, resolve=True), reinit=True)

    def log_round(self, record: Mapping[str, Any]) -> None:
        self.run.log(numeric(record), step=int(record["round"]))

    def finish(self, result_file: Path, adapters_file: Path | None) -> None:
        if adapters_file is not None:
            artifact = self.wandb.Artifact("final-adapters", type="model")
            artifact.add_file(str(adapters_file))
            self.run.log_artifact(artifact)
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def trackers_for(cfg: DictConfig, run_dir: Path) -> list[Tracker]:
    """One tracker per name in ``cfg.tracking``."""
    return [TRACKERS[name](cfg, run_dir) for name in cfg.get("tracking") or []]
