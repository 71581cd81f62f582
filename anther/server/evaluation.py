"""Server-side evaluation of the global NanoAdapters on a held-out test set.

The server already holds the model's public checkpoint, so it builds its own NanoEdge
(frozen encoder + connector + embeddings) to evaluate the global adapters on data no
client owns: multiple-choice accuracy, exact match of greedy generation, per task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anther.client.inference import evaluate_samples
from anther.client.runtime import runtime_for
from anther.data.client_data import split_samples


class ServerEvaluator:
    def __init__(self, cfg, data_folder: Path) -> None:
        self.runtime = runtime_for(cfg)
        self.samples = split_samples(cfg, Path(data_folder), "test", limit=cfg.eval.server_test_size)
        self.cfg = cfg

    def __call__(self, adapters: dict[str, torch.Tensor]) -> dict[str, float]:
        self.runtime.edge.load_adapter_state(adapters)
        e = self.cfg.eval
        return evaluate_samples(self.runtime.encoder, self.runtime.backbone, self.samples,
                                generate=e.generate, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
