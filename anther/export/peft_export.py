"""A whole-model run's LoRA in peft's own format, or merged into the model through peft.

anther injects LoRA into the LLM's decoder (:mod:`anther.model.lora`); here the same matrices are
put into a ``PeftModel`` of the whole checkpoint, with target modules named by their full paths so
nothing else (the vision tower has ``q_proj`` layers too) is touched, and saved as peft saves
them: ``adapter_config.json`` and ``adapter_model.safetensors``, which
``PeftModel.from_pretrained(base_model, DIR)`` loads. ``merge`` applies peft's
``merge_and_unload`` and saves a plain checkpoint of the family's own class.
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch

from anther.export.model_card import model_card
from anther.export.nano_export import base_model, copy_processor, prepare_out, write_manifest
from anther.export.run_artifacts import ExportError, RunArtifacts
from anther.model.families import family_for
from anther.model.lora import ADAPTER


def lora_layers(state: dict[str, torch.Tensor]) -> list[str]:
    """The adapted layers of a LoRA state (``layers-0-self_attn-q_proj``), in order."""
    return list(dict.fromkeys(k.rsplit(".", 2)[0] for k in state))


def peft_model_of(run: RunArtifacts, state: dict[str, torch.Tensor]) -> peft.PeftModel:
    """The run's base checkpoint as a ``PeftModel`` holding ``state``'s LoRA weights (the NanoEdge's
    names, ``lora.layers-0-self_attn-q_proj.A.weight``)."""
    state = {k.removeprefix("lora."): v for k, v in state.items()}
    base = base_model(run.cfg)
    family = family_for(base["family"])
    model = family.model_class.from_pretrained(base["path"], dtype=getattr(torch, run.cfg.model.dtype)).eval()
    decoder = family.backbone_parts(model)[0]
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    layers = lora_layers(state)
    lo = run.cfg.lora
    config = peft.LoraConfig(r=int(lo.rank), lora_alpha=float(lo.alpha), lora_dropout=float(lo.dropout),
                             target_modules=[f"{prefix}.{layer.replace('-', '.')}" for layer in layers])
    config.base_model_name_or_path = base["path"]
    wrapped = peft.get_peft_model(model, config, adapter_name=ADAPTER)
    with torch.no_grad():
        for layer in layers:
            module = wrapped.base_model.model.get_submodule(f"{prefix}.{layer.replace('-', '.')}")
            module.lora_A[ADAPTER].weight.copy_(state[f"{layer}.A.weight"])
            module.lora_B[ADAPTER].weight.copy_(state[f"{layer}.B.weight"])
    return wrapped.eval()


def export_peft(run: RunArtifacts, out: Path, server_round: int | None = None, merge: bool = False) -> Path:
    """Write ``run``'s LoRA of ``server_round`` (default the last) in peft's format, or merged."""
    if run.cfg.mode != "whole_model":
        raise ExportError(f"{run.run_dir} ran mode=split: it has NanoAdapters, not LoRA; export it without --peft")
    chosen, state = run.adapters(server_round)
    wrapped = peft_model_of(run, state)
    out = prepare_out(out)
    if merge:
        wrapped.merge_and_unload().save_pretrained(out)
    else:
        wrapped.save_pretrained(out)
    copy_processor(run.cfg, out)
    base = base_model(run.cfg)
    write_manifest(out, run, chosen, "merged" if merge else "peft", base)
    (out / "README.md").write_text(model_card(run.cfg, run.result, chosen, "peft", base, merged=merge))
    return out
