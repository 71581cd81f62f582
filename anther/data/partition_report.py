"""What each client holds under a scenario, shown before training starts.

Per client: sample counts (train / test), the label (answer) histogram, modality presence
(image and text, image only, text only, question only) and the visual domains, computed with
:func:`anther.data.client_data.client_data` itself, so the report is exactly what the clients
will read. Printed as a table and written as ``partition.png`` and ``partition.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from anther.core.files import write_json_atomic
from anther.core.sample import Sample
from anther.data.client_data import client_data

PRESENCE = ("image+text", "image only", "text only", "question only")
TOP_LABELS = 3


@dataclass
class ClientPartition:
    partition_id: int
    train: int
    test: int
    labels: dict[str, int] = field(default_factory=dict)  # answer -> samples (train and test)
    presence: dict[str, int] = field(default_factory=dict)  # PRESENCE -> samples
    domains: dict[str, int] = field(default_factory=dict)


def presence(sample: Sample) -> str:
    """Which of PRESENCE a sample is: the modalities it carries besides its question."""
    if sample.has_image:
        return "image+text" if sample.has_text else "image only"
    return "text only" if sample.has_text else "question only"


def describe_partitions(cfg: DictConfig, folder: Path) -> list[ClientPartition]:
    """Every client's holdings under ``cfg``'s scenario, over ``federation.num_clients`` clients."""
    n = cfg.federation.num_clients
    out = []
    for pid in range(n):
        train, test = client_data(cfg, folder, pid, n)
        mine = train + test
        out.append(ClientPartition(
            partition_id=pid, train=len(train), test=len(test),
            labels=dict(Counter(s.answer for s in mine).most_common()),
            presence=dict(Counter(presence(s) for s in mine)),
            domains=dict(Counter(s.domain for s in mine).most_common()),
        ))
    return out


def partition_table(clients: list[ClientPartition], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for header in ("client", "train", "test", *PRESENCE, "labels", f"top {TOP_LABELS} labels", "domains"):
        table.add_column(header, justify="left" if "labels" in header or header == "domains" else "right")
    for c in clients:
        total = c.train + c.test
        top = ", ".join(f"{k} {v / total:.0%}" for k, v in list(c.labels.items())[:TOP_LABELS])
        table.add_row(str(c.partition_id), str(c.train), str(c.test),
                      *(str(c.presence.get(k, 0)) for k in PRESENCE), str(len(c.labels)), top,
                      ", ".join(c.domains))
    return table


def _stacked_bars(ax: plt.Axes, clients: list[ClientPartition], attr: str, keys: list[str], title: str) -> None:
    ids = [c.partition_id for c in clients]
    bottom = [0] * len(clients)
    cmap = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    for i, key in enumerate(keys):
        heights = [getattr(c, attr).get(key, 0) for c in clients]
        ax.bar(ids, heights, bottom=bottom, label=key, color=cmap(i % cmap.N), width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(xlabel="client", ylabel="samples", title=title)
    ax.set_xticks(ids)
    ax.legend(fontsize=6, ncol=1 + len(keys) // 12, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_partitions(clients: list[ClientPartition], path: Path, title: str) -> Path:
    """Three stacked-bar panels, one bar per client: labels, modality presence, domains."""
    labels = sorted({k for c in clients for k in c.labels})
    domains = sorted({k for c in clients for k in c.domains})
    fig, axes = plt.subplots(3, 1, figsize=(max(7.0, 0.45 * len(clients) + 4), 10))
    _stacked_bars(axes[0], clients, "labels", labels, "labels (answers)")
    _stacked_bars(axes[1], clients, "presence", list(PRESENCE), "modalities")
    _stacked_bars(axes[2], clients, "domains", domains, "domains")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_partition_report(cfg: DictConfig, folder: Path, out_dir: Path, console: Console | None = None) -> Path:
    """Print the table and write ``out_dir/partition.png`` and ``out_dir/partition.json``;
    returns the PNG's path."""
    clients = describe_partitions(cfg, folder)
    p = cfg.partition
    title = (f"scenario {cfg.scenario.name}: {len(clients)} clients, partition {p.scheme} (alpha {p.alpha}, "
             f"seed {p.seed}), modality {cfg.scenario.modality}")
    (console or Console(width=160)).print(partition_table(clients, title))
    write_json_atomic(out_dir / "partition.json", {
        "scenario": dict(cfg.scenario), "partition": dict(p), "data": str(folder),
        "clients": [asdict(c) for c in clients]})
    return plot_partitions(clients, out_dir / "partition.png", title)
