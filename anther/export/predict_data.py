"""``anther predict --data DIR``: a predictor over a whole data set folder, each answer written down.

``predictions.jsonl`` holds one line per sample: its id, task, reference answer, the option scoring
picked (and every option's log-likelihood) and the generated answer; ``metrics.json`` the metrics
a run's evaluation reports, computed the same way (:func:`anther.client.inference.metrics_of`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from anther.client.inference import answer_length, answer_samples, metrics_of
from anther.core.files import write_json_atomic
from anther.core.sample import Sample
from anther.data.client_data import sample_indices
from anther.data.formats.registry import load_samples
from anther.export.predictor import Predictor

CHUNK = 64  # samples a progress step


def predict_folder(predictor: Predictor, folder: Path, out: Path, data_format: str = "anther", split: str = "test",
                   limit: int | None = None, generate: bool = True) -> dict[str, float]:
    """Answer every sample of ``split`` in ``folder`` (``limit`` of them: a stratified sample in the
    run's data seed, as the run's server evaluation takes), write predictions and metrics to ``out``."""
    samples, left_out = load_samples(data_format, Path(folder), split)
    samples = [samples[i] for i in sample_indices([s.task for s in samples], limit, predictor.cfg.data.seed)]
    if not samples:
        raise ValueError(f"split {split!r} of {folder} has no samples to predict")
    out.mkdir(parents=True, exist_ok=True)
    picked, scores, generated = [], [], []
    with predictor.answering() as runtime:
        length = (predictor.cfg.eval.max_new_tokens or answer_length(runtime.encoder, samples)) if generate else None
        for i in tqdm(range(0, len(samples), CHUNK), desc="predicting", unit="batch", disable=None):
            answers = answer_samples(runtime.encoder, runtime.backbone, samples[i:i + CHUNK], generate, length)
            picked += answers.picked
            scores += answers.scores
            generated += answers.generated
    with (out / "predictions.jsonl").open("w") as f:
        for s, p, sc, g in zip(samples, picked, scores, generated or [None] * len(samples)):
            f.write(json.dumps(_line(s, p, sc, g)) + "\n")
    metrics = metrics_of(samples, picked, scores, generated if generate else None)
    write_json_atomic(out / "metrics.json", {"data": str(folder), "split": split, "samples": len(samples),
                                             "left_out": dict(left_out), "metrics": metrics})
    return metrics


def _line(s: Sample, picked: str | None, scores: list[float], generated: str | None) -> dict:
    return {"id": s.id, "task": s.task, "question": s.question, "answer": s.answer, "picked": picked,
            "scores": dict(zip(s.options, scores)), "generated": generated}
