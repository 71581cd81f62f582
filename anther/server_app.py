"""The Flower ServerApp: prepares model and data, then runs the federated rounds.

The run config carries only the Hydra experiment name and overrides
(``[tool.flwr.app.config]`` in pyproject.toml), so ``flwr run .``, ``anther simulate``
and the benchmarks all name experiments the same way. With ``backbone.mode=service`` the
ServerApp also starts the backbone service for the run's lifetime; the config it sends
to every client then says where the service listens and how to check and use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid
from omegaconf import DictConfig

from anther.backbone.supervisor import backbone_for_run
from anther.core import protocol
from anther.server.federated_run import FederatedRun
from anther.server.run_folder import record_failure, run_folder
from anther.simulations.assets import prepare_assets
from anther.simulations.baselines import initial_adapters, run_baseline
from anther.simulations.client_processes import replace_dead_client_processes
from anther.simulations.experiment import load_config, load_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    resume = str(context.run_config.get(protocol.RUN_RESUME, ""))  # an earlier run's folder to continue
    cfg = experiment_of(context.run_config)
    cfg.run_dir = str(run_folder(cfg))  # fixed now, so that a failure from here on is recorded there
    if isinstance(grid, InMemoryGrid):  # a simulation: the ClientApps run in this process's Ray actors
        replace_dead_client_processes()
    try:
        _run(grid, cfg, resume=bool(resume))
    except BaseException as e:
        record_failure(Path(cfg.run_dir), e)
        raise


def experiment_of(run_config: Mapping[str, Any]) -> DictConfig:
    """The experiment ``flwr run --run-config`` names: an earlier run's own config when resuming, else
    ``experiment`` (a name, or a YAML file's path) with ``overrides``, looked up in ``config-dir`` too."""
    resume = str(run_config.get(protocol.RUN_RESUME, ""))
    if resume:
        return load_run_config(resume)
    return load_config(str(run_config[protocol.RUN_EXPERIMENT]), str(run_config.get(protocol.RUN_OVERRIDES, "")),
                       str(run_config.get(protocol.RUN_CONFIG_DIR, "")) or None)


def _run(grid: Grid, experiment: DictConfig, resume: bool) -> None:
    prepared = prepare_assets(experiment)
    with backbone_for_run(prepared) as cfg:
        if cfg.baseline != "none":  # nothing to federate: the baseline runs here and calls no client
            run_baseline(cfg)
            return
        # the run folder keeps the config without the service's one-off address and credentials
        run = FederatedRun(cfg, grid, cfg.data.path, resume=resume, recorded=prepared)
        print(f"anther: run folder {run.run_dir}", flush=True)
        run.execute(ArrayRecord(initial_adapters(cfg, run.evaluator.runtime.edge)))
    print(f"anther: finished; result.json and plots in {run.run_dir}", flush=True)
