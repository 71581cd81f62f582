"""The perf bench's TrainStep section (anther/bench/perf/trainstep.py) on the CPU: the
FLOPs it counts, the rates it derives from them, and the service runs. On a GPU the same code
measures a LLaVA-1.5-7B-sized backbone; here the tiny checkpoint's LLM stands in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from anther.bench.perf.bench import PerfBench, load_perf
from anther.bench.perf.trainstep import (
    TrainStepSettings,
    flops_per_sequence,
    peak_flops,
    random_backbone,
    trainstep,
)

SETTINGS = TrainStepSettings(model="experiment", dtype="float32", device="cpu", seq_len=24, batch_sizes=[1, 3],
                             concurrency=[1, 3], client_batch=2, steps=2, warmup=1, seconds=0.5, peak_tflops=0.0,
                             window_ms=20.0, max_batch=64)


def test_flops_are_every_matmul_of_forward_and_input_backward(tiny_model_dir: Path) -> None:
    """A frozen backbone's step: forward (2 FLOPs per weight and token) and the backward pass
    to the inputs only (2 more), plus attention's products, forward and backward (PyTorch's
    count of the backward includes the flash kernels' recomputed scores)."""
    backbone = random_backbone("experiment", tiny_model_dir, torch.float32, "cpu")
    cfg = backbone.decoder.config
    weights = sum(p.numel() for n, p in backbone.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    t = 24
    attention_forward = cfg.num_hidden_layers * 2 * (2 * t * t * cfg.hidden_size)  # QK^T and AV
    counted = flops_per_sequence(backbone, t)
    # to a few hundred FLOPs: some transformers versions compute the rotary angles as a matmul
    assert counted == pytest.approx(4 * weights * t + 3.5 * attention_forward, rel=1e-5)


def test_section_reports_consistent_rates(tiny_model_dir: Path) -> None:
    s = replace(SETTINGS, peak_tflops=0.5)  # a made-up peak: MFU is then defined on a CPU
    result = trainstep(s, tiny_model_dir)
    assert result["device"] == "cpu" and result["params"] > 0 and result["peak_tflops"] == 0.5
    per_seq = result["flops_per_sequence"]
    assert [r["batch"] for r in result["in_process"]] == [1, 3]
    for r in result["in_process"]:
        seconds = r["step_ms"] * r["steps"] / 1000
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * s.seq_len * s.steps / seconds, rel=0.02)
        assert r["tflops"] == pytest.approx(per_seq * r["batch"] * s.steps / seconds / 1e12, rel=0.02, abs=1e-4)
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.5, rel=0.02, abs=1e-3)
    by_clients = {r["clients"]: r for r in result["service"]}
    assert set(by_clients) == {1, 3}
    assert by_clients[1]["mean_requests_per_pass"] == 1.0
    for r in by_clients.values():
        assert r["requests"] > 0 and r["client_batch"] == 2
        assert r["tokens_per_s"] == pytest.approx(r["requests"] * 2 * s.seq_len / r["seconds"], rel=0.02)


def test_a_client_batch_larger_than_the_sizes_tried_still_runs(tiny_model_dir: Path) -> None:
    """Only running out of memory caps the service's passes, not the list of batch sizes."""
    result = trainstep(replace(SETTINGS, batch_sizes=[1], concurrency=[2], client_batch=3), tiny_model_dir)
    assert result["service"][0]["requests"] > 0 and result["service"][0]["client_batch"] == 3


def test_no_peak_no_mfu_on_a_cpu(tiny_model_dir: Path) -> None:
    assert peak_flops("cpu", "float32", 0.0) is None
    assert peak_flops("cpu", "float32", 2.0) == 2e12
    result = trainstep(replace(SETTINGS, batch_sizes=[1], concurrency=[1]), tiny_model_dir)
    assert result["peak_tflops"] is None and result["in_process"][0]["mfu"] is None


def test_without_a_gpu_the_full_size_section_says_it_was_skipped(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bench = PerfBench(load_perf("perf", ["sections=[trainstep]"]), tmp_path)
    assert "no CUDA device" in bench.trainstep()["skipped"]


def test_a_batch_that_does_not_fit_ends_the_sizes_and_caps_the_service(tiny_model_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the largest batches may not fit: the first that does not is recorded, larger ones
    are not tried, and the service batches no more sequences per pass than fitted."""
    from anther.backbone.in_process import InProcessBackbone

    real_logits = InProcessBackbone.logits_on_device
    sizes: list[int] = []

    def step(self, inputs_embeds, *args, **kwargs):  # the device's memory, made small
        sizes.append(inputs_embeds.shape[0])
        if inputs_embeds.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_logits(self, inputs_embeds, *args, **kwargs)

    monkeypatch.setattr(InProcessBackbone, "logits_on_device", step)  # in process and in the service
    s = replace(SETTINGS, batch_sizes=[1, 2, 4, 8], concurrency=[4], client_batch=1, seconds=0.5)
    result = trainstep(s, tiny_model_dir)
    assert [(r["batch"], r.get("out_of_memory", False)) for r in result["in_process"]] == [
        (1, False), (2, False), (4, True)]
    assert result["service"][0]["requests"] > 0
    # the one pass of more than 2 sequences was the in-process try of 4: the service's stayed within 2
    assert [n for n in sizes if n > 2] == [4] and sizes.count(2) > s.warmup + s.steps + 1

    too_big = trainstep(replace(s, client_batch=4), tiny_model_dir)
    assert "does not fit" in too_big["service"]


def test_the_device_spec_is_the_default_configs(tmp_path: Path) -> None:
    """anther/bench/device/trainstep.sh runs the section from a checked-in spec on a GPU machine without
    Flower: it must say what `anther bench perf` itself would run there."""
    import json
    from dataclasses import asdict

    spec = json.loads((Path(__file__).parents[1] / "anther" / "bench" / "device" / "trainstep.json").read_text())
    bench = PerfBench(load_perf("perf"), tmp_path)
    assert spec["settings"] == asdict(bench.trainstep_settings("cuda"))
    assert spec["experiment_model"] is None
