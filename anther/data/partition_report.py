"""What each client holds under a scenario, shown before training starts.

Per client: sample counts (train / test), the label (answer) histogram, modality presence
(image and text, image only, text only, question only) and the visual domains. ``anther data
report`` computes them with :func:`anther.data.client_data.client_data` itself; a run's table
is built from what each client reports of the data it will read (its QUERY answer), so a
deployed site with its own data shows its own. Printed as a table and written as
``partition.png`` and ``partition.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from anther.core.files import write_json_atomic
from anther.core.plots import pyplot
from anther.core.sample import Sample
from anther.data.client_data import client_data, dataset_summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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


def describe(partition_id: int, train: list[Sample], test: list[Sample]) -> ClientPartition:
    """What one client holds: counts, labels, modality presence and domains of its samples."""
    mine = train + test
    return ClientPartition(
        partition_id=partition_id, train=len(train), test=len(test),
        labels=dict(Counter(s.answer for s in mine).most_common()),
        presence=dict(Counter(presence(s) for s in mine)),
        domains=dict(Counter(s.domain for s in mine).most_common()),
    )


def holdings(train: list[Sample], test: list[Sample], own_data: bool) -> dict[str, Any]:
    """What a client tells the server it holds: sample counts and modality presence, nothing of
    the samples' content (no labels, no domains); ``own_data``: its own folder, not a partition
    of the run's data."""
    return {"train": len(train), "test": len(test), "presence": dict(Counter(presence(s) for s in train + test)),
            "own_data": own_data}


def reported_partitions(cfg: DictConfig, folder: Path,
                        reports: dict[int, dict[str, Any] | None]) -> list[ClientPartition]:
    """The run's table from what each client reported (partition id -> :func:`holdings`, None for a
    client that did not say): a client that trains on a partition of the run's data, which this side
    can read too, gets its labels and domains from that copy when the counts agree (or it did not
    say); any other shows the counts and modalities it reported, or zeros."""
    try:
        computed = {c.partition_id: c for c in describe_partitions(cfg, folder)}
    except (OSError, ValueError, IndexError):  # the run's data is on the sites, not here
        computed = {}
    out = []
    for pid, held in sorted(reports.items()):
        mine = computed.get(pid)
        if held is None:
            mine = mine or ClientPartition(pid, 0, 0)
        elif held["own_data"] or mine is None or (mine.train, mine.test) != (held["train"], held["test"]):
            mine = ClientPartition(pid, held["train"], held["test"], presence=held["presence"])
        out.append(mine)
    return out


def describe_partitions(cfg: DictConfig, folder: Path) -> list[ClientPartition]:
    """Every client's holdings under ``cfg``'s scenario, over ``federation.num_clients`` clients."""
    n = cfg.federation.num_clients
    return [describe(pid, *client_data(cfg, folder, pid, n)) for pid in range(n)]


def partition_table(clients: list[ClientPartition], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for header in ("client", "train", "test", *PRESENCE, "labels", f"top {TOP_LABELS} labels", "domains"):
        table.add_column(header, justify="left" if "labels" in header or header == "domains" else "right")
    for c in clients:
        total = c.train + c.test
        top = ", ".join(f"{k} {v / total:.0%}" for k, v in list(c.labels.items())[:TOP_LABELS])
        table.add_row(str(c.partition_id), str(c.train), str(c.test),
                      *(str(c.presence.get(k, 0)) for k in PRESENCE), str(len(c.labels) or "-"), top or "-",
                      ", ".join(c.domains) or "-")
    return table


def _stacked_bars(ax: Axes, clients: list[ClientPartition], attr: str, keys: list[str], title: str) -> None:
    plt = pyplot()
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
    plt = pyplot()
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


def write_partition_report(cfg: DictConfig, folder: Path, out_dir: Path, console: Console | None = None,
                           summary: dict | None = None) -> Path:
    """What every client will hold of ``folder`` under ``cfg``'s scenario (:func:`report_partitions`),
    after what was read of the data set (``summary``, :func:`dataset_summary` when not given): its
    layout and each split's records, used and left out."""
    summary = summary or dataset_summary(cfg, folder)
    console = console or Console(width=160)
    console.print(f"data: {summary['format']}, {summary['layout']}")
    for which in ("train", "test"):
        split = summary[which]
        if "missing" in split:
            console.print(f"  {which} split {split['split']!r}: not there ({split['missing']})")
            continue
        left = ", ".join(f"{n} {reason}" for reason, n in split["left_out"].items()) or "none"
        console.print(f"  {which} split {split['split']!r}: {split['records']} records read, {split['used']} used; "
                      f"left out: {left}")
    return report_partitions(cfg, describe_partitions(cfg, folder), str(folder), out_dir, console, summary)


def report_partitions(cfg: DictConfig, clients: list[ClientPartition], source: str, out_dir: Path,
                      console: Console | None = None, dataset: dict | None = None) -> Path:
    """Print the table of ``clients`` and write ``out_dir/partition.png`` and
    ``out_dir/partition.json`` (``source``: where the numbers come from); returns the PNG's path."""
    p = cfg.partition
    title = (f"scenario {cfg.scenario.name}: {len(clients)} clients, partition {p.scheme} (alpha {p.alpha}, "
             f"seed {p.seed}), modality {cfg.scenario.modality}")
    (console or Console(width=160)).print(partition_table(clients, title))
    write_json_atomic(out_dir / "partition.json", {
        "scenario": dict(cfg.scenario), "partition": dict(p), "data": source, "dataset": dataset,
        "clients": [asdict(c) for c in clients]})
    return plot_partitions(clients, out_dir / "partition.png", title)
