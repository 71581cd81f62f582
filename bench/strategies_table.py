"""Final accuracies of every strategy by name on one non-IID split of the built-in data.

Runs ``anther simulate`` once per strategy on the same split -- Dirichlet alpha 0.5 over the
answers, 10 clients, everything else as in the default experiment -- and writes, after each
run, ``strategies_table.md`` (a markdown table) and ``strategies_table.json`` to ``--out``:
the last round's server-side multiple-choice and generation accuracy (global adapters, the
server's held-out set), the clients' mean and worst multiple-choice accuracy on their own
test splits (personalised: global + local adapter), and the seconds taken. Every run's
folder is kept under ``--out``/runs.

    python bench/strategies_table.py                                   # every row below
    python bench/strategies_table.py --only fedavg fisher -- federation.rounds=3 seed=1

Arguments after ``--`` are Hydra overrides added to every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPLIT = ["partition.scheme=dirichlet", "partition.alpha=0.5", "federation.num_clients=10"]

# row -> the overrides that select the strategy. Flower's server optimisers are given a
# server step in line with the clients' (50 AdamW steps of 3e-3), not their default 0.1.
ROWS: dict[str, list[str]] = {
    "fedavg": ["strategy.name=fedavg"],
    "fedprox": ["strategy.name=fedprox", "+strategy.proximal_mu=0.01"],
    "fedavgm": ["strategy.name=fedavgm", "+strategy.server_momentum=0.9"],
    "fedadagrad": ["strategy.name=fedadagrad", "+strategy.eta=0.01"],
    "fedadam": ["strategy.name=fedadam", "+strategy.eta=0.01"],
    "fedyogi": ["strategy.name=fedyogi", "+strategy.eta=0.01"],
    "fedmedian": ["strategy.name=fedmedian"],
    "fedtrimmedavg": ["strategy.name=fedtrimmedavg", "+strategy.beta=0.2"],
    "krum": ["strategy.name=krum"],
    "multikrum": ["strategy.name=multikrum", "+strategy.num_nodes_to_select=3"],
    "fisher": ["strategy.name=fisher"],
    "modality_aware": ["strategy.name=modality_aware"],
    "hetero_rank": ["strategy.name=hetero_rank", "+strategy.partition_ranks=[4,8,16]"],
    "personalised": ["strategy.name=personalised"],
    "adaptive_reg": ["strategy.name=adaptive_reg"],
    "adaptive_reg_prompt": ["strategy.name=adaptive_reg", "data.modality_agnostic_prompt=true"],
}


def run_one(row: str, extra: list[str], runs: Path) -> dict[str, Any]:
    """``anther simulate`` for one row; its numbers, or how it failed."""
    out = runs / row
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*SPLIT, *ROWS[row], *extra, f"name=strategies-{row}", f"output_dir={out}"]
    before = set(out.iterdir())
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "simulate", *overrides], check=False)
    entry: dict[str, Any] = {"row": row, "overrides": ROWS[row], "seconds": round(time.time() - t0, 1)}
    new = sorted(set(out.iterdir()) - before)
    if proc.returncode != 0 or not new:
        return {**entry, "status": f"failed (exit code {proc.returncode})"}
    result = json.loads((new[-1] / "result.json").read_text())
    last = result["rounds"][-1]
    clients = result["clients"]["summary"]
    return {**entry, "status": "ok", "run_dir": str(new[-1]), "rounds": last["round"],
            "acc_mc_round0": result["rounds"][0].get("acc_mc"), "acc_mc": last.get("acc_mc"), "acc_gen": last.get("acc_gen"),
            "client_acc_mc_mean": clients.get("acc_mc_mean"), "client_acc_mc_worst": clients.get("acc_mc_worst")}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(entries: list[dict[str, Any]], extra: list[str]) -> str:
    command = " ".join(["anther simulate", *SPLIT, *extra, "<row's overrides>"])
    lines = [f"Command: `{command}`", "",
             "| strategy | overrides | round 0 acc (mc) | acc (mc) | acc (gen) | clients' acc (mc) mean | worst | s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        if e["status"] != "ok":
            lines.append(f"| {e['row']} | `{' '.join(e['overrides'])}` | {e['status']} | | | | | {e['seconds']} |")
            continue
        cells = [e["acc_mc_round0"], e["acc_mc"], e["acc_gen"], e["client_acc_mc_mean"], e["client_acc_mc_worst"]]
        lines.append(f"| {e['row']} | `{' '.join(e['overrides'])}` | " + " | ".join(map(_cell, cells))
                     + f" | {e['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), help="run only these rows")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for row in args.only or list(ROWS):
        entries.append(run_one(row, extra, args.out / "runs"))
        (args.out / "strategies_table.json").write_text(json.dumps(
            {"split": SPLIT, "extra_overrides": extra, "rows": entries}, indent=2))
        (args.out / "strategies_table.md").write_text(markdown(entries, extra))
    print(markdown(entries, extra))
    return 0 if all(e["status"] == "ok" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
