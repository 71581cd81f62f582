"""``anther bench real-shape``: one federated round at a real MLLM's shapes, on any machine.

Nothing can be downloaded where anther is built, and a 7B LLM does not fit a small CPU box,
yet the sizes that matter to a split client are the real ones: the image tokens per sample,
the LLM's width, the vision tower's compute. So for each model (LLaVA-1.5-7B and Qwen2-VL-7B
by default) this builds a checkpoint with random weights whose client is the real one (the
published vision tower, connector and full embedding table) and whose LLM has the real width
with its depth cut to ``--decoder-layers``. It starts the TLS backbone service on it and runs
one federated round: ``--clients`` clients, each ``--steps`` local steps of ``--batch-size``
samples at the model's real picture size, bf16 weights and bf16 on the wire, then FedAvg of
their adapters. It records the bytes per sample each way (against ``anther model report``'s
prediction for the same token count), the peak memory of the client process (each round runs
in a process of its own) and of the service, and where a step's time goes.

    anther bench real-shape [--models llava-1.5-7b qwen2-vl-7b] [--profiles bf16 fp32 edge]
                            [--decoder-layers 2] [--steps 2] [--out DIR]

It writes ``real_shape.json`` and ``real_shape.md`` to ``--out`` (default
``$ANTHER_HOME/bench/real_shape``); docs/bench/ keeps a copy of a run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from transformers import CLIPImageProcessorPil, LlavaProcessor, Qwen2VLImageProcessorPil

from anther.backbone import wire
from anther.backbone.supervisor import backbone_for_run
from anther.bench.machine import describe
from anther.bench.model_sizes import REAL_CONFIGS, size_report
from anther.bench.perf.workload import MemoryTrace
from anther.bench.results import results_dir
from anther.client.local_training import LocalTraining
from anther.client.runtime import runtime_for
from anther.client.trainer import train_adapters
from anther.data import shapes_vqa
from anther.model import chat_templates
from anther.model.families import family_for
from anther.model.families.qwen2_vl import CHATML_TOKENS, REFERENCE_PICTURE, Qwen2VLImageTextProcessor
from anther.model.nano_edge import initial_adapter_state
from anther.model.tiny_model import tiny_tokenizer
from anther.simulations.experiment import load_config


def _llava_processor(tokenizer) -> LlavaProcessor:
    """LLaVA-1.5's: CLIP's 336 px crop, 14 px patches, 576 image tokens."""
    images = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", image_token=tokenizer.image_token,
                          num_additional_image_tokens=1, chat_template=chat_templates.LLAVA)


def _qwen2_vl_processor(tokenizer) -> Qwen2VLImageTextProcessor:
    """Qwen2-VL's: 14 px patches merged 2 x 2, every picture at the size report's 448 px (256 tokens)."""
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    pixels = REFERENCE_PICTURE * REFERENCE_PICTURE
    images = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                      min_pixels=pixels, max_pixels=pixels)
    return Qwen2VLImageTextProcessor(image_processor=images, tokenizer=tokenizer,
                                     chat_template=chat_templates.QWEN2_VL)


# how the client holds its frozen modules: bf16 weights (a GPU client's), fp32 weights, or the edge
# profile (configs/profile/edge.yaml: fp32 with the vision tower and connector in dynamic int8)
PROFILES: dict[str, list[str]] = {"bf16": ["model.dtype=bfloat16"], "fp32": ["model.dtype=float32"],
                                  "edge": ["+profile=edge"]}

# model (a key of anther.bench.model_sizes.REAL_CONFIGS) -> its processor at real size, around a tokenizer
PROCESSORS: dict[str, Callable] = {"llava-1.5-7b": _llava_processor, "qwen2-vl-7b": _qwen2_vl_processor}


def build_checkpoint(name: str, decoder_layers: int, out: Path, seed: int = 0) -> Path:
    """A checkpoint of ``name`` at its published shapes but ``decoder_layers`` decoder layers,
    random weights in bf16, anther's tiny tokenizer (its ids index the real embedding table)."""
    tokenizer = tiny_tokenizer(seed)
    processor = PROCESSORS[name](tokenizer)
    config = REAL_CONFIGS[name]()
    text = config.get_text_config()
    text.num_hidden_layers = decoder_layers
    if getattr(text, "layer_types", None):  # Qwen2's config lists each layer's attention kind
        text.layer_types = text.layer_types[:decoder_layers]
    config.image_token_id = tokenizer.image_token_id
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(text, key, getattr(tokenizer, key))
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = family_for(config.model_type).model_class(config)
    finally:
        torch.set_default_dtype(default)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def service_rss() -> int:
    """Resident memory of the backbone service this process started (its ``backbone serve`` child)."""
    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if "serve" in child.cmdline():
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass
class StepClock:
    """Seconds spent in each part of the client's steps, by wrapping the calls that do them."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    sequence_lengths: list[int] = field(default_factory=list)

    def timed(self, label: str, call: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
        return wrapper


@dataclass
class ShapeResult:
    model: str
    profile: str
    decoder_layers: int
    image_tokens: int
    tokens_per_sample: float
    hidden_size: int
    bytes_up_per_sample: float
    bytes_down_per_sample: float
    predicted_up_per_sample: int
    predicted_down_per_sample: int
    client_peak_mib: float
    service_peak_mib: float
    step_seconds: float
    seconds_per_step: dict[str, float]
    clients: int
    steps: int
    batch_size: int
    final_loss: float

    @property
    def up_error(self) -> float:
        return self.bytes_up_per_sample / self.predicted_up_per_sample - 1

    @property
    def down_error(self) -> float:
        return self.bytes_down_per_sample / self.predicted_down_per_sample - 1


def run_round(name: str, model_dir: Path, decoder_layers: int, clients: int, steps: int, batch_size: int,
              profile: str = "bf16", overrides: list[str] = (), seed: int = 0) -> ShapeResult:
    """One federated round through the TLS backbone service; see the module's docstring. ``overrides``
    (``model.client_device=cuda``, ``backbone.quantization=8bit``, ...) win over the bench's own. A
    feature cache (the edge profile's) holds this round's features alone: features an earlier run
    cached would hide the vision tower's time."""
    overridden = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    with tempfile.TemporaryDirectory(prefix="anther-real-shape-") as cache:
        own = [f"model.path={model_dir}", *PROFILES[profile], "model.client_device=cpu", "backbone.mode=service",
               "backbone.wire_dtype=bfloat16", f"federation.num_clients={clients}",
               f"federation.min_train_clients={clients}", f"train.batch_size={batch_size}",
               f"train.local_steps={steps}", f"seed={seed}", f"feature_cache.dir={cache}"]
        cfg = load_config("default", [o for o in own if o.split("=", 1)[0].lstrip("+") not in overridden]
                          + list(overrides))
        return _train_round(name, profile, decoder_layers, cfg, clients, steps, batch_size, seed)


def _train_round(name: str, profile: str, decoder_layers: int, cfg, clients: int, steps: int, batch_size: int,
                 seed: int) -> ShapeResult:
    samples = shapes_vqa.generate(clients * steps * batch_size, seed)
    clock = StepClock()
    with backbone_for_run(cfg) as served, MemoryTrace(0.05) as client, MemoryTrace(0.05, service_rss) as service:
        runtime = runtime_for(served)
        edge, backbone = runtime.edge, runtime.backbone
        edge._encode_images = clock.timed("vision tower + connector", edge._encode_images)
        train_step = backbone.train_step

        def counted_step(embeds, *args, **kwargs):
            clock.sequence_lengths.append(embeds.shape[1])
            return train_step(embeds, *args, **kwargs)
        backbone.train_step = clock.timed("backbone call", counted_step)
        wire_calls = wire.encode, wire.decode
        wire.encode, wire.decode = clock.timed("wire", wire.encode), clock.timed("wire", wire.decode)
        try:
            global_state = initial_adapter_state(edge.embed_tokens.embedding_dim, edge.adapters["text"].config, seed)
            states, weights, losses, up, down = [], [], [], 0, 0
            started = time.perf_counter()
            for k in range(clients):
                edge.load_adapter_state(global_state)
                own_samples = samples[k * steps * batch_size:(k + 1) * steps * batch_size]
                report = train_adapters(runtime.encoder, backbone, own_samples,
                                        LocalTraining(steps, batch_size, lr=1e-3), seed=k)
                states.append(edge.adapter_state())
                weights.append(report.examples)
                losses.append(report.loss)
                up, down = up + report.activation_bytes_up, down + report.activation_bytes_down
            elapsed = time.perf_counter() - started
        finally:
            wire.encode, wire.decode = wire_calls
        global_state = {key: sum(w * s[key] for s, w in zip(states, weights)) / sum(weights) for key in global_state}
        edge.load_adapter_state(global_state)  # the round's FedAvg: the next round would start from it
    return _result(name, profile, decoder_layers, clock, client.peak_bytes, service.peak_bytes, elapsed, up, down,
                   sum(weights), clients, steps, batch_size, sum(losses) / len(losses))


def _result(name: str, profile: str, decoder_layers: int, clock: StepClock, client_peak: int, service_peak: int,
            elapsed: float, up: int, down: int, examples: int, clients: int, steps: int, batch_size: int,
            loss: float) -> ShapeResult:
    config = REAL_CONFIGS[name]()
    image_tokens = family_for(config.model_type).image_tokens(config)
    tokens = sum(clock.sequence_lengths) / len(clock.sequence_lengths)
    predicted = size_report(name, text_tokens=round(tokens) - image_tokens, dtype="bfloat16", wire_dtype="bfloat16")
    n_steps = clients * steps
    seconds = {label: s / n_steps for label, s in clock.seconds.items()}
    seconds["service (network and LLM)"] = seconds.pop("backbone call") - seconds["wire"]
    seconds["adapters, embeddings, optimiser"] = elapsed / n_steps - sum(seconds.values())
    return ShapeResult(
        model=name, profile=profile, decoder_layers=decoder_layers, image_tokens=image_tokens, tokens_per_sample=tokens,
        hidden_size=config.get_text_config().hidden_size, bytes_up_per_sample=up / examples,
        bytes_down_per_sample=down / examples, predicted_up_per_sample=predicted.activation_bytes_up_per_sample,
        predicted_down_per_sample=predicted.activation_bytes_down_per_sample,
        client_peak_mib=client_peak / 2**20, service_peak_mib=service_peak / 2**20, step_seconds=elapsed / n_steps,
        seconds_per_step={k: round(v, 3) for k, v in seconds.items()}, clients=clients, steps=steps,
        batch_size=batch_size, final_loss=loss)


def markdown(results: list[ShapeResult]) -> str:
    rows = [("| model | client | decoder layers | image tokens | tokens / sample | up / sample (predicted) | "
             "down / sample (predicted) | client peak | service peak | step | where a step goes |"),
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        parts = ", ".join(f"{label} {s:.2f} s" for label, s in r.seconds_per_step.items())
        up = f"{r.bytes_up_per_sample / 1e6:.2f} MB ({r.predicted_up_per_sample / 1e6:.2f}, {r.up_error:+.1%})"
        down = f"{r.bytes_down_per_sample / 1e6:.2f} MB ({r.predicted_down_per_sample / 1e6:.2f}, {r.down_error:+.1%})"
        memory = f"{r.client_peak_mib / 1024:.2f} GiB | {r.service_peak_mib / 1024:.2f} GiB"
        rows.append(f"| {r.model} | {r.profile} | {r.decoder_layers} | {r.image_tokens} | "
                    f"{r.tokens_per_sample:.0f} | {up} | {down} | {memory} | {r.step_seconds:.1f} s | {parts} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anther bench real-shape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PROCESSORS), choices=list(PROCESSORS))
    parser.add_argument("--profiles", nargs="+", default=["bf16"], choices=list(PROFILES),
                        help="how the client holds its frozen modules (edge: fp32 with an int8 vision tower)")
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="experiment overrides, e.g. model.client_device=cuda model.device=cuda "
                             "backbone.quantization=8bit (docs/performance.md, on a CUDA machine)")
    args = parser.parse_args(argv)
    for flag in ("decoder_layers", "clients", "steps", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    out = (args.out or results_dir("real_shape")).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models:
        print(f"anther: building {name} at real shapes, {args.decoder_layers} decoder layer(s)", flush=True)
        model_dir = build_checkpoint(name, args.decoder_layers, out / "checkpoints" / name)
        for profile in args.profiles:
            # each round in a fresh process, so its peak memory is its own and not an earlier round's
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                results.append(pool.apply(run_round, (name, model_dir, args.decoder_layers, args.clients,
                                                      args.steps, args.batch_size, profile, args.set)))
            print(markdown(results[-1:]), flush=True)
        shutil.rmtree(model_dir)
    record = {"machine": describe(), "results": [asdict(r) | {"up_error": r.up_error, "down_error": r.down_error}
                                                for r in results]}
    (out / "real_shape.json").write_text(json.dumps(record, indent=2))
    (out / "real_shape.md").write_text(markdown(results))
    print(f"anther: wrote {out / 'real_shape.json'} and real_shape.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
