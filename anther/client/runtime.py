"""What a client process keeps between rounds: processor, NanoEdge and backbone handle.

Loaded once per process and reused by every (simulated) client that process serves;
each message then loads the global adapters it carries, so no state leaks between clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import transformers
from omegaconf import DictConfig
from transformers import AutoConfig, AutoProcessor

from anther.adapters.families import family_for
from anther.adapters.nano_adapter import NanoAdapterConfig
from anther.client.inference import Encoder
from anther.client.nano_edge import NanoEdge
from anther.server.backbone import Backbone, LocalBackbone

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ClientRuntime:
    encoder: Encoder
    backbone: Backbone

    @property
    def edge(self) -> NanoEdge:
        return self.encoder.edge


@lru_cache(maxsize=4)
def load_runtime(model_path: str, dtype: str, rank: int, alpha: float, activation: str,
                 modality_agnostic: bool) -> ClientRuntime:
    """Processor + NanoEdge (+ an in-process backbone until the backbone service is used)."""
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # simulated clients share the cores; one thread each is fastest
    adapter = NanoAdapterConfig(rank=rank, alpha=alpha, activation=activation)
    config = AutoConfig.from_pretrained(model_path)
    model = family_for(config.model_type).model_class.from_pretrained(model_path, dtype=DTYPES[dtype])
    edge = NanoEdge.from_model(model, adapter)  # both halves share one load of the checkpoint
    backbone = LocalBackbone.from_model(model, model_path)
    processor = AutoProcessor.from_pretrained(model_path)
    return ClientRuntime(Encoder(edge, processor, modality_agnostic), backbone)


def runtime_for(cfg: DictConfig, rank: int | None = None) -> ClientRuntime:
    """The runtime an experiment config asks for (``rank`` overrides ``adapter.rank``)."""
    a = cfg.adapter
    return load_runtime(cfg.model.path, cfg.model.dtype, rank or a.rank, float(a.alpha), a.activation,
                        cfg.data.modality_agnostic_prompt)
