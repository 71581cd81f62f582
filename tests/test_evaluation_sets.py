"""Evaluation sets that mean something (issue 23 item 4): the server's test set and data.*_size are
seeded samples stratified by task, not the first records of a file; defaults point at labelled
splits; generation is long enough for the longest answer; a one-answer task is not scored as a
one-option multiple choice."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from anther.core.images import in_memory
from anther.core.sample import Sample, write_split
from anther.data.client_data import sample_indices, split_name, split_samples
from anther.data.formats.records import with_answer_vocabulary
from anther.data.formats.registry import load_samples
from anther.simulations.experiment import load_config


def _ordered_set(folder: Path, per_task: dict[str, int]) -> Path:
    """An anther-format split ordered by task (as CrisisMMD's files are by disaster)."""
    picture = Image.new("RGB", (4, 4))
    samples = [Sample(id=f"{task}{i}", question="q?", answer="a", options=["a", "b"], task=task,
                      images=in_memory(picture)) for task, n in per_task.items() for i in range(n)]
    write_split(samples, folder, "test")
    write_split(samples[:20], folder, "train")
    return folder


def test_the_servers_test_set_is_a_stratified_seeded_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path / "home"))
    folder = _ordered_set(tmp_path / "data", {"flood": 300, "fire": 100})
    cfg = load_config("default", [f"data.path={folder}", "federation.num_clients=2"])
    chosen = split_samples(cfg, folder, "test", limit=40)
    assert Counter(s.task for s in chosen) == {"flood": 30, "fire": 10}  # the first 40 would all be floods
    assert [s.id for s in chosen] == [s.id for s in split_samples(cfg, folder, "test", limit=40)]
    other = load_config("default", [f"data.path={folder}", "federation.num_clients=2", "data.seed=1"])
    assert {s.id for s in split_samples(other, folder, "test", limit=40)} != {s.id for s in chosen}
    small = load_config("default", [f"data.path={folder}", "federation.num_clients=2", "data.test_size=100"])
    assert Counter(s.task for s in split_samples(small, folder, "test")) == {"flood": 75, "fire": 25}


def test_stratified_sizes_add_up_by_largest_remainder():
    tasks = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    picked = sample_indices(tasks, 4, seed=0)
    assert len(picked) == 4 and picked == sorted(picked)
    assert Counter(tasks[i] for i in picked) == {"a": 2, "b": 1, "c": 1}
    assert sample_indices(tasks, None, 0) == sample_indices(tasks, 99, 0) == list(range(10))


def test_default_splits_are_the_labelled_ones():
    memes = load_config("default", ["data.format=hateful_memes", "data.path=/x"])
    assert (split_name(memes, "train"), split_name(memes, "test")) == ("train", "dev_seen")
    chosen = load_config("default", ["data.format=hateful_memes", "data.path=/x", "data.test_split=test_unseen"])
    assert split_name(chosen, "test") == "test_unseen"


def test_a_task_with_one_answer_is_left_open_ended():
    one = [Sample(id=str(i), question="q?", answer="lung", options=[], task="organ") for i in range(3)]
    two = [Sample(id=f"t{i}", question="q?", answer=a, options=[], task="side") for i, a in enumerate("LR")]
    out = with_answer_vocabulary(one + two)
    assert [s.options for s in out] == [[], [], [], ["L", "R"], ["L", "R"]]


def test_crisismmd_split_folder_unzipped_one_level_deeper(tmp_path):
    inner = tmp_path / "crisismmd_datasplit_all" / "crisismmd_datasplit_all"
    inner.mkdir(parents=True)
    (tmp_path / "data_image").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "data_image" / "1.jpg")
    header = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel"
    (inner / "task_humanitarian_text_img_test.tsv").write_text(
        f"{header}\nhurricane_irma\t1\t1_0\tflooded\tdata_image/1.jpg\tnot_humanitarian\n")
    (sample,), _ = load_samples("crisismmd", tmp_path, "test")
    assert sample.answer == "not_humanitarian"


@pytest.mark.parametrize("answers, expected", [(["yes", "no"], 3), (["rescue_volunteering_or_donation_effort"], None)])
def test_generation_fits_the_longest_answer(answers, expected):
    from anther.client.inference import answer_length
    from anther.model.tiny_model import tiny_tokenizer

    class Encoder:  # what answer_length reads of a SampleEncoder
        processor = type("P", (), {"tokenizer": tiny_tokenizer()})()

    samples = [Sample(id=a, question="q?", answer=a, options=[]) for a in answers]
    length = answer_length(Encoder(), samples)
    tokens = max(len(Encoder.processor.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers)
    assert length == tokens + 2 and (expected is None or length == expected)
    assert length > 3 or expected == 3  # the long label did not fit the old fixed 3 tokens


def test_records_left_out_are_counted_by_reason_in_the_index(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "ok.png")
    good = {"id": "1", "image": "ok.png", "question": "q?", "answer": "a", "options": ["a", "b"]}
    lines = [good, {**good, "id": "2", "image": "gone.png"}, {**good, "id": "3", "answer": "c"}, {**good, "id": "1"}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    cfg = load_config("default", [f"data.path={folder}", "federation.num_clients=1", "federation.min_replies=1",
                                  "federation.min_train_clients=1", "data.skip_bad=true"])
    from anther.data.client_data import split_view

    index, chosen = split_view(cfg, folder, "train")
    assert len(chosen) == 1
    assert index.left_out == {"missing image": 1, "answer not an option": 1, "reused id": 1}
