"""The benchmark's report, rebuilt from the finished cells' ``result.json`` files alone.

- ``report.json``: the bench config, every cell's numbers (final and per-round server accuracy,
  the clients' own-split summary, seconds) and the per (method, scenario) aggregates;
- ``report.md``: final multiple-choice accuracy on the server's test set, mean ± std over
  seeds, one row per scenario and one column per method, the mean over scenarios, then the
  worst client's own-split accuracy the same way, and the cells not finished;
- ``accuracy_per_round.png``: one panel per scenario, server accuracy per round per method
  (mean over seeds); ``final_accuracy.png``: final accuracy per scenario, a bar per method with
  the spread over seeds.

Because it reads only the cell folders, ``anther bench NAME --report-only`` can rebuild it at
any time, from a grid still running or one that was stopped.

What a number means for a baseline (see :mod:`anther.simulations.baselines`): zero-shot has
only round 0; local-only's server accuracy is the mean over the clients' own adapters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anther.bench.grid import SCENARIO_DIR, Cell, cells, unfinished
from anther.bench.machine import describe, one_line
from anther.core.files import write_json_atomic
from anther.core.plots import pyplot

ACC = "acc_mc"


@dataclass
class CellResult:
    method: str
    scenario: str
    seed: int
    final_acc: float | None  # server test set, last round
    acc_per_round: list[float | None]
    client_acc_mean: float | None  # clients' own test splits, final adapters
    client_acc_worst: float | None
    client_acc_std: float | None
    f1_macro: float | None  # server test set, last round
    seconds: float | None  # wall time of the cell, start-up included


def read_cell(cell: Cell, cell_dir: Path) -> CellResult:
    result = json.loads((cell_dir / "result.json").read_text())
    seconds = json.loads((cell_dir / "cell.json").read_text()).get("seconds")
    rounds, summary = result["rounds"], result["clients"].get("summary", {})
    return CellResult(cell.method, cell.scenario, cell.seed, rounds[-1].get(ACC), [r.get(ACC) for r in rounds],
                      summary.get(f"{ACC}_mean"), summary.get(f"{ACC}_worst"), summary.get(f"{ACC}_std"),
                      rounds[-1].get("f1_macro"), seconds)


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, population std and count of the values present, or None if none is."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)), len(xs)


def collect(bench: DictConfig, out: Path, extra: list[str]) -> tuple[list[CellResult], list[str]]:
    """Finished cells' results, and the keys of the cells not finished (under today's overrides)."""
    missing = set(unfinished(bench, out, extra))
    done = [read_cell(cell, out / "cells" / cell.key) for cell in cells(bench) if cell not in missing]
    return done, [cell.key for cell in cells(bench) if cell in missing]


def aggregate(results: list[CellResult], bench: DictConfig) -> list[dict[str, Any]]:
    """Per (method, scenario): mean and std over seeds of the final server accuracy and of the
    worst and mean client's own-split accuracy, and the mean accuracy per round."""
    rows = []
    for scenario in bench.scenarios:
        for method in bench.methods:
            mine = [r for r in results if r.method == method and r.scenario == scenario]
            if not mine:
                continue
            row: dict[str, Any] = {"method": method, "scenario": scenario, "seeds": sorted(r.seed for r in mine)}
            for key in ("final_acc", "client_acc_worst", "client_acc_mean", "f1_macro", "seconds"):
                stats = mean_std([getattr(r, key) for r in mine])
                row[key] = None if stats is None else {"mean": stats[0], "std": stats[1]}
            length = max(len(r.acc_per_round) for r in mine)
            row["acc_per_round"] = [None if (s := mean_std([r.acc_per_round[i] for r in mine
                                                            if i < len(r.acc_per_round)])) is None else s[0]
                                    for i in range(length)]
            rows.append(row)
    return rows


def _cell_text(stat: dict[str, float] | None) -> str:
    return "-" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _matrix(rows: list[dict[str, Any]], bench: DictConfig, key: str) -> list[str]:
    """A markdown table: scenarios down, methods across, ``key``'s mean ± std over seeds, and the
    mean over the scenarios each method has."""
    methods = list(bench.methods)
    by = {(r["scenario"], r["method"]): r for r in rows}
    lines = ["| scenario | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for scenario in bench.scenarios:
        cells_ = [_cell_text(by[(scenario, m)][key]) if (scenario, m) in by else "-" for m in methods]
        lines.append(f"| {scenario} | " + " | ".join(cells_) + " |")
    means = []
    for m in methods:
        stats = mean_std([by[(s, m)][key]["mean"] for s in bench.scenarios if (s, m) in by and by[(s, m)][key]])
        means.append("-" if stats is None else f"**{stats[0]:.3f}**")
    lines.append("| mean over scenarios | " + " | ".join(means) + " |")
    return lines


# partition scheme -> kind, for scenarios with every modality everywhere (configs/scenario/)
SCHEME_KINDS = {"iid": "iid", "dirichlet": "label skew", "domain": "domain shift", "quantity": "quantity skew"}
MODALITY_KINDS = {"missing": "missing modality", "cross": "cross modality", "hybrid": "hybrid modality"}


def scenario_kind(name: str) -> str:
    """What a scenario varies, from its config: a modality kind, else its partition scheme's."""
    cfg = OmegaConf.load(SCENARIO_DIR / f"{name}.yaml")
    modality = OmegaConf.select(cfg, "scenario.modality", default="full")
    if modality in MODALITY_KINDS:
        return MODALITY_KINDS[modality]
    return SCHEME_KINDS.get(OmegaConf.select(cfg, "partition.scheme", default="iid"), "other")


def by_kind(rows: list[dict[str, Any]], bench: DictConfig, key: str = "final_acc") -> dict[str, dict[str, float]]:
    """kind -> method -> the mean of ``key`` over that kind's scenarios the method finished."""
    kinds: dict[str, list[str]] = {}
    for scenario in bench.scenarios:
        kinds.setdefault(scenario_kind(scenario), []).append(scenario)
    by = {(r["scenario"], r["method"]): r for r in rows}
    table: dict[str, dict[str, float]] = {}
    for kind, scenarios in kinds.items():
        for method in bench.methods:
            values = [by[(s, method)][key]["mean"] for s in scenarios if (s, method) in by and by[(s, method)][key]]
            if values:
                table.setdefault(kind, {})[method] = sum(values) / len(values)
    return table


def _kind_matrix(table: dict[str, dict[str, float]], bench: DictConfig) -> list[str]:
    methods = list(bench.methods)
    lines = ["| kind of scenario | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for kind, values in table.items():
        best = max((v for m, v in values.items() if m not in ("zero_shot", "centralised")), default=None)
        cells_ = [("-" if m not in values else f"**{values[m]:.3f}**" if values[m] == best else f"{values[m]:.3f}")
                  for m in methods]
        lines.append(f"| {kind} | " + " | ".join(cells_) + " |")
    return lines


def markdown(bench: DictConfig, rows: list[dict[str, Any]], results: list[CellResult], missing: list[str],
             command: str, extra: list[str], machine: str) -> str:
    seconds = sum(r.seconds or 0 for r in results)
    budget = " ".join([*bench.overrides, *extra]) or "(none)"
    lines = [
        "# Heterogeneity benchmark", "",
        f"Command: `{command}`", "",
        f"Machine (the sitting that last wrote this report): {machine}", "",
        (f"Experiment `{bench.experiment}`; per-run overrides `{budget}`; "
         f"seeds {list(bench.seeds)} (`{' '.join(bench.seed_overrides)}`). {len(results)} cells finished "
         f"({seconds / 3600:.2f} h of cell wall time), {len(missing)} not."), "",
        "## Final multiple-choice accuracy, server test set (mean ± std over seeds)", "",
        *_matrix(rows, bench, "final_acc"), "",
        "## The same, averaged over each kind of scenario", "",
        "Bold: the best method other than zero-shot and centralised (the references).", "",
        *_kind_matrix(by_kind(rows, bench), bench), "",
        "## Worst client: multiple-choice accuracy on its own test split (mean ± std over seeds)", "",
        *_matrix(rows, bench, "client_acc_worst"), "",
        "## Mean client: multiple-choice accuracy on their own test splits (mean ± std over seeds)", "",
        *_matrix(rows, bench, "client_acc_mean"), "",
        "Zero-shot is the fresh adapters (round 0 only). Local-only's server accuracy is the mean over",
        "the clients' own adapters; centralised trains one adapter on every partition pooled with the",
        "federated run's total step budget. Plots: `accuracy_per_round.png`, `final_accuracy.png`;",
        "every number per cell: `report.json`.", "",
    ]
    methods = ", ".join(f"`{m}`: `{' '.join(o)}`" for m, o in bench.methods.items())
    lines += [f"Methods: {methods}.", ""]
    if missing:
        lines += ["## Cells not finished", "", ", ".join(f"`{k}`" for k in missing), ""]
    return "\n".join(lines)


def plot_per_round(rows: list[dict[str, Any]], bench: DictConfig, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    scenarios = [s for s in bench.scenarios if any(r["scenario"] == s for r in rows)] or list(bench.scenarios)
    ncols = min(4, len(scenarios))
    nrows = math.ceil(len(scenarios) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows + 0.6), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, scenario in zip(axes.flat, scenarios):
        for i, method in enumerate(bench.methods):
            row = next((r for r in rows if r["scenario"] == scenario and r["method"] == method), None)
            if row is None:
                continue
            pts = [(x, y) for x, y in enumerate(row["acc_per_round"]) if y is not None]
            if len(pts) == 1:  # zero-shot: round 0 only, drawn as a level to compare the others with
                ax.axhline(pts[0][1], linestyle="--", linewidth=1, color=cmap(i % 10), label=method)
            elif pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, color=cmap(i % 10), label=method)
        ax.set(title=scenario, xlabel="round", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(scenarios):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("acc (mc), server")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels) or 1), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_final(rows: list[dict[str, Any]], bench: DictConfig, path: Path) -> Path:
    plt = pyplot()
    methods, scenarios = list(bench.methods), list(bench.scenarios)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(scenarios) + 2), 4))
    cmap = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for j, scenario in enumerate(scenarios):
            row = next((r for r in rows if r["scenario"] == scenario and r["method"] == method), None)
            if row is not None and row["final_acc"] is not None:
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(row["final_acc"]["mean"])
                errs.append(row["final_acc"]["std"])
        ax.bar(xs, ys, width=width, yerr=errs, capsize=2, color=cmap(i % 10), label=method)
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=45, ha="right")
    ax.set(ylabel="final acc (mc), server test set", ylim=(0, 1), title="Final accuracy per scenario")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(bench: DictConfig, out: Path, extra: list[str], command: str) -> Path:
    """Rebuild report.md, report.json and the two plots in ``out`` from the finished cells."""
    results, missing = collect(bench, out, extra)
    rows = aggregate(results, bench)
    machine = describe()
    write_json_atomic(out / "report.json", {
        "command": command, "machine": machine, "bench": OmegaConf.to_container(bench, resolve=True),
        "extra_overrides": extra,
        "cells": [asdict(r) for r in results], "not_finished": missing, "summary": rows,
        "by_kind": by_kind(rows, bench)})
    (out / "report.md").write_text(markdown(bench, rows, results, missing, command, extra, one_line(machine)))
    plot_per_round(rows, bench, out / "accuracy_per_round.png")
    plot_final(rows, bench, out / "final_accuracy.png")
    return out / "report.md"
