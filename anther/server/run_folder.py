"""A run's folder and what goes into it, the same for federated runs and baselines.

``config.yaml`` and the partition report first (before any training), then one row of the
round table and a rewrite of ``result.json`` per round (``finished: false`` until the end), and
at the end the clients' own-split metrics, ``finished: true`` and the plots. Because every
kind of run writes through this class, the benchmark runner reads them all alike and treats a
``result.json`` without ``finished: true`` as a run to redo.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anther.core.config import anther_home, to_yaml
from anther.core.files import write_json_atomic
from anther.data.partition_report import write_partition_report
from anther.server.run_report import RoundTable, plot_rounds, round_columns

TRAFFIC_KEYS = ("adapter_bytes_down", "adapter_bytes_up", "activation_bytes_up", "activation_bytes_down")


def run_folder(cfg: DictConfig) -> Path:
    """``run_dir`` when the config names one, else a fresh ``<output_dir>/<name>-<time>``."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir).expanduser()
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else anther_home() / "runs"
    return out / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunRecorder:
    """Writes one run's folder; ``rounds`` and ``clients`` are what result.json holds."""

    def __init__(self, cfg: DictConfig, data_folder: Path) -> None:
        self.cfg = cfg
        self.dir = run_folder(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(to_yaml(cfg))
        write_partition_report(cfg, Path(data_folder), self.dir)  # what each client holds, before training
        self.table = RoundTable(columns=round_columns(dp=cfg.privacy.dp,
                                                     client_dp=cfg.privacy.client_level.mode != "off"))
        self.rounds: list[dict[str, Any]] = []
        self.clients: dict[str, Any] = {}
        self.resumed_from: list[int] = []  # rounds a resumed run continued after (docs/reliability.md)

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

    def finish(self, clients: dict[str, Any]) -> None:
        """Record the clients' final metrics (``summary`` and ``per_client``), mark the run
        finished and plot it."""
        self.clients = clients
        self.write(finished=True)
        plot_rounds(self.rounds, self.dir)

    def write(self, finished: bool) -> None:
        write_json_atomic(self.dir / "result.json", {
            "name": self.cfg.name,
            "finished": finished,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rounds": self.rounds,
            "clients": self.clients,
            "resumed_from": self.resumed_from,
            "traffic": {k: sum(r.get(k) or 0 for r in self.rounds) for k in TRAFFIC_KEYS},
        })
