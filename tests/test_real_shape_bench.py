"""``anther bench real-shape`` at its smallest: LLaVA-1.5-7B's real client (CLIP ViT-L/14-336, the
projector, the 32064 x 4096 embedding table) against one decoder layer of the real width: one
client, one local step of one picture (a second picture or client only repeats the same shapes,
a ViT-L/14-336 forward of five seconds each on a CPU), through the TLS backbone service with
bf16 on the wire.

The client holds its weights in float32, as a CPU client would choose: a CPU without bfloat16
arithmetic (AVX2 only) computes a bf16 ViT-L many times slower than fp32, and this test's time
must not depend on the CPU. The bf16 weight path is covered at small sizes elsewhere
(tests/test_backbone_wiring.py, tests/test_what_leaves_a_client.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_one_round_at_llava_1_5_7b_shapes_moves_what_the_size_report_predicts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "anther.cli", "bench", "real-shape", "--models", "llava-1.5-7b",
                           "--decoder-layers", "1", "--clients", "1", "--steps", "1", "--batch-size", "1",
                           "--profiles", "fp32", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "real_shape.json").read_text())["results"]
    assert result["image_tokens"] == 576 and result["hidden_size"] == 4096 and result["decoder_layers"] == 1
    assert abs(result["up_error"]) < 0.05 and abs(result["down_error"]) < 0.05
    assert result["bytes_up_per_sample"] > 4.5e6  # 576 + text tokens x 4096 x 2 bytes (bf16)
    assert result["client_peak_mib"] > 0 and result["service_peak_mib"] > 0
    assert set(result["seconds_per_step"]) == {"vision tower + connector", "wire", "service (network and LLM)",
                                               "adapters, embeddings, optimiser"}
    assert result["final_loss"] > 0
    assert "| llava-1.5-7b | fp32 | 1 | 576 |" in (tmp_path / "real_shape.md").read_text()
    assert not (tmp_path / "checkpoints" / "llava-1.5-7b").exists()  # the 1.6 GB checkpoint is removed


def test_the_bench_refuses_a_bad_flag_by_name(tmp_path):
    done = subprocess.run([sys.executable, "-m", "anther.cli", "bench", "real-shape", "--steps", "0",
                           "--out", str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--steps must be at least 1" in done.stderr


def test_the_cuda_script_plans_commands_anther_accepts(tmp_path):
    """scripts/cuda_check.py needs a GPU to run; on a CPU its plan is checked: every real-shape step's
    overrides compose into a valid experiment, every command names an existing bench."""
    done = subprocess.run([sys.executable, "scripts/cuda_check.py", "--dry-run", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from anther.simulations.experiment import load_config

    commands = done.stdout.strip().splitlines()
    assert any("sections=[trainstep]" in c for c in commands)
    real = [c.split() for c in commands if " real-shape " in c]
    assert {"backbone.quantization=8bit", "backbone.quantization=4bit"} <= {w for c in real for w in c}
    for words in real:
        overrides = words[words.index("--set") + 1:]
        cfg = load_config("default", ["backbone.mode=service", "model.path=/models/x", "model.chat_template=llava",
                                      *overrides])
        assert cfg.model.client_device == "cuda"
