"""A run's folder and what goes into it, the same for federated runs and baselines.

``config.yaml`` and the partition report first (before any training), then one row of the
round table and a rewrite of ``result.json`` per round (``finished: false`` until the end), and
at the end the clients' own-split metrics, ``finished: true`` and the plots. Because every
kind of run writes through this class, the benchmark runner reads them all alike and treats a
``result.json`` without ``finished: true`` as a run to redo.

A run that stops on an error says why in the same folder: one line in ``failure.json`` and the
whole traceback in ``anther.log`` (:func:`record_failure`), so whoever started it, ``anther
simulate`` or a benchmark, can tell a failed run from a finished one and name the cause
(:func:`failure_of`).
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anther.core.config import ConfigError, anther_home, to_yaml
from anther.core.files import write_json_atomic
from anther.data.client_data import dataset_summary
from anther.data.partition_report import ClientPartition, report_partitions, write_partition_report
from anther.server.checkpoint import ADAPTERS, CHECKPOINTS, checkpoint_rounds
from anther.server.run_report import RoundTable, plot_rounds, round_columns
from anther.server.tracking import trackers_for

TRAFFIC_KEYS = ("adapter_bytes_down", "adapter_bytes_up", "activation_bytes_up", "activation_bytes_down")
FAILURE_FILE, LOG_FILE = "failure.json", "anther.log"


# Room a run needs before it starts: checkpoints of adapters and strategy state, result.json,
# plots and logs; a few MB on the tiny model, tens on a real one.
MIN_FREE_BYTES = 256 * 2**20


def check_writable(run_dir: Path) -> None:
    """Refuse, before a run starts, a run folder that cannot be written or whose disk is nearly full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".anther-write-test"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run folder {run_dir} cannot be written ({e.strerror or e}); set output_dir "
                          "(or run_dir) to a folder you can write") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"run folder {run_dir} has {free / 2**20:.0f} MiB free; a run needs at least "
                          f"{MIN_FREE_BYTES // 2**20} MiB for its checkpoints and records")


def run_folder(cfg: DictConfig) -> Path:
    """``run_dir`` when the config names one, else a fresh ``<output_dir>/<name>-<time>``."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir).expanduser()
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else anther_home() / "runs"
    return out / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunRecorder:
    """Writes one run's folder; ``rounds`` and ``clients`` are what result.json holds."""

    def __init__(self, cfg: DictConfig, data_folder: Path | None) -> None:
        """``data_folder``: report what each client will hold of it now; None: the run reports what
        its clients say they hold (:meth:`report_partitions`) once it has asked them."""
        self.cfg = cfg
        self.dir = run_folder(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(to_yaml(cfg))
        self.data: dict[str, Any] | None = None  # what was read of the run's data (describe_data)
        if data_folder is not None:
            self.describe_data(Path(data_folder))
            write_partition_report(cfg, Path(data_folder), self.dir, summary=self.data)  # before training
        self.table = RoundTable(columns=round_columns(dp=cfg.privacy.dp,
                                                     client_dp=cfg.privacy.client_level.mode != "off"))
        self.rounds: list[dict[str, Any]] = []
        self.clients: dict[str, Any] = {}
        self.resumed_from: list[int] = []  # rounds a resumed run continued after (docs/reliability.md)
        self.trackers = trackers_for(cfg, self.dir)  # tracking=[...]: copies for TensorBoard, MLflow, W&B

    def describe_data(self, folder: Path) -> None:
        """Record in result.json what was read of the data in ``folder`` (the server's copy: a
        split that is only on the sites is recorded as missing here)."""
        self.data = dataset_summary(self.cfg, folder)

    def restore(self, rounds: list[dict[str, Any]], resumed_from: list[int]) -> None:
        """A resumed run: the rounds its checkpoint recorded, reprinted and saved again."""
        self.rounds, self.resumed_from = [], list(resumed_from)
        for record in rounds:
            self.add_round(record)

    def add_round(self, record: dict[str, Any]) -> None:
        """Print the round's row and save result.json as it stands (an unfinished run)."""
        self.rounds.append(record)
        self.table.add(record)
        self.write(finished=False)
        for tracker in self.trackers:
            tracker.log_round(record)

    def report_partitions(self, clients: list[ClientPartition]) -> None:
        """The partition table, plot and JSON of what the clients reported they hold."""
        report_partitions(self.cfg, clients, "as each client reported it", self.dir)

    def finish(self, clients: dict[str, Any]) -> None:
        """Record the clients' final metrics (``summary`` and ``per_client``), mark the run
        finished and plot it."""
        self.clients = clients
        self.write(finished=True)
        rounds = checkpoint_rounds(self.dir)
        adapters = self.dir / CHECKPOINTS / f"round-{rounds[-1]:04d}" / ADAPTERS if rounds else None
        for tracker in self.trackers:
            tracker.finish(self.dir / "result.json", adapters)
        (self.dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier attempt's, now resumed to the end
        plot_rounds(self.rounds, self.dir)

    def write(self, finished: bool) -> None:
        write_json_atomic(self.dir / "result.json", {
            "name": self.cfg.name,
            "finished": finished,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rounds": self.rounds,
            "clients": self.clients,
            "resumed_from": self.resumed_from,
            "data": self.data,
            "traffic": {k: sum(r.get(k) or 0 for r in self.rounds) for k in TRAFFIC_KEYS},
        })


# the line the ServerApp prints when it cannot write failure.json (a full disk): ``anther simulate``
# reads the cause from the run's stream then
FAILURE_LINE = "anther: the run failed: "


def record_failure(run_dir: Path, error: BaseException) -> str:
    """Say why the run in ``run_dir`` stopped: the error in one line in ``failure.json``, its
    traceback appended to ``anther.log``; returns the line. When the folder cannot take them (a
    full disk, say), the line is printed instead, as ``FAILURE_LINE`` + the line, for whoever
    reads the run's output."""
    line = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / LOG_FILE).open("a") as log:
            log.write(f"{datetime.now().isoformat(timespec='seconds')} the run failed:\n")
            log.write("".join(traceback.format_exception(error)))
        write_json_atomic(run_dir / FAILURE_FILE, {"error": line, "log": LOG_FILE})
    except OSError as e:
        line += f" (and {run_dir} could not record it: {e.strerror or e})"
        print(f"{FAILURE_LINE}{line}", file=sys.stderr, flush=True)
    return line


def failure_of(run_dir: Path, printed: str | None = None) -> str | None:
    """Why the run in ``run_dir`` did not finish, in one line; None when its ``result.json`` says
    it finished. ``printed``: the cause the run printed (what followed ``FAILURE_LINE`` in its
    output), the answer when the folder could not record one."""
    result = run_dir / "result.json"
    if result.is_file() and json.loads(result.read_text()).get("finished") is True:
        return None
    failure = run_dir / FAILURE_FILE
    if failure.is_file():
        return f"{json.loads(failure.read_text())['error']} (traceback in {run_dir / LOG_FILE})"
    return printed or f"it stopped before finishing and recorded no error; its folder is {run_dir}"
