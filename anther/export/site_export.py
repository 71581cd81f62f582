"""A personalised run's export on a site: the federation's global adapters and the site's own local
adapters (FedDPA's pair, :mod:`anther.strategies.personalised`), which never left the site.

The local part lives in the site's client state (:mod:`anther.client.state_store`,
``<state-dir>/<run>/partition-<id>/round-NNNN.pb``); the global part comes from the run folder or
from an adapter export the server published. The export is an adapter export with
``local_adapters.safetensors`` beside ``adapters.safetensors`` and the mix in its manifest;
``anther.load`` answers with global + mix * local, as the site's own evaluation did.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from anther.client.state_store import latest_saved_state
from anther.export.nano_export import EXPORT_FILE, export_adapters
from anther.export.run_artifacts import ExportError, RunArtifacts
from anther.strategies.personalised import LOCAL_ADAPTERS

DEFAULT_MIX = 0.5  # PersonalisedFedAvg's


def export_site(run: RunArtifacts, state_folder: Path, out: Path, server_round: int | None = None) -> Path:
    """``run``'s global adapters with this site's local ones from ``state_folder``."""
    if run.cfg.strategy.get("name") != "personalised":
        raise ExportError(f"{run.run_dir} ran strategy {run.cfg.strategy.get('name')!r}: only strategy.name="
                          "personalised leaves local adapters on the sites")
    saved = latest_saved_state(Path(state_folder).expanduser())
    if saved is None or LOCAL_ADAPTERS not in saved[1].array_records:
        raise ExportError(f"{state_folder} holds no local adapters of a personalised run (a site's state folder "
                          "is <state-dir>/<run>/partition-<id>)")
    state_round, state = saved
    out = export_adapters(run, out, server_round)
    save_file({k: v.contiguous() for k, v in state.array_records[LOCAL_ADAPTERS].to_torch_state_dict().items()},
              str(out / "local_adapters.safetensors"))
    manifest = json.loads((out / EXPORT_FILE).read_text())
    manifest["kind"] = "personalised"
    manifest["personal"] = {"mix": float(run.cfg.strategy.get("mix", DEFAULT_MIX)), "state_round": state_round,
                            "state_folder": str(state_folder)}
    (out / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))
    return out
