"""``anther.load(PATH)``: a run's or an export's adapters, ready to answer.

PATH is a run folder (its last checkpoint, or ``round=N``), an export of NanoAdapters or of peft
LoRA, or a merged checkpoint (``anther export --merge``). The predictor builds what a client builds
(the checkpoint's NanoEdge, its chat format, the backbone in this process or a backbone service's
connection, as the run's config or ``overrides`` say) and answers in the run's own prompt format:

    model = anther.load("runs/default-20261202-213339")
    model.generate([Image.open("cat.png")], ["what animal is this?"])         # ["cat"]
    model.score([Image.open("cat.png")], ["what animal is this?"], [["cat", "dog"]])
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from safetensors.torch import load_file

from anther.client.inference import answer_samples
from anther.client.runtime import ClientRuntime, runtime_for
from anther.core.config import ConfigError, read_saved_config, validate
from anther.core.images import in_memory
from anther.core.sample import Sample
from anther.export.nano_export import EXPORT_FILE
from anther.export.run_artifacts import ExportError, RunArtifacts
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.model.side_loading import checkpoint_fingerprint
from anther.strategies.personalised import PersonalisedAdapters


class Predictor:
    """Generation and multiple-choice scoring with one set of adapters."""

    def __init__(self, runtime: ClientRuntime, cfg: DictConfig, state: dict[str, torch.Tensor],
                 local: dict[str, torch.Tensor] | None = None, mix: float = 0.0) -> None:
        self.runtime, self.cfg, self.state = runtime, cfg, state
        self.local, self.mix = local, mix  # a personalised site's local adapters, and their weight

    @contextmanager
    def answering(self) -> Iterator[ClientRuntime]:
        """The runtime with this predictor's adapters in it (a process shares one runtime per
        checkpoint), global + mix * local for a personalised site's export."""
        self.runtime.edge.load_adapter_state(self.state)
        if self.local is None:
            yield self.runtime
            return
        with PersonalisedAdapters(self.runtime.edge.adapters, self.mix, self.local).combined():
            yield self.runtime

    def samples(self, images: Sequence[Image.Image | str | Path | None], questions: Sequence[str],
                options: Sequence[Sequence[str]] | None = None,
                contexts: Sequence[str] | None = None) -> list[Sample]:
        """The questions as Samples (an image may be a path; None asks about text alone)."""
        if len(images) != len(questions) or (options is not None and len(options) != len(questions)):
            raise ValueError(f"give one image (or None) and one list of options per question: {len(questions)} "
                             f"questions, {len(images)} images, {len(options) if options else 0} option lists")
        out = []
        for i, (image, question) in enumerate(zip(images, questions)):
            picture = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image
            choices = list(options[i]) if options is not None else []
            out.append(Sample(id=str(i), question=question, answer=choices[0] if choices else "-", options=choices,
                              context=contexts[i] if contexts else "", images=in_memory(picture)))
        return out

    def generate(self, images, questions, contexts=None, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers, each up to ``max_new_tokens`` tokens (stopping at the end of the turn)."""
        samples = self.samples(images, questions, contexts=contexts)
        with self.answering() as runtime:
            return answer_samples(runtime.encoder, runtime.backbone, samples, generate=True,
                                  max_new_tokens=max_new_tokens).generated

    def score(self, images, questions, options, contexts=None) -> list[dict[str, float]]:
        """Each option's log-likelihood as the answer (its tokens and the end of the turn)."""
        samples = self.samples(images, questions, options, contexts)
        with self.answering() as runtime:
            answers = answer_samples(runtime.encoder, runtime.backbone, samples, generate=False)
        return [dict(zip(s.options, sc)) for s, sc in zip(samples, answers.scores)]


def load(path: str | Path, base: str | Path | None = None, overrides: Sequence[str] = (),
         server_round: int | None = None) -> Predictor:
    """A :class:`Predictor` from a run folder or an export. ``base`` is the base checkpoint where it
    is not where the run had it (its fingerprint must match); ``overrides`` are config keys
    (``backbone.mode=remote backbone.address=HOST:PORT ...``, ``model.client_device=cuda``)."""
    path = Path(path).expanduser()
    local, mix = None, 0.0
    if (path / EXPORT_FILE).is_file():
        manifest = json.loads((path / EXPORT_FILE).read_text())
        cfg = read_saved_config(path / "config.yaml") if (path / "config.yaml").is_file() else None
        if manifest["kind"] == "merged":
            return _merged(path, overrides)
        cfg = _configured(cfg, manifest["base_model"], base, overrides)
        state = _export_state(path, manifest["kind"])
        if manifest["kind"] == "personalised":
            local, mix = load_file(str(path / "local_adapters.safetensors")), manifest["personal"]["mix"]
    else:
        run = RunArtifacts.read(path)
        cfg = _configured(run.cfg, None, base, overrides)
        _, state = run.adapters(server_round)
    runtime = runtime_for(cfg)
    return Predictor(runtime, cfg, _as_edge_state(runtime, state), local, mix)


def _configured(cfg: DictConfig | None, recorded_base: dict | None, base, overrides: Sequence[str]) -> DictConfig:
    if cfg is None:
        raise ExportError("the export has no config.yaml: it was not written by anther export")
    cfg = cfg.copy()
    if cfg.backbone.mode == "service":  # that service ended with its run
        OmegaConf.update(cfg, "backbone.mode", "in_process")
    if base is not None:
        OmegaConf.update(cfg, "model.path", str(Path(base).expanduser().resolve()))
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {' '.join(overrides)}: {e}".splitlines()[0]) from None
    model_path = Path(cfg.model.path)
    if not (model_path / "config.json").is_file():
        raise ExportError(f"the base checkpoint {model_path} is not there: pass the base model (--base / base=)")
    if recorded_base is not None and checkpoint_fingerprint(model_path) != recorded_base["fingerprint"]:
        raise ExportError(f"{model_path} is not the checkpoint these adapters were trained on (fingerprint "
                          f"{checkpoint_fingerprint(model_path)}, the export's base {recorded_base['path']} had "
                          f"{recorded_base['fingerprint']})")
    return validate(cfg)


def _export_state(path: Path, kind: str) -> dict[str, torch.Tensor]:
    if kind in ("nano_adapters", "personalised"):
        return load_file(str(path / "adapters.safetensors"))
    if kind == "peft":
        return {"peft:" + k: v for k, v in load_file(str(path / "adapter_model.safetensors")).items()}
    raise ExportError(f"{path}: unknown export kind {kind!r}")


def _as_edge_state(runtime: ClientRuntime, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` named as the NanoEdge names its adapters (peft's keys mapped onto LoRA's)."""
    if not any(k.startswith("peft:") for k in state):
        return state
    mine = runtime.edge.adapter_state()
    out = {}
    for key in mine:  # lora.layers-0-self_attn-q_proj.A.weight <- ...layers.0.self_attn.q_proj.lora_A.weight
        layer, matrix, _ = key.removeprefix("lora.").rsplit(".", 2)
        suffix = f".{layer.replace('-', '.')}.lora_{matrix}.weight"
        (found,) = [v for k, v in state.items() if k.endswith(suffix)]
        out[key] = found
    return out


def _merged(path: Path, overrides: Sequence[str]) -> Predictor:
    """A merged checkpoint: the base model it now is, with identity adapters, in split mode."""
    cfg = read_saved_config(path / "config.yaml") if (path / "config.yaml").is_file() else None
    cfg = _configured(cfg, None, path, ["mode=split", *overrides])
    runtime = runtime_for(cfg)
    dim = runtime.edge.adapter_state()["text.up.weight"].shape[0]
    a = cfg.adapter
    identity = initial_adapter_state(dim, NanoAdapterConfig(a.rank, float(a.alpha), a.activation), cfg.seed)
    return Predictor(runtime, cfg, identity)
