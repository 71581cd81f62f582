"""A split-mode run merged into a standard Hugging Face checkpoint of the family's own class.

NanoAdapter-T is a function of the token id alone (it acts on one token's embedding), so it folds
exactly into the embedding table: every row ``e_v`` becomes ``adapter(e_v)``. NanoAdapter-I acts on
the connector's output through a nonlinear bottleneck (``h + s * up(act(down(h)))``), and no
weight of the checkpoint can hold that: a merge is refused unless the image adapter is still the
identity (its up projection zero). A linear image adapter would be mergeable, folded into the
connector's last linear layer; anther's adapters are not linear, so that is not offered.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anther.export.model_card import model_card
from anther.export.nano_export import base_model, copy_processor, prepare_out, write_manifest
from anther.export.run_artifacts import ExportError, RunArtifacts
from anther.model.families import family_for
from anther.model.nano_adapter import NanoAdapter, NanoAdapterConfig


def adapter_of(state: dict[str, torch.Tensor], name: str, cfg) -> NanoAdapter:
    """The NanoAdapter ``name`` (``image`` or ``text``) of an adapter state, in float32."""
    dim = state[f"{name}.up.weight"].shape[0]
    adapter = NanoAdapter(dim, NanoAdapterConfig(cfg.adapter.rank, float(cfg.adapter.alpha), cfg.adapter.activation))
    adapter.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in state.items() if k.startswith(f"{name}.")})
    return adapter.eval()


def is_identity(adapter: NanoAdapter) -> bool:
    return not adapter.up.weight.any() and not adapter.up.bias.any()


@torch.no_grad()
def merge_text_adapter(model: torch.nn.Module, text: NanoAdapter) -> None:
    """Every row of ``model``'s input embedding table through ``text``, in place."""
    table = model.get_input_embeddings().weight
    table.copy_(text(table.float()).to(table.dtype))


def export_merged(run: RunArtifacts, out: Path, server_round: int | None = None) -> Path:
    """Write ``run``'s base checkpoint with its NanoAdapters folded in, as a checkpoint of the
    family's own class that plain transformers loads."""
    if run.cfg.mode != "split":
        raise ExportError("--merge of a whole-model run goes through peft: export it without --merge-nano")
    chosen, state = run.adapters(server_round)
    image = adapter_of(state, "image", run.cfg)
    if not is_identity(image):
        raise ExportError(
            "cannot merge exactly: NanoAdapter-I is trained (its up projection is not zero), and it acts on the "
            "connector's output through a nonlinear bottleneck that no weight of the checkpoint can hold. Export "
            "the adapters without --merge and load them with anther (anther.load / anther predict); "
            "docs/export.md says what would make a run mergeable")
    base = base_model(run.cfg)
    family = family_for(base["family"])
    model = family.model_class.from_pretrained(base["path"], dtype=getattr(torch, run.cfg.model.dtype)).eval()
    merge_text_adapter(model, adapter_of(state, "text", run.cfg))
    out = prepare_out(out)
    model.save_pretrained(out)
    copy_processor(run.cfg, out)
    write_manifest(out, run, chosen, "merged", base)
    (out / "README.md").write_text(model_card(run.cfg, run.result, chosen, "nano_adapters", base, merged=True))
    return out
