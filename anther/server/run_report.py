"""What a user sees of a run: the per-round table, ``result.json`` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anther.core.plots import pyplot

COLUMNS = [  # (record key, header, format)
    ("round", "round", "{:d}"),
    ("train_loss", "loss", "{:.3f}"),
    ("acc_mc", "acc (mc)", "{:.3f}"),
    ("acc_gen", "acc (gen)", "{:.3f}"),
    ("clients", "clients", "{:d}"),
    ("adapter_bytes_down", "adapters down", "{}"),
    ("adapter_bytes_up", "adapters up", "{}"),
    ("activation_bytes_up", "activ. up", "{}"),
    ("activation_bytes_down", "activ. down", "{}"),
    ("seconds", "s", "{:.1f}"),
]
DP_COLUMN = ("dp_epsilon_max", "eps (max)", "{:.2f}")  # the most any client has spent so far
CLIENT_DP_COLUMN = ("dp_client_epsilon", "eps (client)", "{:.2f}")  # client-level DP, spent so far


def round_columns(dp: bool, client_dp: bool = False) -> list[tuple[str, str, str]]:
    """The table's columns: with sample-level and/or client-level DP, the spent epsilon before
    the time."""
    extra = [c for c, on in ((DP_COLUMN, dp), (CLIENT_DP_COLUMN, client_dp)) if on]
    return [*COLUMNS[:-1], *extra, COLUMNS[-1]]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_cell(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    if "bytes" in key:
        return human_bytes(value)
    return fmt.format(value)


class RoundTable:
    """Prints one row per round as it finishes, under a header printed once."""

    def __init__(self, console: Console | None = None, columns: list[tuple[str, str, str]] | None = None) -> None:
        self.console = console or Console(width=140)
        self.columns = COLUMNS if columns is None else columns
        self.header_done = False

    def _table(self) -> Table:
        table = Table(show_header=not self.header_done, box=None, pad_edge=False)
        for _, header, _ in self.columns:
            table.add_column(header, justify="right", min_width=max(len(header), 9))
        return table

    def add(self, record: dict[str, Any]) -> None:
        table = self._table()
        table.add_row(*(format_cell(k, f, record.get(k)) for k, _, f in self.columns))
        self.console.print(table)
        self.header_done = True


def plot_rounds(rounds: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """loss.png and accuracy.png over rounds."""
    plt = pyplot()
    xs = [r["round"] for r in rounds]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = [(r["round"], r["train_loss"]) for r in rounds if r.get("train_loss") is not None]
    if pts:
        ax.plot(*zip(*pts), marker="o")
    ax.set(xlabel="round", ylabel="mean local training loss", title="Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "loss.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("acc_mc", "multiple-choice"), ("acc_gen", "generated exact match")):
        ys = [r.get(key) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=label)
    ax.set(xlabel="round", ylabel="accuracy (server test set)", title="Accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
