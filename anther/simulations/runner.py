"""Run one experiment by its config name and overrides: what ``anther simulate`` and each cell of
``anther bench`` do.

Federated experiments go through ``flwr run`` on a private SuperLink
(:mod:`anther.simulations.launcher`); baselines (``baseline=zero_shot|local_only|centralised``)
have no federation to run, so they run in this process, with the backbone service started for
them when ``backbone.mode=service``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from anther.backbone.supervisor import backbone_for_run
from anther.core.config import ConfigError, simulation_resources
from anther.simulations.assets import prepare_assets
from anther.simulations.baselines import run_baseline
from anther.simulations.experiment import load_config, load_run_config
from anther.simulations.launcher import flwr_run, submit_run


def simulate(experiment: str, overrides: list[str], log: Path | None = None,
             superlink: Callable[[], dict[str, str]] | None = None) -> int:
    """Run the experiment; 0 on success, else the failing process's exit code. With ``log``,
    everything the run prints goes to that file instead of the terminal. ``superlink`` gives the
    environment of a running SuperLink to submit a federated run to (the benchmark shares one
    across its cells); without it the run gets a private one."""
    cfg = prepare_assets(load_config(experiment, overrides))  # fail fast, make assets here, once
    if cfg.baseline == "none":
        resolved = [*overrides, f"model.path={cfg.model.path}", f"data.path={cfg.data.path}"]
        if superlink is not None:
            return submit_run(superlink(), experiment, resolved, cfg.federation.num_clients,
                              extra_federation_config=simulation_resources(cfg.federation), log=log)
        return flwr_run(experiment, resolved, cfg.federation.num_clients,
                        extra_federation_config=simulation_resources(cfg.federation), log=log)
    with contextlib.ExitStack() as stack:
        if log is not None:
            out = stack.enter_context(log.open("a"))
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        served = stack.enter_context(backbone_for_run(cfg))
        run_baseline(served)
    return 0


def resume(run_dir: Path, log: Path | None = None) -> int:
    """Continue the federated run in ``run_dir`` from its last complete checkpoint, with the config
    it was started with (its ``config.yaml``), into that same folder (docs/reliability.md)."""
    cfg = prepare_assets(load_run_config(run_dir))
    if cfg.baseline != "none":
        raise ConfigError(f"{run_dir} is a baseline run (baseline={cfg.baseline}); only federated runs "
                          "checkpoint rounds and can be resumed")
    return flwr_run("default", [], cfg.federation.num_clients, log=log, resume=cfg.run_dir,
                    extra_federation_config=simulation_resources(cfg.federation))
