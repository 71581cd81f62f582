"""One measurement of ``anther bench perf``, run in a fresh process of its own so that its peak
memory is its own: ``python -m anther.bench.perf.cells SPEC.json OUT.json``.

A spec names the cell (``bare``, ``rounds``, ``batching``) and its settings; the cell writes its
measurements to OUT.json. :mod:`anther.bench.perf.bench` builds the specs and reads the
results.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import causal_lm_loss
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.bench.perf.service_load import send_train_steps
from anther.bench.perf.workload import (
    Federation,
    MemoryTrace,
    ModelPerClientFederation,
    SharedBackboneFederation,
    Workload,
    rss_bytes,
)
from anther.model.families import load_processor
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder

MB = 2**20


def bare(work: Workload, steps: int, warmup: int, repeats: int = 3) -> dict[str, Any]:
    """The same model, adapters, batch size and samples in a plain training loop: the composed
    model's loss, ``loss.backward()``, the optimizer step. No Flower, no service, no split."""
    model = work.load_model()
    edge = NanoEdge.from_model(model, work.adapter_config)
    edge.load_adapter_state(work.initial_state(model))
    head = InProcessBackbone.from_model(model, work.model_path)  # the frozen decoder and LM head
    encoder = SampleEncoder(edge, load_processor(work.model_path))
    samples = [s for client in work.clients for s in client]
    t = work.cfg.train
    params = [p for p in edge.adapters.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    rng = random.Random(work.cfg.seed)
    edge.train()

    def step() -> None:
        batch_samples = rng.sample(samples, t.batch_size)
        batch = encoder(batch_samples, [s.answer for s in batch_samples])
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = causal_lm_loss(head.logits(edge(batch), batch.attention_mask), batch.labels)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):  # a loop of a few seconds on a shared CPU varies; report the median
        began = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times)
    return {"steps": steps, "samples": steps * t.batch_size, "repeats_s": [round(x, 3) for x in times],
            "seconds": round(seconds, 3), "samples_per_s": round(steps * t.batch_size / seconds, 2)}


def rounds(work: Workload, mode: str, rounds_: int, concurrency: int, policy: dict | None = None,
           cache_dir: str | None = None, backbone_threads: int = 1) -> dict[str, Any]:
    """``rounds_`` rounds of every client with the backbone ``shared`` (batching by ``policy``,
    computing on ``backbone_threads``) or a model per client (``copies``): each round's time and
    samples, and memory over the whole cell."""
    before = rss_bytes()
    with MemoryTrace() as trace:
        began = time.perf_counter()
        fed: Federation
        if mode == "shared":
            fed = SharedBackboneFederation(work, concurrency, BatchPolicy(**(policy or {})), backbone_threads,
                                           Path(cache_dir) if cache_dir else None)
        else:
            fed = ModelPerClientFederation(work, concurrency)
        setup_s = time.perf_counter() - began
        clients = list(range(len(work.clients)))
        results = [fed.round(clients, r) for r in range(1, rounds_ + 1)]
        fed.close()
    cache = fed.cache
    return {
        "mode": mode, "clients": len(clients), "concurrency": concurrency, "setup_s": round(setup_s, 3),
        "round_s": [round(r.seconds, 3) for r in results], "samples_per_round": results[0].samples,
        "samples_per_s": [round(r.samples_per_s, 2) for r in results],
        "rss_start_mb": round(before / MB, 1), "peak_rss_mb": round(trace.peak_bytes / MB, 1),
        **({"client_load_s": round(fed.load_s, 3), "client_s": round(fed.client_s, 3)}
           if isinstance(fed, ModelPerClientFederation) else {}),
        **({"cache_hits": cache.hits, "cache_misses": cache.misses, "cache_mb": round(cache.size_bytes() / MB, 2)}
           if cache else {}),
        "memory_mb": [(t, round(b / MB, 1)) for t, b in trace.samples[:: max(1, len(trace.samples) // 200)]],
    }


def batching(work: Workload, clients: int, seconds: float, policy: dict) -> dict[str, Any]:
    """Backbone train-step throughput: ``clients`` threads, each sending its own real batch (its
    NanoEdge's embeddings) again and again for ``seconds``, to one service."""
    model = work.load_model()
    service = BackboneService(InProcessBackbone.from_model(model, work.model_path), BatchPolicy(**policy))
    server, port = start(service)
    encoder = SampleEncoder(NanoEdge.from_model(model, work.adapter_config), load_processor(work.model_path))
    b = work.cfg.train.batch_size
    requests = []
    for c in range(clients):
        batch = encoder(work.clients[c][:b], [s.answer for s in work.clients[c][:b]])
        with torch.no_grad():
            requests.append((encoder.edge(batch), batch.attention_mask, batch.labels))
    load = send_train_steps(service, port, requests, seconds)
    server.stop(None)
    service.close()
    return {"clients": clients, "batching": policy["enabled"], "requests": load.requests,
            "seconds": round(load.seconds, 3), "samples_per_s": round(load.requests * b / load.seconds, 2),
            "mean_requests_per_pass": round(load.requests_per_pass, 2)}


CELLS = {"bare": bare, "rounds": rounds, "batching": batching}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the spec's workload and run its cell; the result records the spec and torch's threads."""
    # clients training at once share the cores: like the simulation's ClientApps (client/runtime.py)
    # each computes on one thread, which also keeps to one OpenMP pool per thread
    torch.set_num_threads(spec["torch_threads"] if spec["cell"] == "bare" else 1)
    work = Workload.load(spec["experiment"], spec["overrides"], spec.get("config_dir"))
    began = time.perf_counter()
    result = CELLS[spec["cell"]](work, **spec["args"])
    return {"spec": spec, "torch_threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - began, 3),
            **result}


def main() -> None:
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    out_path.write_text(json.dumps(run(json.loads(spec_path.read_text())), indent=1))


if __name__ == "__main__":
    main()
