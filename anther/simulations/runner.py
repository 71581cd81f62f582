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

from anther.server.backbone_process import backbone_for_run
from anther.simulations.assets import prepare_assets
from anther.simulations.baselines import run_baseline
from anther.simulations.config import load_config
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
            return submit_run(superlink(), experiment, resolved, cfg.federation.num_clients, log=log)
        return flwr_run(experiment, resolved, cfg.federation.num_clients, log=log)
    with contextlib.ExitStack() as stack:
        if log is not None:
            out = stack.enter_context(log.open("a"))
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        served = stack.enter_context(backbone_for_run(cfg))
        run_baseline(served)
    return 0
