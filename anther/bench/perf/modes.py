"""The *modes* section of ``anther bench perf``: split mode against whole-model mode, each with and
without the feature cache, as real federated runs of the same experiment.

Split mode runs with the backbone as a service (``backbone.mode=service``), so a client's
process holds what a real NanoEdge site holds. Per configuration it reports the final accuracy
on the server's test set, what one client sends per round (adapter weights; activations up and
gradients down), the median round time (round 1 excluded: it starts the client processes), and
what one client holds: frozen weights, trainable weights and AdamW's two moments of each.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from anther.client.runtime import runtime_for
from anther.simulations.assets import prepare_assets
from anther.simulations.experiment import load_config
from anther.simulations.runner import simulate

# configuration -> the overrides that select it
MODE_RUNS: dict[str, list[str]] = {
    "split": ["mode=split", "backbone.mode=service"],
    "split+cache": ["mode=split", "backbone.mode=service", "feature_cache.enabled=true"],
    "whole_model": ["mode=whole_model"],
    "whole_model+cache": ["mode=whole_model", "feature_cache.enabled=true"],
}


def held_bytes(cfg: DictConfig) -> dict[str, int]:
    """What one client of ``cfg`` holds in memory for training: its modules' weights (each
    tensor once) and AdamW's two moments per trainable weight. Activations are not counted."""
    # the whole model, to count from
    runtime = runtime_for(OmegaConf.merge(cfg, {"backbone": {"mode": "in_process"}}))
    modules: list[nn.Module] = [runtime.edge] if cfg.mode == "split" else [runtime.edge, runtime.backbone]
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    return {"frozen_bytes": frozen, "trainable_bytes": trainable, "optimizer_bytes": 2 * trainable,
            "total_bytes": frozen + 3 * trainable}


def run_mode(experiment: str, overrides: list[str], name: str, out: Path, config_dir: str | None = None
             ) -> dict[str, Any]:
    """One configuration's federated run into ``out/<name>``, and its row of the section."""
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run, not a resumed one
    full = [*overrides, *MODE_RUNS[name], f"run_dir={run_dir}"]
    log = out / f"{name}.log"
    code = simulate(experiment, full, log=log, config_dir=config_dir)
    if code != 0:
        raise RuntimeError(f"the {name} run of the modes section failed (exit {code}); see {log}")
    rounds = json.loads((run_dir / "result.json").read_text())["rounds"]
    trained = rounds[1:]
    per_client = {key: statistics.mean(r[key] / r["clients"] for r in trained)
                  for key in ("adapter_bytes_down", "adapter_bytes_up", "activation_bytes_up", "activation_bytes_down")}
    return {"mode": name, "overrides": full, "acc_per_round": [r.get("acc_mc") for r in rounds],
            "final_acc": rounds[-1].get("acc_mc"),
            "round_s": [round(r["seconds"], 3) for r in trained],
            "median_round_s": round(statistics.median(r["seconds"] for r in trained[1:] or trained), 3),
            "per_client_bytes": {k: round(v) for k, v in per_client.items()},
            "client_holds": held_bytes(prepare_assets(load_config(experiment, full, config_dir)))}


def modes_section(experiment: str, overrides: list[str], names: list[str], out: Path,
                  config_dir: str | None = None) -> dict[str, Any]:
    """The configurations ``names`` (keys of :data:`MODE_RUNS`), run one after another; the cache's
    speed-up and whole-model over split memory where both of a pair ran."""
    out.mkdir(parents=True, exist_ok=True)
    by = {name: run_mode(experiment, overrides, name, out, config_dir) for name in names}
    speedup = {m: round(by[m]["median_round_s"] / by[f"{m}+cache"]["median_round_s"], 3)
               for m in ("split", "whole_model") if m in by and f"{m}+cache" in by}
    holds = (round(by["whole_model"]["client_holds"]["total_bytes"] / by["split"]["client_holds"]["total_bytes"], 2)
             if {"split", "whole_model"} <= by.keys() else None)
    return {"rows": list(by.values()), "cache_speedup": speedup, "whole_model_over_split_holds": holds}
