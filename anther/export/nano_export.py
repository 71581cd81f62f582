"""Split mode's export: the global NanoAdapters with what it takes to use them again.

An export folder holds ``adapters.safetensors`` (the NanoAdapters of one round), ``config.yaml``
(the run's config: model family, adapter shape, chat format, data settings), ``anther_export.json``
(what it is, the base checkpoint's path and fingerprint, the prompt format, the round) and a
model card, ``README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from safetensors.torch import save_file

from anther.export.model_card import model_card
from anther.export.run_artifacts import ExportError, RunArtifacts
from anther.model.chat_format import ChatFormat
from anther.model.families import load_processor
from anther.model.side_loading import checkpoint_fingerprint

EXPORT_FILE = "anther_export.json"
FORMAT_VERSION = 1


def base_model(cfg) -> dict[str, str]:
    """The base checkpoint a run trained on: path, fingerprint, family."""
    path = Path(cfg.model.path)
    if not (path / "config.json").is_file():
        raise ExportError(f"the run's base checkpoint {path} is not there (model.path in its config.yaml)")
    family = json.loads((path / "config.json").read_text())["model_type"]
    return {"path": str(path), "fingerprint": checkpoint_fingerprint(path), "family": family}


def prompt_format(cfg) -> dict[str, Any]:
    """How the run addressed the model: the chat template itself, the system text, the options."""
    processor = load_processor(cfg.model.path)
    chat = ChatFormat.for_processor(processor, cfg.model.chat_template, where=f"checkpoint {cfg.model.path}")
    return {"chat_template": chat.template, "system_prompt": cfg.model.system_prompt,
            "max_listed_options": cfg.data.max_listed_options, "modality_agnostic": cfg.data.modality_agnostic_prompt}


def prepare_out(out: Path) -> Path:
    """An empty folder to export into (an existing non-empty one is refused, never overwritten)."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_adapters(run: RunArtifacts, out: Path, server_round: int | None = None) -> Path:
    """Write the NanoAdapters of ``server_round`` (default the last) of ``run`` into ``out``."""
    if run.cfg.mode != "split":
        raise ExportError(f"{run.run_dir} ran mode={run.cfg.mode}: export it in peft's format (the default for "
                          "whole-model runs)")
    chosen, adapters = run.adapters(server_round)
    base = base_model(run.cfg)
    out = prepare_out(out)
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(out / "adapters.safetensors"))
    write_manifest(out, run, chosen, "nano_adapters", base)
    (out / "README.md").write_text(model_card(run.cfg, run.result, chosen, "nano_adapters", base, merged=False))
    return out


def write_manifest(out: Path, run: RunArtifacts, server_round: int, kind: str, base: dict[str, str]) -> None:
    """``anther_export.json`` and the run's ``config.yaml`` (how to build the model again)."""
    OmegaConf.save(run.cfg, out / "config.yaml")
    a = run.cfg.adapter
    (out / EXPORT_FILE).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "kind": kind, "round": server_round, "run": str(run.run_dir),
        "base_model": base, "adapter": {"rank": a.rank, "alpha": a.alpha, "activation": a.activation},
        "prompt": prompt_format(run.cfg), "metrics": run.round_metrics(server_round)}, indent=2))


def copy_processor(cfg, out: Path) -> None:
    """The base checkpoint's processor files (tokenizer, image processor, chat template) into ``out``."""
    load_processor(cfg.model.path).save_pretrained(out)

