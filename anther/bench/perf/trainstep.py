"""The backbone's TrainStep at full size: tokens per second and model FLOPs utilisation (MFU).

The backbone is the LLM of a published MLLM (``trainstep_model``, a name of
:data:`anther.bench.model_sizes.REAL_CONFIGS`, LLaVA-1.5-7B by default) or of the
experiment's own checkpoint (``experiment``), built with **random weights** straight on the
device: speed does not depend on what the weights are, and nothing is downloaded. A step is
what a client's TrainStep request costs the server: the decoder and LM head forward, the loss,
and the backward pass to the input embeddings (the weights are frozen: no weight gradients).

- *in process*: one batch of ``batch`` sequences of ``seq_len`` tokens per step, inputs already
  on the device; for each batch size, steps per second, tokens per second and MFU.
- *service*: ``clients`` threads, each sending its own batch of ``client_batch`` sequences
  through a :class:`RemoteBackbone` to one batching :class:`BackboneService` on 127.0.0.1; what
  the service sustains, with serialisation, loopback gRPC and host-device copies included.

FLOPs are counted, not estimated: :class:`torch.utils.flop_counter.FlopCounterMode` records every
matrix product and attention kernel of one step of one sequence (a step's FLOPs grow linearly
with the batch). As PyTorch counts them, attention is full rather than causal and its backward
includes the flash kernels' recomputed scores; at 640 tokens of a 4096-wide model attention is
a few percent of the total. MFU divides the FLOPs per second by the device's dense peak for the dtype
(:data:`PEAK_TFLOPS`, or ``trainstep_peak_tflops``); a CPU has no entry, so on a CPU MFU is
reported only when a peak is given.

It runs in a process of its own, ``python -m anther.bench.perf.trainstep SPEC.json OUT.json``
(the perf bench's child), and needs only torch, transformers, grpc and omegaconf: a CUDA machine
can run it without Flower or Ray installed (docs/performance.md).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import AutoConfig

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.bench.model_sizes import REAL_CONFIGS
from anther.bench.perf.service_load import send_train_steps
from anther.model.side_loading import side_class

# Dense (no sparsity) peak TFLOPS per device, by a substring of torch.cuda.get_device_name(),
# from the vendors' data sheets; the first match wins, so the more specific names come first.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.2},
    "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6},
}


@dataclass(frozen=True)
class TrainStepSettings:
    model: str  # a REAL_CONFIGS name, or "experiment" for the experiment's checkpoint
    dtype: str
    device: str
    seq_len: int
    batch_sizes: list[int]
    concurrency: list[int]
    client_batch: int
    steps: int
    warmup: int
    seconds: float
    peak_tflops: float  # 0: look the device up in PEAK_TFLOPS
    window_ms: float
    max_batch: int


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def random_backbone(model: str, experiment_model: Path | None, dtype: torch.dtype, device: str) -> InProcessBackbone:
    """The LLM of ``model`` (decoder and LM head only) with random weights, built on ``device``;
    ``experiment``: the architecture of the checkpoint at ``experiment_model``."""
    if model == "experiment":
        if experiment_model is None:
            raise ValueError("trainstep_model=experiment needs the experiment's checkpoint")
        config = AutoConfig.from_pretrained(experiment_model)
    else:
        config = REAL_CONFIGS[model]()
    with torch.device(device):
        llm = side_class(config.model_type, "server")._from_config(config, dtype=dtype)
    return InProcessBackbone.from_model(llm, fingerprint=f"random-{model}")


def step_inputs(backbone: InProcessBackbone, batch: int, seq_len: int, device: str | torch.device,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A TrainStep's inputs: random embeddings in the backbone's dtype, a full mask, and the
    last quarter of each sequence labelled (an answer after image and prompt tokens)."""
    g = torch.Generator().manual_seed(seed)
    info = backbone.info
    embeds = torch.randn(batch, seq_len, info.hidden_size, generator=g).to(getattr(torch, info.dtype))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    labels = torch.randint(0, info.vocab_size, (batch, seq_len), generator=g)
    labels[:, : seq_len - seq_len // 4] = -100
    return embeds.to(device), mask.to(device), labels.to(device)


# PyTorch counts the CUDA attention kernels but has no formula for the CPU one: the same counts
# (FlopCounterMode passes these the arguments' shapes)
_aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def flops_per_sequence(backbone: InProcessBackbone, seq_len: int) -> int:
    """Floating-point operations of one TrainStep of one sequence, counted by running it."""
    inputs = step_inputs(backbone, 1, seq_len, backbone.device)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        backbone.train_step(*inputs)
    return counter.get_total_flops()


def peak_flops(device: str, dtype: str, override_tflops: float) -> float | None:
    """The device's dense peak in FLOP/s for ``dtype``; None where it is not known."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(dtype, 0.0) * 1e12 or None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rates(tokens: int, seconds: float, flops: float, peak: float | None) -> dict[str, float | None]:
    achieved = flops / seconds
    return {"tokens_per_s": round(tokens / seconds, 1), "tflops": round(achieved / 1e12, 4),
            "mfu": round(achieved / peak, 4) if peak else None}


def in_process(backbone: InProcessBackbone, s: TrainStepSettings, per_sequence: int,
               peak: float | None) -> list[dict[str, Any]]:
    """Steps of each batch size run directly on the backbone; a batch that does not fit in the
    device's memory is recorded as such and the larger ones are skipped."""
    rows: list[dict[str, Any]] = []
    device = backbone.device
    for batch in s.batch_sizes:
        inputs = step_inputs(backbone, batch, s.seq_len, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for _ in range(s.warmup):
                backbone.train_step(*inputs)
            _sync(device)
            began = time.perf_counter()
            for _ in range(s.steps):
                backbone.train_step(*inputs)
            _sync(device)
            seconds = time.perf_counter() - began
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "out_of_memory": True})
            break
        finally:
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({"batch": batch, "steps": s.steps, "step_ms": round(1000 * seconds / s.steps, 2),
                     **_rates(batch * s.seq_len * s.steps, seconds, per_sequence * batch * s.steps, peak),
                     "peak_memory_gb": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                        if device.type == "cuda" else None)})
    return rows


def through_service(backbone: InProcessBackbone, s: TrainStepSettings, per_sequence: int, peak: float | None,
                    max_batch: int) -> list[dict[str, Any]]:
    """For each concurrency level: that many clients sending TrainSteps to one batching service
    for ``s.seconds``; the service's throughput and how many requests each pass batched.
    A pass holds at most ``max_batch`` sequences."""
    rows = []
    for clients in s.concurrency:
        service = BackboneService(backbone, BatchPolicy(True, s.window_ms, max_batch),
                                  Limits(max_calls_per_client=clients))  # one host, many clients
        server, port = start(service)
        inputs = [step_inputs(backbone, s.client_batch, s.seq_len, "cpu", seed=i) for i in range(clients)]
        try:
            load = send_train_steps(service, port, inputs, s.seconds, wire_dtype=backbone.info.dtype)
        finally:
            server.stop(None)
            service.close()
        sequences = load.requests * s.client_batch
        rows.append({"clients": clients, "client_batch": s.client_batch, "requests": load.requests,
                     "seconds": round(load.seconds, 3), "mean_requests_per_pass": round(load.requests_per_pass, 2),
                     **_rates(sequences * s.seq_len, load.seconds, per_sequence * sequences, peak)})
    return rows


def trainstep(s: TrainStepSettings, experiment_model: Path | None = None) -> dict[str, Any]:
    """The whole section on one device: the backbone, its FLOPs per sequence, both tables."""
    device = resolve_device(s.device)
    began = time.perf_counter()
    backbone = random_backbone(s.model, experiment_model, getattr(torch, s.dtype), device)
    build_s = time.perf_counter() - began
    per_sequence = flops_per_sequence(backbone, s.seq_len)
    peak = peak_flops(device, s.dtype, s.peak_tflops)
    params = sum(p.numel() for p in backbone.parameters())
    rows = in_process(backbone, s, per_sequence, peak)
    # after running out of memory, the service's passes stay within the largest batch that fitted
    cap = s.max_batch
    if any(r.get("out_of_memory") for r in rows):
        cap = min(cap, max((r["batch"] for r in rows if not r.get("out_of_memory")), default=0))
    if cap < s.client_batch:
        service: list[dict[str, Any]] | str = (f"not run: a client's batch of {s.client_batch} sequences does not "
                                               "fit in the device's memory")
    else:
        service = through_service(backbone, s, per_sequence, peak, cap)
    return {
        "model": s.model, "dtype": s.dtype, "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
        "params": params, "seq_len": s.seq_len, "build_s": round(build_s, 1),
        "flops_per_sequence": per_sequence, "peak_tflops": peak / 1e12 if peak else None,
        "in_process": rows, "service": service,
    }


def main() -> None:
    """``SPEC.json``: ``settings`` (a :class:`TrainStepSettings`), ``experiment_model`` (a checkpoint
    or null) and ``torch_threads``; writes the section's result, with the spec, to ``OUT.json``."""
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["torch_threads"])
    model = spec["experiment_model"]
    result = trainstep(TrainStepSettings(**spec["settings"]), Path(model) if model else None)
    out_path.write_text(json.dumps({"spec": spec, **result}, indent=1))


if __name__ == "__main__":
    main()
