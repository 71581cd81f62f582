"""Run one experiment by its config name and overrides: what ``anther simulate`` and each cell of
``anther bench`` do.

Federated experiments go through ``flwr run`` on a private SuperLink
(:mod:`anther.simulations.launcher`); baselines (``baseline=zero_shot|local_only|centralised``)
have no federation to run, so they run in this process, with the backbone service started for
them when ``backbone.mode=service``.

How a run ended is read from its folder, not from ``flwr run``'s exit code (which is 0 even when
the ServerApp fails): a run that did not finish raises :class:`RunFailed` with the cause the
run recorded, so ``anther simulate`` exits non-zero and says why in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from anther.backbone.supervisor import backbone_for_run
from anther.core.config import ConfigError, simulation_resources
from anther.core.errors import RunFailed
from anther.core.experiment_source import is_path
from anther.data.client_data import check_partitions
from anther.server.run_folder import check_writable, failure_of, record_failure, run_folder
from anther.simulations.assets import prepare_assets
from anther.simulations.console import FLOWER_LOG, Console
from anther.simulations.experiment import load_config, load_run_config
from anther.simulations.launcher import flwr_run, submit_run


def simulate(experiment: str, overrides: list[str], log: Path | None = None,
             superlink: Callable[[], dict[str, str]] | None = None, verbose: bool = False,
             config_dir: str | None = None) -> int:
    """Run the experiment; 0 once its folder says it finished, else :class:`RunFailed` naming the
    cause. With ``log``, everything the run prints goes to that file instead of the terminal;
    without, the terminal shows anther's lines and the warnings worth acting on (all of it with
    ``verbose``) and the run folder's ``flower.log`` keeps everything.
    ``superlink`` gives the environment of a running SuperLink to submit a federated run to (the
    benchmark shares one across its cells); without it the run gets a private one. ``experiment`` is a
    name (in ``config_dir``, then the package's configs) or a YAML file's path."""
    experiment, config_dir = absolute_experiment(experiment, config_dir)  # the ServerApp runs elsewhere
    cfg = prepare_assets(load_config(experiment, overrides, config_dir))  # fail fast, make assets here, once
    check_partitions(cfg, Path(cfg.data.path))
    run_dir = run_folder(cfg)  # chosen here, so this process can read how the run ended
    check_writable(run_dir)
    if cfg.baseline == "none":
        resolved = [*overrides, f"model.path={cfg.model.path}", f"data.path={cfg.data.path}", f"run_dir={run_dir}"]
        resources, console = simulation_resources(cfg.federation), Console(run_dir / FLOWER_LOG, verbose)
        if superlink is not None:
            code = submit_run(superlink(), experiment, resolved, cfg.federation.num_clients,
                              extra_federation_config=resources, log=log, console=console, config_dir=config_dir)
        else:
            code = flwr_run(experiment, resolved, cfg.federation.num_clients, extra_federation_config=resources,
                            log=log, console=console, config_dir=config_dir)
        return _outcome(run_dir, code, console.failure)
    from anther.simulations.baselines import run_baseline  # here: a federated run's CLI loads no model code

    cfg.run_dir = str(run_dir)
    with contextlib.ExitStack() as stack:
        if log is not None:
            out = stack.enter_context(log.open("a"))
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        try:
            run_baseline(stack.enter_context(backbone_for_run(cfg)))
        except Exception as e:
            raise RunFailed(f"the run failed: {failure_of(run_dir, record_failure(run_dir, e))}") from e
    return _outcome(run_dir, 0)


def absolute_experiment(experiment: str, config_dir: str | None) -> tuple[str, str | None]:
    """``experiment`` and ``config_dir`` with a file's or folder's path made absolute (a name stays a name)."""
    if is_path(experiment):
        experiment = str(Path(experiment).expanduser().resolve())
    return experiment, str(Path(config_dir).expanduser().resolve()) if config_dir else None


def resume(run_dir: Path, log: Path | None = None, verbose: bool = False) -> int:
    """Continue the federated run in ``run_dir`` from its last complete checkpoint, with the config
    it was started with (its ``config.yaml``), into that same folder (docs/reliability.md)."""
    cfg = prepare_assets(load_run_config(run_dir))
    check_writable(Path(cfg.run_dir))
    if cfg.baseline != "none":
        raise ConfigError(f"{run_dir} is a baseline run (baseline={cfg.baseline}); only federated runs "
                          "checkpoint rounds and can be resumed")
    console = Console(Path(cfg.run_dir) / FLOWER_LOG, verbose)
    code = flwr_run("default", [], cfg.federation.num_clients, log=log, resume=cfg.run_dir,
                    extra_federation_config=simulation_resources(cfg.federation), console=console)
    return _outcome(Path(cfg.run_dir), code, console.failure)


def _outcome(run_dir: Path, flwr_code: int, printed: str | None = None) -> int:
    """0 when the run's folder says it finished; else :class:`RunFailed` with the cause it recorded
    (or, when it could not, ``printed``: the cause it printed)."""
    cause = failure_of(run_dir, printed)
    if cause is not None:
        raise RunFailed(f"the run failed: {cause}" + (f" (flwr exit code {flwr_code})" if flwr_code else ""))
    return 0
