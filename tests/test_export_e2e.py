"""What a run leaves behind (issue 24): exports, inference and tracking, on real runs.

- a split run's NanoAdapters exported, merged into a checkpoint that plain transformers loads, with
  the logits anther gives with the run's final adapters; a trained image adapter is refused a merge;
- a whole-model run's LoRA in peft's format, round-tripped through ``PeftModel.from_pretrained`` and
  merged through peft's ``merge_and_unload``;
- ``anther predict --data`` on the server's test set reproduces the run's final evaluation;
- each tracking backend writes what a user would open (read back here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from simulation_run import shared_home, shared_run

import anther
from anther.core.sample import Sample
from anther.data import shapes_vqa
from anther.export.merge import export_merged
from anther.export.nano_export import export_adapters
from anther.export.peft_export import export_peft
from anther.export.run_artifacts import ExportError, RunArtifacts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split_run(tmp_path_factory) -> Path:
    """FedDPA's pair (the global adapters are what the run checkpoints and merges; each site keeps its
    local ones), on clients that never see a picture, with every tracker."""
    return shared_run(tmp_path_factory, "personalised_text_only")[0]


@pytest.fixture(scope="module")
def whole_model_run(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "whole_model")[0]


def _samples(n: int = 6) -> list[Sample]:
    return shapes_vqa.generate(n, seed=77, prefix="x")


def _anther_logits(predictor, samples: list[Sample]):
    """Logits of the split path (NanoEdge + backbone) with the predictor's adapters."""
    with predictor.answering() as runtime, torch.no_grad():
        batch = runtime.encoder(samples, [s.answer for s in samples])
        logits = runtime.backbone.logits(runtime.edge(batch), batch.attention_mask, batch.position_ids)
    return batch, logits


def _hf_logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     pixel_values=batch.pixel_values).logits


def test_a_merged_split_run_loads_in_plain_transformers_with_the_same_logits(split_run, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = export_merged(RunArtifacts.read(split_run), tmp_path / "merged")
    predictor = anther.load(split_run)
    assert predictor.state["text.up.weight"].abs().sum() > 0  # the run trained its text adapter
    batch, expected = _anther_logits(predictor, _samples())
    hf = AutoModelForImageTextToText.from_pretrained(out).eval()
    AutoProcessor.from_pretrained(out)  # the processor travels with it
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(_hf_logits(hf, batch)[mask], expected[mask], rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "merged checkpoint" in card and "| round |" in card and "Privacy: no differential privacy." in card


def test_a_trained_image_adapter_is_refused_a_merge(split_run, tmp_path, monkeypatch):
    run = RunArtifacts.read(split_run)
    chosen, state = run.adapters()
    state["image.up.weight"] = state["image.up.weight"] + 0.01
    monkeypatch.setattr(RunArtifacts, "adapters", lambda self, server_round=None: (chosen, state))
    with pytest.raises(ExportError, match="cannot merge exactly: NanoAdapter-I is trained"):
        export_merged(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_an_adapter_export_answers_as_the_run_does(split_run, tmp_path):
    out = export_adapters(RunArtifacts.read(split_run), tmp_path / "export")
    manifest = json.loads((out / "anther_export.json").read_text())
    assert manifest["kind"] == "nano_adapters" and manifest["prompt"]["chat_template"]
    images = [s.image for s in _samples(3)]
    questions = [s.question for s in _samples(3)]
    options = [s.options for s in _samples(3)]
    from_run, from_export = anther.load(split_run), anther.load(out)
    assert from_export.score(images, questions, options) == from_run.score(images, questions, options)
    assert from_export.generate(images, questions) == from_run.generate(images, questions)
    with pytest.raises(ExportError, match="not empty"):
        export_adapters(RunArtifacts.read(split_run), out)


def test_predict_on_the_servers_test_set_reproduces_the_final_evaluation(split_run, tmp_path):
    result = json.loads((split_run / "result.json").read_text())
    final = result["rounds"][-1]
    data = result["config"]["data"]["path"]
    out = tmp_path / "predictions"
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "predict", str(split_run), "--data", data,
                           "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("acc_mc", "acc_gen", "f1_macro", "num_examples"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-9), key
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == final["num_examples"] and {"id", "picked", "generated", "scores"} <= set(json.loads(lines[0]))


def test_predict_answers_one_question_from_the_command_line(split_run, tmp_path):
    image = tmp_path / "q.png"
    _samples(1)[0].image.save(image)
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "predict", str(split_run), "--image", str(image),
                           "--question", "how many shapes are there?", "--options", "one", "two", "three"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    picked = proc.stdout.strip().splitlines()[-1]
    assert picked.split(":")[0].strip() in ("one", "two", "three"), proc.stdout


def test_each_tracker_wrote_what_its_tool_opens(split_run):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = json.loads((split_run / "result.json").read_text())
    accuracies = [r["acc_mc"] for r in result["rounds"]]
    events = EventAccumulator(str(split_run / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("acc_mc")] == pytest.approx(accuracies)
    client = MlflowClient(tracking_uri=(split_run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == result["name"]]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "acc_mc")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(accuracies)
    assert run.data.params["federation.num_clients"] == "2"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"result.json", "adapters"}
    (offline,) = list((split_run / "wandb").glob("offline-run-*"))
    (log,) = list(offline.glob("run-*.wandb"))  # what `wandb sync` uploads
    history, kinds = _wandb_records(log)
    assert [h["acc_mc"] for h in history] == pytest.approx(accuracies) and "artifact" in kinds


def _wandb_records(path: Path) -> tuple[list[dict], set[str]]:
    """The history rows and the record kinds of a W&B offline run's log, read with wandb's own reader."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(path))
    history, kinds = [], set()
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kinds.add(record.WhichOneof("record_type"))
        if record.HasField("history"):
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return history, kinds


def test_a_site_exports_its_global_and_local_adapters(split_run, tmp_path):
    from anther.client.inference import option_scores
    from anther.export.site_export import export_site
    from anther.strategies.personalised import PersonalisedAdapters

    state_folder = shared_home(split_run.parent.parent) / "client-state" / split_run.name / "partition-0"
    out = export_site(RunArtifacts.read(split_run), state_folder, tmp_path / "site")
    site, global_only = anther.load(out), anther.load(split_run)
    assert site.local is not None and site.mix == 0.5
    images, questions = [s.image for s in _samples(3)], [s.question for s in _samples(3)]
    options = [s.options for s in _samples(3)]
    got = site.score(images, questions, options)
    assert got != global_only.score(images, questions, options)  # the local part changes the answers
    runtime = global_only.runtime  # the same process's runtime: global + 0.5 * local by hand
    runtime.edge.load_adapter_state(global_only.state)
    with PersonalisedAdapters(runtime.edge.adapters, 0.5, site.local).combined():
        expected = option_scores(runtime.encoder, runtime.backbone, site.samples(images, questions, options))
    for scores, by_hand in zip(got, expected, strict=True):
        assert list(scores.values()) == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(ExportError, match="no local adapters"):
        export_site(RunArtifacts.read(split_run), tmp_path / "nowhere", tmp_path / "other")


def test_a_whole_model_run_round_trips_through_peft(whole_model_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = export_peft(RunArtifacts.read(whole_model_run), tmp_path / "peft")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    predictor = anther.load(whole_model_run)
    batch, expected = _anther_logits(predictor, _samples())
    base_path = json.loads((out / "anther_export.json").read_text())["base_model"]["path"]
    base = AutoModelForImageTextToText.from_pretrained(base_path).eval()
    tuned = PeftModel.from_pretrained(base, out).eval()
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(_hf_logits(tuned, batch)[mask], expected[mask], rtol=1e-5, atol=1e-5)
    merged = export_peft(RunArtifacts.read(whole_model_run), tmp_path / "merged", merge=True)
    plain = AutoModelForImageTextToText.from_pretrained(merged).eval()
    torch.testing.assert_close(_hf_logits(plain, batch)[mask], expected[mask], rtol=1e-4, atol=1e-4)
    again = anther.load(out)  # anther reads peft's format back too
    assert again.score([s.image for s in _samples(2)], ["q?"] * 2, [["one", "two"]] * 2) == \
        predictor.score([s.image for s in _samples(2)], ["q?"] * 2, [["one", "two"]] * 2)


def test_predict_against_a_backbone_service_answers_as_in_process(split_run, tmp_path):
    """The deployed case: the adapters on the site, the LLM on a backbone service (TLS, a token)."""
    from anther.backbone.certs import make_certs, read_tokens, write_tokens
    from anther.backbone.in_process import InProcessBackbone
    from anther.backbone.service.auth import ServerTls
    from anther.backbone.service.server import start
    from anther.backbone.service.servicer import BackboneService

    make_certs(tmp_path, clients=["site-0"])
    write_tokens(tmp_path, ["site-0"])
    base = RunArtifacts.read(split_run).cfg.model.path
    service = BackboneService(InProcessBackbone.from_pretrained(base))
    server, port = start(service, "127.0.0.1:0", ServerTls.from_dir(tmp_path), read_tokens(tmp_path / "tokens.json"))
    try:
        remote = anther.load(split_run, overrides=["backbone.mode=remote", f"backbone.address=127.0.0.1:{port}",
                                                   f"backbone.ca_cert={tmp_path / 'ca.pem'}",
                                                   f"backbone.token_file={tmp_path / 'site-0.token'}"])
        images, questions = [s.image for s in _samples(3)], [s.question for s in _samples(3)]
        options = [s.options for s in _samples(3)]
        here = anther.load(split_run)
        assert remote.generate(images, questions) == here.generate(images, questions)
        for far, near in zip(remote.score(images, questions, options), here.score(images, questions, options)):
            assert list(far.values()) == pytest.approx(list(near.values()), abs=1e-5)
    finally:
        server.stop(None)
        service.close()
