"""One ``anther simulate`` run per row of a table, and the table of what each row reached.

A *table* is a list of rows, each a set of Hydra overrides added to the table's common ones;
``anther/bench/strategies_table.py`` (every strategy by name on one non-IID split) and
``anther/bench/privacy_table.py`` (accuracy against epsilon) are two. After each run, ``<table>.md``
(a markdown table) and ``<table>.json`` are written to ``--out``: the last round's server-side
multiple-choice and generation accuracy (global adapters, the server's held-out set), the
clients' mean and worst multiple-choice accuracy on their own test splits, the privacy spent
(where a run is private) and the seconds taken. Every run's folder is kept under ``--out``/runs.
Rows run earlier into the same ``--out`` with the same overrides stay in the table, so
``--only`` adds or redoes rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anther.bench.results import results_dir


@dataclass(frozen=True)
class Table:
    """``rows`` (name -> overrides), each run with ``common`` overrides first."""

    name: str
    doc: str
    common: list[str]
    rows: dict[str, list[str]]
    traffic: bool = False  # also the activation bytes per client and round, each way


def run_one(table: Table, row: str, extra: list[str], runs: Path) -> dict[str, Any]:
    """``anther simulate`` for one row; its numbers, or how it failed."""
    out = runs / row
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*table.common, *table.rows[row], *extra, f"name={table.name}-{row}", f"output_dir={out}"]
    before = set(out.iterdir())
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "simulate", *overrides], check=False)
    entry: dict[str, Any] = {"row": row, "overrides": table.rows[row], "seconds": round(time.time() - t0, 1)}
    new = sorted(set(out.iterdir()) - before)
    if proc.returncode != 0 or not new:
        return {**entry, "status": f"failed (exit code {proc.returncode})"}
    result = json.loads((new[-1] / "result.json").read_text())
    last = result["rounds"][-1]
    trained = [r for r in result["rounds"][1:] if r.get("clients")]
    per_client = {key: sum(r[key] / r["clients"] for r in trained) / len(trained) / 2**20 if trained else None
                  for key in ("activation_bytes_up", "activation_bytes_down")}
    clients = result["clients"]["summary"]
    return {**entry, "status": "ok", "run_dir": str(new[-1]), "rounds": last["round"],
            "acc_mc_round0": result["rounds"][0].get("acc_mc"), "acc_mc": last.get("acc_mc"),
            "acc_gen": last.get("acc_gen"), "client_acc_mc_mean": clients.get("acc_mc_mean"),
            "client_acc_mc_worst": clients.get("acc_mc_worst"),
            "dp_epsilon_max": last.get("dp_epsilon_max"), "dp_client_epsilon": last.get("dp_client_epsilon"),
            "activation_mib_up": per_client["activation_bytes_up"],
            "activation_mib_down": per_client["activation_bytes_down"]}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


COLUMNS = [("acc_mc_round0", "round 0 acc (mc)"), ("acc_mc", "acc (mc)"), ("acc_gen", "acc (gen)"),
           ("client_acc_mc_mean", "clients' acc (mc) mean"), ("client_acc_mc_worst", "worst")]
PRIVACY_COLUMNS = [("dp_epsilon_max", "sample-level eps spent (max over clients)"),
                   ("dp_client_epsilon", "client-level eps spent")]
TRAFFIC_COLUMNS = [("activation_mib_up", "activations up, MiB per client and round"),
                   ("activation_mib_down", "down")]


def markdown(table: Table, entries: list[dict[str, Any]], extra: list[str]) -> str:
    """The table; a privacy column appears only where some row spent privacy of that kind."""
    columns = COLUMNS + [c for c in PRIVACY_COLUMNS if any(e.get(c[0]) is not None for e in entries)]
    columns += TRAFFIC_COLUMNS if table.traffic else []
    command = " ".join(["anther simulate", *table.common, *extra, "<row's overrides>"])
    lines = [f"Command: `{command}`", "",
             f"| {table.name} | overrides | " + " | ".join(title for _, title in columns) + " | s |",
             "|---|---|" + "---:|" * (len(columns) + 1)]
    for e in entries:
        head = f"| {e['row']} | `{' '.join(e['overrides']) or '(defaults)'}` | "
        if e["status"] != "ok":
            lines.append(head + e["status"] + " |" * len(columns) + f" {e['seconds']} |")
            continue
        lines.append(head + " | ".join(_cell(e.get(key)) for key, _ in columns) + f" | {e['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(table: Table, argv: list[str] | None = None) -> int:
    """Run the table's rows (all, or ``--only``), with the Hydra overrides after ``--``."""
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=table.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(table.rows), help="run only these rows")
    parser.add_argument("--out", type=Path, default=results_dir(table.name),
                        help="output folder (default: $ANTHER_HOME/bench/<table>)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / f"{table.name}_table.json"
    done = _earlier_rows(record, table, extra)
    for row in args.only or list(table.rows):
        done[row] = run_one(table, row, extra, args.out / "runs")
        entries = [done[r] for r in table.rows if r in done]
        record.write_text(json.dumps({"common": table.common, "extra_overrides": extra, "rows": entries}, indent=2))
        (args.out / f"{table.name}_table.md").write_text(markdown(table, entries, extra))
    print(markdown(table, entries, extra))
    return 0 if all(e["status"] == "ok" for e in entries) else 1


def _earlier_rows(record: Path, table: Table, extra: list[str]) -> dict[str, dict[str, Any]]:
    """Rows an earlier invocation wrote to ``record`` under the same overrides (kept, so that
    ``--only`` adds or redoes rows without losing the others); none if the overrides differ."""
    if not record.is_file():
        return {}
    earlier = json.loads(record.read_text())
    if earlier.get("common") != table.common or earlier.get("extra_overrides") != extra:
        return {}
    return {e["row"]: e for e in earlier["rows"] if e["row"] in table.rows}
