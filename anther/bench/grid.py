"""``anther bench NAME``: a grid of methods x scenarios x seeds, one run per cell, resumable.

A bench config (``configs/bench/<NAME>.yaml``, schema :class:`BenchConfig`) names an experiment,
the methods (each a list of Hydra overrides: a strategy or a baseline), the scenarios (config
names of ``configs/scenario/``), the seeds, and the per-run budget. Each cell is one ordinary
run of that experiment with ``scenario=S``, the seed's overrides, the budget and the method's
overrides, into ``<out>/cells/<method>__<scenario>__seed<k>/`` (``run_dir``), exactly what
``anther simulate`` would run with the same overrides; its log goes to ``log.txt`` there.

Resuming is by cell: a cell whose ``result.json`` says ``finished: true`` and whose
``cell.json`` holds the same overrides is skipped; any other cell (never started, cut off
midway, failed, or run under other overrides) is cleared and run again. After every cell the
report (:mod:`anther.bench.grid_report`) is rewritten from every finished cell.

Federated cells go through ``flwr run`` like ``anther simulate``, on one SuperLink shared by
the whole grid (started at the first such cell); baselines run in this process. Several such
runners can share one grid (:mod:`anther.bench.grid_workers`): each takes a cell by
creating its folder under a shared ``claims`` directory, which only one of them can do.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anther.core.config import CONFIG_DIR, ConfigError
from anther.simulations.experiment import load_config
from anther.simulations.launcher import private_superlink
from anther.simulations.runner import absolute_experiment, simulate

BENCH_DIR = CONFIG_DIR / "bench"
SCENARIO_DIR = CONFIG_DIR / "scenario"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # method and scenario names become folder names


@dataclass
class BenchConfig:
    experiment: str = "default"  # a name (in config_dir, then anther/configs) or a YAML file's path
    config_dir: str | None = None  # a folder of the user's experiments and config groups
    seeds: list[int] = field(default_factory=lambda: [0])
    seed_overrides: list[str] = field(default_factory=lambda: ["seed={seed}", "partition.seed={seed}"])
    scenarios: list[str] = field(default_factory=lambda: ["iid"])
    methods: dict[str, list[str]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # the per-run budget, on every cell


@dataclass(frozen=True)
class Cell:
    method: str
    scenario: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}__{self.scenario}__seed{self.seed}"


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done (finished before), ran, failed
    seconds: float = 0.0
    detail: str = ""


def bench_names() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.yaml"))


def load_bench(name_or_file: str, methods: list[str] | None = None, scenarios: list[str] | None = None,
               seeds: list[int] | None = None, experiment: str | None = None,
               config_dir: str | None = None) -> DictConfig:
    """The bench config ``configs/bench/<name>.yaml`` (or a YAML file's path), its grid cut down
    to ``methods`` / ``scenarios`` / ``seeds`` and its ``experiment`` / ``config_dir`` replaced when
    given (paths made absolute: the runs start elsewhere). Misspelt keys, unknown names and unsafe
    folder names are rejected with the offending value."""
    path = Path(name_or_file)
    if not path.is_file():
        path = BENCH_DIR / f"{name_or_file}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown bench {name_or_file!r}: not a file and not one of {bench_names()} "
                              f"in {BENCH_DIR}")
    try:
        bench = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.load(path))
    except Exception as e:  # omegaconf's errors name the key but not the file
        raise ConfigError(f"bench config {path}: {e}") from e
    if methods:
        unknown = [m for m in methods if m not in bench.methods]
        if unknown:
            raise ConfigError(f"--methods {' '.join(unknown)}: not in {path} (it has {list(bench.methods)})")
        bench.methods = {m: bench.methods[m] for m in methods}
    if scenarios:
        bench.scenarios = list(scenarios)
    if seeds:
        bench.seeds = list(seeds)
    bench.experiment, bench.config_dir = absolute_experiment(experiment or bench.experiment,
                                                             config_dir or bench.config_dir)
    _validate(bench, path)
    return bench


def _validate(bench: DictConfig, path: Path) -> None:
    if not bench.methods or not bench.scenarios or not bench.seeds:
        raise ConfigError(f"bench config {path}: methods, scenarios and seeds must each name at least one")
    for name in [*bench.methods, *bench.scenarios]:
        if not SAFE_NAME.match(name) or "__" in name:
            raise ConfigError(f"bench config {path}: {name!r} cannot name a cell folder "
                              "(letters, digits, . _ - only, no '__')")
    folders = [SCENARIO_DIR, *([Path(bench.config_dir) / "scenario"] if bench.config_dir else [])]
    missing = [s for s in bench.scenarios if not any((f / f"{s}.yaml").is_file() for f in folders)]
    if missing:
        known = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
        raise ConfigError(f"bench config {path}: unknown scenario(s) {missing}; known: {known}")


def cells(bench: DictConfig) -> list[Cell]:
    """Every cell, seed outermost: all of one seed's grid before the next seed's, so a grid cut
    short still covers every method and scenario once."""
    return [Cell(m, s, int(k)) for k in bench.seeds for s in bench.scenarios for m in bench.methods]


def cell_overrides(bench: DictConfig, cell: Cell, extra: list[str], run_dir: Path) -> list[str]:
    """The overrides of a cell's run: budget, command-line extras, scenario, seed, method, folder."""
    seed = [o.format(seed=cell.seed) for o in bench.seed_overrides]
    return [*bench.overrides, *extra, f"scenario={cell.scenario}", *seed, *bench.methods[cell.method],
            f"name={cell.key}", f"run_dir={run_dir}"]


def check_grid(bench: DictConfig, extra: list[str], out: Path) -> None:
    """Compose one cell of every method and every scenario, so a typo fails now, not hours in."""
    first = cells(bench)[0]
    probes = {Cell(m, first.scenario, first.seed) for m in bench.methods}
    probes |= {Cell(first.method, s, first.seed) for s in bench.scenarios}
    for cell in sorted(probes, key=lambda c: c.key):
        try:
            load_config(bench.experiment, cell_overrides(bench, cell, extra, out / cell.key), bench.config_dir)
        except Exception as e:
            raise ConfigError(f"cell {cell.key} does not compose: {e}") from e


def is_finished(cell_dir: Path, overrides: list[str]) -> bool:
    """True if the cell ran to the end under exactly these overrides."""
    try:
        result = json.loads((cell_dir / "result.json").read_text())
        recorded = json.loads((cell_dir / "cell.json").read_text())
    except (OSError, ValueError):
        return False
    return result.get("finished") is True and recorded.get("overrides") == overrides


def unfinished(bench: DictConfig, out: Path, extra: list[str]) -> list[Cell]:
    """The cells of the grid without a finished result under today's overrides."""
    grid = [(cell, out / "cells" / cell.key) for cell in cells(bench)]
    return [cell for cell, d in grid if not is_finished(d, cell_overrides(bench, cell, extra, d))]


def claim(claims: Path, cell: Cell) -> bool:
    """Take ``cell`` for this runner; False if another runner of the grid took it first (``mkdir``
    is atomic, so no cell runs twice)."""
    try:
        (claims / cell.key).mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def _run_cell(bench: DictConfig, cell: Cell, overrides: list[str], cell_dir: Path,
              superlink: Callable[[], dict[str, str]]) -> CellOutcome:
    shutil.rmtree(cell_dir, ignore_errors=True)  # a stale or half-written attempt
    cell_dir.mkdir(parents=True)
    record = {"method": cell.method, "scenario": cell.scenario, "seed": cell.seed, "overrides": overrides}
    (cell_dir / "cell.json").write_text(json.dumps(record, indent=2))
    log = cell_dir / "log.txt"
    t0 = time.time()
    try:
        code = simulate(bench.experiment, overrides, log=log, superlink=superlink, config_dir=bench.config_dir)
    except Exception as e:  # noqa: BLE001 -- one broken cell must not stop the grid; the report lists it
        with log.open("a") as f:
            f.write(f"\nanther bench: the cell failed:\n{traceback.format_exc()}")
        return CellOutcome(cell, "failed", time.time() - t0, f"{type(e).__name__}: {e}")
    seconds = time.time() - t0
    if not is_finished(cell_dir, overrides):
        return CellOutcome(cell, "failed", seconds, f"exit code {code}, no finished result.json; see {log}")
    (cell_dir / "cell.json").write_text(json.dumps({**record, "seconds": round(seconds, 1)}, indent=2))
    return CellOutcome(cell, "ran", seconds)


@contextlib.contextmanager
def lazy_superlink() -> Iterator[Callable[[], dict[str, str]]]:
    """A getter that starts one SuperLink the first time a federated cell needs it, stopped at exit."""
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}

        def get() -> dict[str, str]:
            if not env:
                env.update(stack.enter_context(private_superlink()))
            return env

        yield get


def run_grid(bench: DictConfig, out: Path, extra: list[str] | None = None,
             say: Callable[[str], None] = print,
             on_cell: Callable[[list[CellOutcome]], Any] | None = None,
             claims: Path | None = None) -> list[CellOutcome]:
    """Run every cell not already finished under ``out/cells``; ``on_cell`` is called with the
    outcomes so far after each cell (the report is rewritten there). With ``claims`` (a folder
    shared with other runners of the same grid) a cell is run only if :func:`claim` gets it."""
    extra = list(extra or [])
    check_grid(bench, extra, out / "cells")
    grid = cells(bench)
    outcomes: list[CellOutcome] = []
    with lazy_superlink() as superlink:
        for i, cell in enumerate(grid, 1):
            cell_dir = out / "cells" / cell.key
            overrides = cell_overrides(bench, cell, extra, cell_dir)
            if is_finished(cell_dir, overrides):
                say(f"[{i}/{len(grid)}] {cell.key}: finished before, skipped")
                outcomes.append(CellOutcome(cell, "done"))
                continue
            if claims is not None and not claim(claims, cell):
                continue  # another runner has it
            say(f"[{i}/{len(grid)}] {cell.key}: running (log {cell_dir / 'log.txt'})")
            outcome = _run_cell(bench, cell, overrides, cell_dir, superlink)
            say(f"[{i}/{len(grid)}] {cell.key}: {outcome.status} in {outcome.seconds:.0f} s "
                f"{outcome.detail}".rstrip())
            outcomes.append(outcome)
            if on_cell is not None:
                on_cell(outcomes)
    return outcomes
