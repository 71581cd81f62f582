"""What a client process keeps between rounds: processor, NanoEdge and backbone handle.

Loaded once per process and reused by every (simulated) client that process serves;
each message then loads the global adapters it carries, so no state leaks between clients.
The backbone is an in-process copy of the frozen LLM (``backbone.mode=in_process``) or a
connection to the backbone service (``service`` / ``remote``); the trainer and the
evaluation cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import DictConfig
from torch import nn

from anther.backbone.endpoint import BackboneEndpoint, endpoint_for
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import Backbone
from anther.backbone.wire_emulation import WireEmulation
from anther.client.private_labels import PrivateLabelBackbone
from anther.core.config import anther_home, wire_dtype
from anther.model.chat_format import ChatFormat
from anther.model.edge_quantization import quantize_for_cpu
from anther.model.families import family_for, load_processor
from anther.model.feature_cache import FeatureCache
from anther.model.lora import LoraSettings, inject_lora
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.placement import autocaster, resolve_device
from anther.model.sample_encoder import SampleEncoder
from anther.model.side_loading import checkpoint_fingerprint, load_side


@dataclass
class ClientRuntime:
    encoder: SampleEncoder
    backbone: Backbone

    @property
    def edge(self) -> NanoEdge:
        return self.encoder.edge


@dataclass(frozen=True)
class EdgeSpec:
    """Which NanoEdge to build: checkpoint, dtype and adapter shape."""

    model_path: str
    dtype: str
    rank: int
    alpha: float
    activation: str
    modality_agnostic: bool
    private_labels: bool = False  # the client computes head and loss (anther.client.private_labels)
    feature_cache_dir: str | None = None  # None: no feature cache
    feature_cache_max_bytes: int = 0
    lora: LoraSettings | None = None  # mode=whole_model: LoRA in the LLM instead of NanoAdapters
    device: str = "auto"  # model.client_device (anther.model.placement)
    autocast: str = "none"  # model.autocast, for the frozen modules
    chat_template: str | None = None  # model.chat_template: None is the checkpoint's own
    system_prompt: str | None = None
    max_listed_options: int = 8
    vision_quantization: str = "none"  # model.vision_quantization: int8 for the edge profile


@lru_cache(maxsize=4)
def _client_side(
    spec: EdgeSpec, local_backbone: bool
) -> tuple[SampleEncoder, InProcessBackbone | None, nn.Module | None]:
    """Processor + NanoEdge, the in-process backbone if asked for, and the LM head (for private
    labels): one load of the checkpoint, of only the modules these need
    (:mod:`anther.model.side_loading`): without the local backbone the LLM's decoder layers
    are never read. With ``spec.lora`` (``mode=whole_model``) the NanoEdge's adapters are LoRA inside
    the in-process backbone's decoder."""
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # simulated clients share the cores; one thread each is fastest
    adapter = NanoAdapterConfig(rank=spec.rank, alpha=spec.alpha, activation=spec.activation)
    device = resolve_device(spec.device)
    model = load_side(spec.model_path, "both" if local_backbone else "client", head=spec.private_labels,
                      dtype=getattr(torch, spec.dtype)).to(device)
    family = family_for(model.config.model_type)
    edge = NanoEdge.from_model(model, adapter)  # both halves share one load of the checkpoint
    edge.autocast = autocaster(device, spec.autocast)
    if spec.vision_quantization == "int8":
        edge.vision_tower, edge.connector = quantize_for_cpu(edge.vision_tower), quantize_for_cpu(edge.connector)
    if spec.feature_cache_dir is not None:
        edge.feature_cache = FeatureCache.for_model(Path(spec.feature_cache_dir), Path(spec.model_path), spec.dtype,
                                                    spec.feature_cache_max_bytes)
    backbone = InProcessBackbone.from_model(model, spec.model_path) if local_backbone else None
    if backbone is not None:
        backbone.autocast = edge.autocast
    if spec.lora is not None:
        if backbone is None:
            raise ValueError("mode=whole_model trains LoRA inside the LLM: it needs the backbone in this process")
        edge.adapters = nn.ModuleDict({"lora": inject_lora(backbone.decoder, spec.lora)})
        backbone.counts_traffic = False  # one process, nothing crosses a wire
    processor = load_processor(spec.model_path)
    head = family.backbone_parts(model)[1] if spec.private_labels else None
    chat = ChatFormat.for_processor(processor, spec.chat_template, where=f"checkpoint {spec.model_path}")
    encoder = SampleEncoder(edge, processor, spec.modality_agnostic, chat, spec.system_prompt, spec.max_listed_options)
    return encoder, backbone, head


@lru_cache(maxsize=8)
def load_runtime(spec: EdgeSpec, endpoint: BackboneEndpoint | None, wire_dtype: str = "float32") -> ClientRuntime:
    """The NanoEdge of ``spec`` with an in-process backbone (``endpoint`` None) or a connection to
    one. A process that serves clients of several backbone replicas loads the NanoEdge once and
    holds one connection per replica. An in-process backbone of split mode is reached through the
    wire emulated in ``wire_dtype`` (:mod:`anther.backbone.wire_emulation`), so the client trains on
    what a remote one would receive."""
    encoder, local, head = _client_side(spec, endpoint is None)
    if endpoint is None:
        backbone: Backbone = local if spec.lora is not None else WireEmulation(local, wire_dtype)
    else:
        backbone = endpoint.connect(fingerprint=checkpoint_fingerprint(Path(spec.model_path)))
    if spec.private_labels:
        backbone = PrivateLabelBackbone(backbone, head)
    return ClientRuntime(encoder, backbone)


def runtime_for(cfg: DictConfig, rank: int | None = None,
                node_config: Mapping[str, Any] | None = None) -> ClientRuntime:
    """The runtime an experiment config asks for (``rank`` overrides ``adapter.rank``).

    ``node_config`` is this SuperNode's ``--node-config``: its ``backbone-*`` keys (token
    file, certificate, CA, address) override the run config's, see
    :mod:`anther.backbone.endpoint`.
    """
    a, fc = cfg.adapter, cfg.feature_cache
    cache_dir = (fc.dir or str(anther_home() / "feature-cache")) if fc.enabled else None
    lora = None
    if cfg.mode == "whole_model":
        lo = cfg.lora
        lora = LoraSettings(rank or lo.rank, float(lo.alpha), float(lo.dropout), tuple(lo.target_modules))
    m = cfg.model
    spec = EdgeSpec(m.path, m.dtype, rank or a.rank, float(a.alpha), a.activation,
                    cfg.data.modality_agnostic_prompt, bool(cfg.backbone.get("private_labels", False)),
                    cache_dir, int(fc.max_mb * 2**20), lora, m.client_device, m.autocast, m.chat_template,
                    m.system_prompt, cfg.data.max_listed_options, m.vision_quantization)
    return load_runtime(spec, endpoint_for(cfg, node_config), wire_dtype(cfg))
