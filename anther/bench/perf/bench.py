"""``anther bench perf``: what federated training with a shared backbone costs, measured on this machine.

Sections (docs/performance.md says what each one answers):

- *overhead*: samples per second of federated rounds in split mode (``flwr run``, Ray, the
  backbone service in its own process, ``overhead_clients`` clients) over samples per second of
  a bare training loop of the same model, adapters, batch size and samples;
- *sharing*: round time and peak memory at each of ``sharing_clients``, one shared backbone
  against a full model per client (:mod:`anther.bench.perf.workload`);
- *cache*: round times with and without the feature cache;
- *batching*: backbone throughput of concurrent clients, batched against one pass per request;
- *scale*: ``scale_clients`` clients for ``scale_rounds`` rounds, memory over time;
- *modes*: split mode against whole-model mode (LoRA in the LLM), each with and without the feature
  cache, as federated runs with ``modes_overrides`` (:mod:`anther.bench.perf.modes`);
- *trainstep*: the backbone's TrainStep at full size (LLaVA-1.5-7B's LLM, random weights) on the
  GPU: tokens per second and MFU by batch size and by concurrent clients
  (:mod:`anther.bench.perf.trainstep`). Without a GPU it is skipped, and says so, unless
  ``trainstep_model=experiment`` (the experiment's own small LLM) or ``trainstep_device=cpu``.

Every in-process measurement runs in a fresh child process (:mod:`anther.bench.perf.cells`),
so each peak memory is that cell's alone. The config is ``configs/bench/perf.yaml`` (schema
:class:`PerfConfig`); ``key=value`` arguments override it. Results go to ``OUT/perf.json`` and
``OUT/perf.md`` with plots next to them.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from anther.bench.machine import describe
from anther.bench.model_sizes import REAL_CONFIGS
from anther.bench.perf.modes import MODE_RUNS, modes_section
from anther.bench.perf.trainstep import TrainStepSettings, resolve_device
from anther.core.config import FLOAT_DTYPES, ConfigError
from anther.core.settings_file import load_settings
from anther.simulations.assets import prepare_assets
from anther.simulations.experiment import load_config
from anther.simulations.runner import absolute_experiment, simulate

SECTIONS = ("overhead", "sharing", "cache", "batching", "scale", "modes", "trainstep")


@dataclass
class PerfConfig:
    experiment: str = "default"  # a name (in config_dir, then anther/configs) or a YAML file's path
    config_dir: str | None = None  # a folder of the user's experiments and config groups
    overrides: list[str] = field(default_factory=list)  # the workload: model, data, steps, batch size
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    torch_threads: int = 0  # 0: one per core
    concurrency: int = 8  # clients training at once in the in-process cells
    window_ms: float = 5.0  # the backbone service's batching window
    max_batch: int = 256  # sequences per batched pass
    overhead_clients: int = 8
    overhead_rounds: int = 3  # round 1 also starts the client processes; later rounds are measured
    bare_warmup_steps: int = 3
    sharing_clients: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    sharing_rounds: int = 2
    cache_clients: int = 8
    cache_rounds: int = 3
    batching_clients: int = 8
    batching_seconds: float = 10.0
    scale_clients: int = 100
    scale_rounds: int = 3
    scale_local_steps: int = 2
    modes: list[str] = field(default_factory=lambda: list(MODE_RUNS))
    # the modes section's runs: overrides of `experiment` alone (not `overrides`: accuracy needs
    # the pretrained tiny model), the heterogeneity grid's budget
    modes_overrides: list[str] = field(default_factory=lambda: [
        "federation.rounds=3", "federation.fraction_train=1.0", "train.local_steps=10",
        "eval.server_test_size=100", "eval.generate=false"])
    # the trainstep section: a REAL_CONFIGS name (the size report's models) or "experiment"
    trainstep_model: str = "llava-1.5-7b"
    trainstep_dtype: str = "bfloat16"
    trainstep_device: str = "auto"  # auto: cuda if there is one, else cpu
    trainstep_seq_len: int = 640  # LLaVA-1.5: 576 image tokens and a short prompt and answer
    trainstep_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    trainstep_concurrency: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    trainstep_client_batch: int = 4  # sequences per client request in the service runs
    trainstep_steps: int = 10
    trainstep_warmup: int = 2
    trainstep_seconds: float = 20.0  # per concurrency level
    trainstep_peak_tflops: float = 0.0  # 0: the device's data-sheet peak (trainstep.PEAK_TFLOPS)


def significant(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits: a small ratio (0.0264) keeps its precision, which
    rounding to 3 decimal places took away."""
    return float(f"{x:.{digits}g}")


def perf_keys() -> set[str]:
    return set(PerfConfig.__dataclass_fields__)


def load_perf(name_or_file: str = "perf", overrides: list[str] | None = None, experiment: str | None = None,
              config_dir: str | None = None) -> DictConfig:
    """``configs/bench/<name>.yaml`` (or a YAML path) with ``key=value`` overrides, checked; ``experiment``
    and ``config_dir`` replace its own when given (paths made absolute: the runs start elsewhere)."""
    cfg = load_settings(PerfConfig, "bench", name_or_file, overrides, "perf bench")
    cfg.experiment, cfg.config_dir = absolute_experiment(experiment or cfg.experiment, config_dir or cfg.config_dir)
    if set(cfg.modes) - set(MODE_RUNS) or not cfg.modes:
        raise ConfigError(f"perf bench modes {list(cfg.modes)}: each must be one of {', '.join(MODE_RUNS)}")
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"perf bench sections {sorted(unknown)} are unknown; known: {', '.join(SECTIONS)}")
    for key in ("concurrency", "overhead_clients", "overhead_rounds", "cache_clients", "cache_rounds",
                "batching_clients", "scale_clients", "scale_rounds", "scale_local_steps", "sharing_rounds"):
        if cfg[key] < 1:
            raise ConfigError(f"perf bench config value {key}={cfg[key]} is invalid: must be >= 1")
    if cfg.overhead_rounds < 2:
        raise ConfigError("perf bench config value overhead_rounds must be >= 2 (round 1 starts the clients)")
    _check_trainstep(cfg)
    return cfg


def _check_trainstep(cfg: DictConfig) -> None:
    models = ["experiment", *REAL_CONFIGS]
    if cfg.trainstep_model not in models:
        raise ConfigError(f"perf bench config value trainstep_model={cfg.trainstep_model} is unknown: "
                          f"one of {', '.join(models)}")
    if cfg.trainstep_dtype not in FLOAT_DTYPES:
        raise ConfigError(f"perf bench config value trainstep_dtype={cfg.trainstep_dtype} is unknown: "
                          f"one of {', '.join(FLOAT_DTYPES)}")
    for key in ("trainstep_batch_sizes", "trainstep_concurrency"):
        if not cfg[key] or min(cfg[key]) < 1:
            raise ConfigError(f"perf bench config value {key}={list(cfg[key])} is invalid: "
                              "a non-empty list of numbers >= 1")
    for key in ("trainstep_seq_len", "trainstep_client_batch", "trainstep_steps"):
        if cfg[key] < 1:
            raise ConfigError(f"perf bench config value {key}={cfg[key]} is invalid: must be >= 1")


class PerfBench:
    def __init__(self, cfg: DictConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.threads = cfg.torch_threads or os.cpu_count() or 1
        self.policy = {"enabled": True, "window_ms": float(cfg.window_ms), "max_batch": int(cfg.max_batch)}
        # the shared backbone's settings: batching, and every core (the service's own process has)
        self._shared = {"policy": self.policy, "backbone_threads": self.threads}

    def _overrides(self, clients: int, *extra: str) -> list[str]:
        return [*self.cfg.overrides, f"federation.num_clients={clients}", "federation.fraction_train=1.0",
                *extra]

    def cell(self, name: str, cell: str, clients: int, args: dict[str, Any], *extra: str) -> dict[str, Any]:
        """Run one cell of :mod:`anther.bench.perf.cells` in a child process."""
        spec = {"cell": cell, "experiment": self.cfg.experiment, "config_dir": self.cfg.config_dir,
                "overrides": self._overrides(clients, *extra),
                "torch_threads": self.threads, "args": args}
        return self.child(name, "anther.bench.perf.cells", spec)

    def child(self, name: str, module: str, spec: dict[str, Any]) -> dict[str, Any]:
        """``python -m module SPEC.json OUT.json``; the result is also kept as ``cells/<name>.json``."""
        target = self.out / "cells" / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        try:
            done = subprocess.run([sys.executable, "-m", module, f.name, str(target)],
                                  capture_output=True, text=True, check=False)
        finally:
            os.unlink(f.name)
        if done.returncode != 0:
            raise RuntimeError(f"perf cell {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(target.read_text())

    # -- sections -------------------------------------------------------------------------------
    def overhead(self) -> dict[str, Any]:
        c = self.cfg
        run_dir = self.out / "overhead-run"
        shutil.rmtree(run_dir, ignore_errors=True)  # a new run, not a resumed one
        overrides = self._overrides(c.overhead_clients, f"federation.rounds={c.overhead_rounds}",
                                    "backbone.mode=service", "eval.server_test_size=0",
                                    "federation.client_eval_every=0", f"run_dir={run_dir}")
        code = simulate(c.experiment, overrides, log=self.out / "overhead-run.log", config_dir=c.config_dir)
        if code != 0:
            raise RuntimeError(f"the federated run of the overhead section failed (exit {code}); "
                               f"see {self.out / 'overhead-run.log'}")
        rounds = json.loads((run_dir / "result.json").read_text())["rounds"][1:]
        cfg = OmegaConf.load(run_dir / "config.yaml")
        per_round = cfg.federation.num_clients * cfg.train.local_steps * cfg.train.batch_size
        measured = [r["seconds"] for r in rounds[1:]]  # round 1 also starts the client processes
        federated = per_round / statistics.median(measured)
        bare = self.cell("overhead-bare", "bare", c.overhead_clients,
                         {"steps": c.overhead_clients * cfg.train.local_steps, "warmup": c.bare_warmup_steps})
        return {"clients": c.overhead_clients, "samples_per_round": per_round,
                "round_s": [round(r["seconds"], 3) for r in rounds], "federated_samples_per_s": round(federated, 2),
                "bare": bare, "ratio": significant(federated / bare["samples_per_s"])}

    def sharing(self) -> dict[str, Any]:
        rows = []
        for n in self.cfg.sharing_clients:
            for mode in ("shared", "copies"):
                args = {"mode": mode, "rounds_": self.cfg.sharing_rounds, "concurrency": self.cfg.concurrency}
                if mode == "shared":
                    args.update(self._shared)
                rows.append(self.cell(f"sharing-{mode}-{n}", "rounds", n, args))
        return {"rows": rows, "speedup": {str(n): _speedup(rows, n) for n in self.cfg.sharing_clients}}

    def cache(self) -> dict[str, Any]:
        n = self.cfg.cache_clients
        args = {"mode": "shared", "rounds_": self.cfg.cache_rounds, "concurrency": self.cfg.concurrency,
                **self._shared}
        off = self.cell("cache-off", "rounds", n, args)
        with tempfile.TemporaryDirectory(prefix="anther-feature-cache-") as cache_dir:
            on = self.cell("cache-on", "rounds", n, {**args, "cache_dir": cache_dir})
        return {"off": off, "on": on}

    def batching(self) -> dict[str, Any]:
        n = self.cfg.batching_clients
        args = {"clients": n, "seconds": self.cfg.batching_seconds}
        on = self.cell("batching-on", "batching", n, {**args, "policy": self.policy})
        off = self.cell("batching-off", "batching", n, {**args, "policy": {**self.policy, "enabled": False}})
        return {"on": on, "off": off, "gain": significant(on["samples_per_s"] / off["samples_per_s"])}

    def scale(self) -> dict[str, Any]:
        c = self.cfg
        return self.cell("scale", "rounds", c.scale_clients,
                         {"mode": "shared", "rounds_": c.scale_rounds, "concurrency": c.concurrency,
                          **self._shared}, f"train.local_steps={c.scale_local_steps}")

    def modes(self) -> dict[str, Any]:
        c = self.cfg
        return modes_section(c.experiment, list(c.modes_overrides), list(c.modes), self.out / "modes", c.config_dir)

    def trainstep(self) -> dict[str, Any]:
        c = self.cfg
        device = resolve_device(c.trainstep_device)
        if device == "cpu" and c.trainstep_model != "experiment" and c.trainstep_device == "auto":
            return {"skipped": (f"no CUDA device here: a {c.trainstep_model}-sized TrainStep takes minutes on a "
                                "CPU (trainstep_device=cpu runs it anyway; trainstep_model=experiment "
                                "measures the experiment's own LLM)")}
        experiment_model = None
        if c.trainstep_model == "experiment":
            experiment_model = prepare_assets(load_config(c.experiment, list(c.overrides), c.config_dir)).model.path
        spec = {"settings": asdict(self.trainstep_settings(device)), "experiment_model": experiment_model,
                "torch_threads": self.threads}
        return self.child("trainstep", "anther.bench.perf.trainstep", spec)

    def trainstep_settings(self, device: str) -> TrainStepSettings:
        """The trainstep section's settings on ``device`` (anther/bench/device/trainstep.json holds the
        default config's, for a GPU machine without Flower)."""
        c = self.cfg
        return TrainStepSettings(
            model=c.trainstep_model, dtype=c.trainstep_dtype, device=device, seq_len=c.trainstep_seq_len,
            batch_sizes=list(c.trainstep_batch_sizes), concurrency=list(c.trainstep_concurrency),
            client_batch=c.trainstep_client_batch, steps=c.trainstep_steps, warmup=c.trainstep_warmup,
            seconds=c.trainstep_seconds, peak_tflops=c.trainstep_peak_tflops, window_ms=c.window_ms,
            max_batch=c.max_batch)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"benchmark": "perf", "config": OmegaConf.to_container(self.cfg),
                                  "environment": describe(self.threads), "sections": {}}
        for name in tqdm(list(self.cfg.sections), desc="perf bench", unit="section", disable=None):
            began = time.perf_counter()
            result["sections"][name] = {**getattr(self, name)(), "section_s": round(time.perf_counter() - began, 1)}
            (self.out / "perf.json").write_text(json.dumps(result, indent=1))
        return result


def _speedup(rows: list[dict[str, Any]], clients: int) -> float:
    """Round time with a model per client over round time with the shared backbone (last round)."""
    by_mode = {r["mode"]: r for r in rows if r["clients"] == clients}
    return significant(by_mode["copies"]["round_s"][-1] / by_mode["shared"]["round_s"][-1])

