"""Loaders of the papers' data sets (issue 5 item 6), each on a few records this test writes in
that data set's own format: the records convert to Samples; a malformed record and a missing
image are errors naming the file and the record; with ``skip_bad`` they are skipped and counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from anther.core.sample import DataFormatError
from anther.data.client_data import split_samples
from anther.data.formats.registry import FORMATS, load_samples
from anther.simulations.experiment import load_config


def _png(colour=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _save_png(path: Path, colour=(30, 200, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(colour))


def _skip(fmt: str, folder: Path, split: str, good: int, bad: int) -> list:
    samples, skipped = load_samples(fmt, folder, split, skip_bad=True)
    assert (len(samples), skipped.total()) == (good, bad)
    return samples


# ---- ScienceQA: parquet or save_to_disk, as the hub distributes it ------------------------------------------------

SCIENCEQA_FEATURES = Features({
    "image": Image(), "question": Value("string"), "choices": List(Value("string")), "answer": Value("int8"),
    "hint": Value("string"), "task": Value("string"), "grade": Value("string"), "subject": Value("string"),
    "topic": Value("string"), "category": Value("string"), "skill": Value("string"), "lecture": Value("string"),
    "solution": Value("string")})


def _scienceqa_rows(bad: dict | None = None) -> dict[str, list]:
    rows = [
        {"image": {"bytes": _png(), "path": None}, "question": "Which colour is shown?", "choices": ["red", "blue"],
         "answer": 0, "hint": "Look at the square.", "subject": "natural science", "topic": "colours"},
        {"image": None, "question": "Which word is a noun?", "choices": ["run", "cat", "quick"], "answer": 1,
         "hint": "", "subject": "language science", "topic": "grammar"},
    ]
    if bad:
        rows.append({**rows[0], **bad})
    cols = {k: [r.get(k, "") for r in rows] for k in SCIENCEQA_FEATURES}
    return cols


def _scienceqa_parquet(folder: Path, bad: dict | None = None) -> Path:
    """derek-thomas/ScienceQA as ``huggingface-cli download`` leaves it: ``data/<split>-*.parquet``
    with its columns (``image`` an Image, ``answer`` an index into ``choices``, ``hint``...)."""
    path = folder / "data" / "train-00000-of-00001-f0e719df791966ff.parquet"
    path.parent.mkdir(parents=True)
    Dataset.from_dict(_scienceqa_rows(bad), features=SCIENCEQA_FEATURES).to_parquet(str(path))
    return path


def test_scienceqa_parquet_as_on_the_hub(tmp_path):
    _scienceqa_parquet(tmp_path)
    samples, skipped = load_samples("scienceqa", tmp_path, "train")
    assert not skipped and [s.answer for s in samples] == ["red", "cat"]
    first, second = samples
    assert first.has_image and first.image.size == (8, 6) and first.context == "Look at the square."
    assert (first.options, first.task, first.domain) == (["red", "blue"], "natural science", "colours")
    assert not second.has_image and not second.has_text and second.options == ["run", "cat", "quick"]


def test_scienceqa_save_to_disk(tmp_path):
    ds = Dataset.from_dict(_scienceqa_rows(), features=SCIENCEQA_FEATURES)
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "sqa"))
    samples, _ = load_samples("scienceqa", tmp_path / "sqa", "test")
    assert [s.answer for s in samples] == ["red", "cat"] and samples[0].has_image


def test_scienceqa_bad_answer_index_names_file_and_row(tmp_path):
    path = _scienceqa_parquet(tmp_path, bad={"answer": 5})
    with pytest.raises(DataFormatError, match=rf"{path}: row 2: 'answer' must index 'choices'"):
        load_samples("scienceqa", tmp_path, "train")
    _skip("scienceqa", tmp_path, "train", good=2, bad=1)


def test_scienceqa_undecodable_image_names_file_and_row(tmp_path):
    path = _scienceqa_parquet(tmp_path, bad={"image": {"bytes": b"not a png", "path": None}})
    with pytest.raises(DataFormatError, match=rf"{path}: row 2: cannot decode the image"):
        load_samples("scienceqa", tmp_path, "train")


def test_scienceqa_missing_split_lists_what_is_there(tmp_path):
    _scienceqa_parquet(tmp_path)
    with pytest.raises(FileNotFoundError, match="no split 'validation'.*train-00000-of-00001"):
        load_samples("scienceqa", tmp_path, "validation")


# ---- IconQA: lmms-lab/ICON-QA parquet ------------------------------------------------------------------------------

ICONQA_FEATURES = Features({
    "question_id": Value("string"), "question": Value("string"), "choices": Value("string"),
    "answer": Value("string"), "query_image": Image(), "choice_image_0": Image(), "choice_image_1": Image(),
    "ques_type": Value("string"), "label": Value("string"), "grade": Value("string"), "skills": Value("string")})


def _iconqa(folder: Path, extra: list[dict] = ()) -> Path:
    """lmms-lab/ICON-QA's val split as the hub has it: ``choices`` one comma-separated string (file
    names for image choices), ``answer`` a string (the right choice's text or file name), two
    choice-picture columns only, so an image-choice question with three choices lacks one."""
    img = {"bytes": _png(size=(10, 10)), "path": None}
    pictures = {"choice_image_0": {"bytes": _png(size=(4, 4)), "path": None},
                "choice_image_1": {"bytes": _png(size=(6, 4)), "path": None}}
    rows = [
        {"question_id": "1", "question": "How likely is a black one?", "choices": "certain,unlikely,impossible",
         "answer": "unlikely", "query_image": img, "ques_type": "choose_txt"},
        {"question_id": "2", "question": "Which picture shows three dots?", "choices": "choice_0.png,choice_1.png",
         "answer": "choice_1.png", "query_image": img, **pictures, "ques_type": "choose_img"},
        {"question_id": "3", "question": "How many dots are there?", "answer": "3", "query_image": img,
         "ques_type": "fill_in_blank"},
        {"question_id": "4", "question": "How many stars are there?", "answer": "5", "query_image": img,
         "ques_type": "fill_in_blank"},
        {"question_id": "5", "question": "Which has four sides?", "choices": "choice_0.png,choice_1.png,choice_2.png",
         "answer": "choice_2.png", "query_image": img, **pictures, "ques_type": "choose_img"},
        *extra,
    ]
    path = folder / "data" / "val-00000-of-00001-f9787027db08d358.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict({k: [r.get(k) for r in rows] for k in ICONQA_FEATURES},
                      features=ICONQA_FEATURES).to_parquet(str(path))
    return path


def test_iconqa_hub_copy_reads_image_choices_and_counts_those_it_lacks(tmp_path):
    _iconqa(tmp_path)
    (txt, img, fill3, fill5), left_out = load_samples("iconqa", tmp_path, "val")
    assert (txt.options, txt.answer, txt.task) == (["certain", "unlikely", "impossible"], "unlikely", "choose_txt")
    assert (img.options, img.answer) == (["image 2", "image 3"], "image 3")
    assert [p.size for p in img.pictures()] == [(10, 10), (4, 4), (6, 4)]  # the question's, then each choice's
    assert fill3.options == fill5.options == ["3", "5"] and fill3.task == "fill_in_blank"
    assert left_out == {"choice pictures not in this copy": 1}  # question 5: three choices, two pictures


def _iconqa_original(root: Path) -> Path:
    """lupantech/IconQA's release: ``iconqa_data/problems.json`` (answers are choice indices),
    ``pid_splits.json`` keyed ``<ques_type>_<split>``, and a folder per problem holding
    ``image.png`` and the choice files ``choices`` names."""
    base = root / "iconqa_data"
    problems = {
        "11": {"question": "Which is round?", "choices": ["choice_0.png", "choice_1.png", "choice_2.png"], "answer": 2,
               "ques_type": "choose_img", "split": "train", "grade": "prek", "label": "", "skills": []},
        "12": {"question": "How many?", "choices": ["2", "1"], "answer": 0, "ques_type": "choose_txt",
               "split": "train", "grade": "grade1", "label": "", "skills": []},
        "13": {"question": "Count the dots.", "choices": None, "answer": "7", "ques_type": "fill_in_blank",
               "split": "train", "grade": "grade1", "label": "", "skills": []},
        "21": {"question": "How many?", "choices": ["3", "4"], "answer": 1, "ques_type": "choose_txt",
               "split": "test", "grade": "grade1", "label": "", "skills": []},
    }
    for pid, p in problems.items():
        folder = base / "iconqa" / p["split"] / p["ques_type"] / pid
        _save_png(folder / "image.png")
        (folder / "data.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "data.json").write_text(json.dumps(p))
        for k, name in enumerate(p["choices"] or [] if p["ques_type"] == "choose_img" else []):
            _save_png(folder / name, colour=(10 * k, 0, 0))
    splits = {"choose_img_train": ["11"], "choose_txt_train": ["12"], "fill_in_blank_train": ["13"],
              "choose_img_val": [], "choose_txt_val": [], "fill_in_blank_val": [], "choose_txt_test": ["21"],
              "choose_img_test": [], "fill_in_blank_test": []}
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps(splits))
    return base


def test_iconqa_original_release_from_either_folder(tmp_path):
    base = _iconqa_original(tmp_path)
    for folder in (tmp_path, base):
        train, left_out = load_samples("iconqa", folder, "train")
        assert not left_out and [s.id for s in train] == ["12", "11", "13"]  # by question type, then id order
        txt, img, fill = train
        assert (img.options, img.answer, len(img.images)) == (["image 2", "image 3", "image 4"], "image 4", 4)
        assert (txt.options, txt.answer) == (["2", "1"], "2")  # an index, though "1" is also a choice's text
        assert (fill.answer, fill.options) == ("7", [])  # the only fill-in answer: open-ended
    only, _ = load_samples("iconqa", tmp_path, "choose_txt_test")
    assert [(s.id, s.answer) for s in only] == [("21", "4")]
    with pytest.raises(FileNotFoundError, match="IconQA original release .*no split 'dev'.*choose_img_test"):
        load_samples("iconqa", tmp_path, "dev")


def test_a_folder_in_no_known_layout_names_the_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="holds no IconQA layout anther reads; it reads: original release.*"
                                                "Hugging Face copy"):
        load_samples("iconqa", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="holds no ScienceQA layout"):
        load_samples("scienceqa", tmp_path, "train")


def _scienceqa_original(root: Path) -> Path:
    """lupantech/ScienceQA's release: ``data/scienceqa/problems.json`` and ``pid_splits.json``
    (split ``val``, not ``validation``), pictures in ``images/<split>/<pid>/image.png``."""
    base = root / "data" / "scienceqa"
    problems = {
        "5": {"question": "Which colour?", "choices": ["red", "blue"], "answer": 1, "hint": "A square.",
              "image": "image.png", "task": "closed choice", "grade": "grade2", "subject": "natural science",
              "topic": "colours", "category": "", "skill": "", "lecture": "", "solution": "", "split": "train"},
        "6": {"question": "Which is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "", "image": None,
              "task": "closed choice", "grade": "grade2", "subject": "language science", "topic": "grammar",
              "category": "", "skill": "", "lecture": "", "solution": "", "split": "val"},
    }
    _save_png(base / "images" / "train" / "5" / "image.png")
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"train": ["5"], "val": ["6"], "test": [], "minival": ["6"]}))
    return base


def test_scienceqa_original_release(tmp_path):
    _scienceqa_original(tmp_path)
    (train,), _ = load_samples("scienceqa", tmp_path, "train")
    assert (train.answer, train.context, train.task, train.image.size) == ("blue", "A square.", "natural science",
                                                                         (8, 6))
    (val,), _ = load_samples("scienceqa", tmp_path / "data" / "scienceqa", "validation")  # the hub's name for val
    assert val.answer == "cat" and not val.has_image
    (tmp_path / "data" / "scienceqa" / "images" / "train" / "5" / "image.png").unlink()
    with pytest.raises(DataFormatError, match=r"problems\.json: problem 5: image file not found"):
        load_samples("scienceqa", tmp_path, "train")


def test_iconqa_answer_outside_the_choices_names_the_row(tmp_path):
    bad = {"question_id": "9", "question": "q?", "choices": "a,b", "answer": "c",
           "query_image": {"bytes": _png(), "path": None}, "ques_type": "choose_txt"}
    path = _iconqa(tmp_path, [bad])
    with pytest.raises(DataFormatError, match=rf"{path}: row 5: answer 'c' is neither one of the choices"):
        load_samples("iconqa", tmp_path, "val")
    _skip("iconqa", tmp_path, "val", good=4, bad=2)  # the bad row, and question 5 this copy lacks a picture of


def test_iconqa_missing_image_file_names_the_row(tmp_path):
    image = tmp_path / "images" / "gone.png"  # an image stored by path, deleted after the table was written
    _save_png(image)
    bad = {"question_id": "9", "question": "q?", "answer": "2", "query_image": {"bytes": None, "path": str(image)},
           "ques_type": "fill_in_blank"}
    path = _iconqa(tmp_path, [bad])
    image.unlink()
    with pytest.raises(DataFormatError, match=rf"{path}: row 5: image file not found"):
        load_samples("iconqa", tmp_path, "val")


# ---- Hateful Memes: jsonl + img/ -----------------------------------------------------------------------------------

def _hateful(folder: Path, extra_lines: list[str] = ()) -> Path:
    """The Hateful Memes release: ``<split>.jsonl`` records ``{id, img, label, text}``, pictures
    under ``img/`` (here the labelled ``dev_seen`` split)."""
    for i in (1, 2):
        _save_png(folder / "img" / f"0{i}235.png")
    lines = [json.dumps({"id": 1235, "img": "img/01235.png", "label": 1, "text": "a hateful caption"}),
             json.dumps({"id": 2235, "img": "img/02235.png", "label": 0, "text": "a kind caption"}), *extra_lines]
    path = folder / "dev_seen.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hateful_memes_hub_copy(tmp_path):
    """A Hugging Face copy (Multimodal-Fatima/Hatefulmemes_train's columns): image, text, label, id."""
    features = Features({"image": Image(), "text": Value("string"), "label": Value("int64"), "id": Value("int64")})
    rows = {"image": [{"bytes": _png(), "path": None}] * 2, "text": ["mean words", "kind words"], "label": [1, 0],
            "id": [42953, 10]}
    path = tmp_path / "data" / "validation-00000-of-00001.parquet"
    path.parent.mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    mean, kind = load_samples("hateful_memes", tmp_path, "validation")[0]
    assert (mean.id, mean.answer, mean.context, kind.answer) == ("42953", "yes", "mean words", "no") and mean.has_image


def test_hateful_memes_records_become_yes_no_questions(tmp_path):
    _hateful(tmp_path)
    hateful, kind = load_samples("hateful_memes", tmp_path, "dev_seen")[0]
    assert (hateful.answer, kind.answer, hateful.options) == ("yes", "no", ["yes", "no"])
    assert hateful.context == "a hateful caption" and hateful.has_image and hateful.id == "1235"


def test_hateful_memes_bad_label_invalid_json_and_missing_image(tmp_path):
    path = _hateful(tmp_path, [json.dumps({"id": 3, "img": "img/01235.png", "label": 2, "text": "t"}),
                               "{not json",
                               json.dumps({"id": 4, "img": "img/gone.png", "label": 0, "text": "t"})])
    with pytest.raises(DataFormatError, match=rf"{path}:3: 'label' must be 0 or 1"):
        load_samples("hateful_memes", tmp_path, "dev_seen")
    _skip("hateful_memes", tmp_path, "dev_seen", good=2, bad=3)
    path.write_text(path.read_text().splitlines()[-1] + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:1: image file not found: .*gone.png"):
        load_samples("hateful_memes", tmp_path, "dev_seen")


# ---- CrisisMMD: TSV annotations + data_image/ ----------------------------------------------------------------------

CRISIS_HEADER = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image\tlabel_text_image"


def _crisis(folder: Path, extra: list[str] = ()) -> Path:
    """CrisisMMD v2.0: ``crisismmd_datasplit_all/task_<task>_text_img_<split>.tsv`` with the release's
    header, and pictures ``data_image/<event>/<date>/<id>.jpg``."""
    rows = []
    for i, (event, label) in enumerate([("hurricane_irma", "infrastructure_and_utility_damage"),
                                        ("california_wildfires", "not_humanitarian")]):
        image = f"data_image/{event}/10_9_2017/91{i}_0.jpg"
        _save_png(folder / image)
        rows.append(f"{event}\t91{i}\t91{i}_0\tRoads flooded https://t.co/x{i}\t{image}\t{label}\t{label}\t{label}\t"
                    "Positive")
    path = folder / "crisismmd_datasplit_all" / "task_humanitarian_text_img_train.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([CRISIS_HEADER, *rows, *extra]) + "\n")
    return path


def test_crisismmd_tweets_with_images(tmp_path):
    _crisis(tmp_path)
    damage, other = load_samples("crisismmd", tmp_path, "train")[0]
    assert damage.answer == "infrastructure_and_utility_damage" and len(damage.options) == 8
    assert damage.context == "Roads flooded" and damage.domain == "hurricane_irma" and damage.has_image
    assert other.domain == "california_wildfires" and other.task == "humanitarian"
    assert load_samples("crisismmd", tmp_path, "humanitarian_train")[0][0].id == "910_0"


def test_crisismmd_bad_rows_name_file_and_line(tmp_path):
    path = _crisis(tmp_path, ["ev\t1\t1_0\ttext\tdata_image/a.jpg\tnot_a_class\tx\tx\tx",
                              "ev\t2\ttoo few fields",
                              "ev\t3\t3_0\ttext\tdata_image/gone.jpg\tnot_humanitarian\tx\tx\tx"])
    with pytest.raises(DataFormatError, match=rf"{path}:4: label 'not_a_class' is not a humanitarian class"):
        load_samples("crisismmd", tmp_path, "train")
    _skip("crisismmd", tmp_path, "train", good=2, bad=3)


def test_crisismmd_unknown_task_is_refused(tmp_path):
    _crisis(tmp_path)
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        load_samples("crisismmd", tmp_path, "sentiment_train")


# ---- VQA-RAD and SLAKE: JSON lists + image folders -----------------------------------------------------------------

def _vqa_rad(folder: Path, extra: list[dict] = ()) -> Path:
    """The VQA-RAD release: ``VQA_RAD Dataset Public.json`` (split by ``phrase_type``) and
    ``VQA_RAD Image Folder/``."""
    _save_png(folder / "VQA_RAD Image Folder" / "synpic1.jpg")
    base = {"image_name": "synpic1.jpg", "image_organ": "CHEST", "answer_type": "CLOSED", "question_type": "PRES"}
    records = [{**base, "qid": 1, "question": "Is there a mass?", "answer": "Yes", "phrase_type": "freeform"},
               {**base, "qid": 2, "question": "Which side?", "answer": "Left", "phrase_type": "para"},
               {**base, "qid": 3, "question": "What organ?", "answer": "lung", "answer_type": "OPEN",
                "phrase_type": "freeform"},
               {**base, "qid": 4, "question": "Is it normal?", "answer": "no", "phrase_type": "test_freeform"},
               *extra]
    path = folder / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(records, indent=2))
    return path


def test_vqa_rad_splits_by_phrase_type(tmp_path):
    _vqa_rad(tmp_path, [{"qid": 5, "image_name": "synpic1.jpg", "question": "q?", "answer": "x",
                         "phrase_type": "other"}])
    train, train_left_out = load_samples("vqa_rad", tmp_path, "train")
    test, test_left_out = load_samples("vqa_rad", tmp_path, "test")
    assert [s.id for s in train] == ["1", "2", "3"] and [s.id for s in test] == ["4"]
    assert train_left_out == test_left_out == {"phrase_type of no split": 1}  # counted, not dropped silently
    yes, side, organ = train
    assert (yes.answer, yes.options, yes.task, yes.domain) == ("yes", ["yes", "no"], "yesno", "CHEST")
    assert (side.answer, side.options, side.task) == ("left", [], "closed")  # one answer: no one-option choice
    assert (organ.options, organ.task) == ([], "open")
    with pytest.raises(ValueError, match="splits by phrase_type"):
        load_samples("vqa_rad", tmp_path, "validation")


def test_vqa_rad_hub_copy(tmp_path):
    """flaviagiammarino/vqa-rad: parquet splits train and test, columns image, question, answer."""
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    rows = {"image": [{"bytes": _png(), "path": None}] * 3, "question": ["Is there a mass?", "Which side?", "Where?"],
            "answer": ["Yes", "left", "right"]}
    path = tmp_path / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    mass, side, where = load_samples("vqa_rad", tmp_path, "test")[0]
    assert (mass.answer, mass.task, mass.options) == ("yes", "yesno", ["yes", "no"])
    assert (side.task, side.options, where.answer) == ("open", ["left", "right"], "right") and side.has_image


def test_vqa_rad_bad_record_and_missing_image_name_file_and_record(tmp_path):
    path = _vqa_rad(tmp_path, [{"qid": 5, "image_name": "synpic1.jpg", "question": "q?", "phrase_type": "para"},
                               {"qid": 6, "image_name": "gone.jpg", "question": "q?", "answer": "yes",
                                "phrase_type": "para"}])
    with pytest.raises(DataFormatError, match=rf"{path}: record 4: missing field\(s\) \['answer'\]"):
        load_samples("vqa_rad", tmp_path, "train")
    _skip("vqa_rad", tmp_path, "train", good=3, bad=2)


def test_slake_reads_the_english_questions(tmp_path):
    _save_png(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    base = {"img_id": 1, "img_name": "xmlab1/source.jpg", "location": "Lung", "modality": "X-Ray",
            "answer_type": "OPEN", "base_type": "vqa", "content_type": "Organ"}
    records = [{**base, "qid": 1, "question": "Which organ is shown?", "answer": "Lung", "q_lang": "en"},
               {**base, "qid": 2, "question": "图中是哪个器官?", "answer": "肺", "q_lang": "zh"},
               {**base, "qid": 3, "question": "Is the lung healthy?", "answer": "Yes", "q_lang": "en",
                "answer_type": "CLOSED"},
               {**base, "qid": 4, "img_name": "xmlab9/source.jpg", "question": "q?", "answer": "x", "q_lang": "en"}]
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataFormatError, match=rf"{path}: record 3: image file not found"):
        load_samples("slake", tmp_path, "validate")
    organ, healthy = _skip("slake", tmp_path, "validate", good=2, bad=2)
    assert load_samples("slake", tmp_path, "validate", skip_bad=True)[1] == {"not in English": 1, "missing image": 1}
    assert (organ.answer, organ.domain, organ.task) == ("lung", "X-Ray", "open")
    assert (healthy.answer, healthy.options) == ("yes", ["yes", "no"])


# ---- LLaVA-style instruction JSON ---------------------------------------------------------------------------------

def _llava_records() -> list[dict]:
    """LLaVA's conversation format (llava_instruct_150k.json): ``from``/``value`` turns, or the
    ``role``/``content`` spelling, lettered choices one per line."""
    return [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the bus?"},
            {"from": "gpt", "value": "White and red."},
            {"from": "human", "value": "Where is it?"},
            {"from": "gpt", "value": "On a street."}]},
        {"id": "mc1", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"role": "user", "content": "<image>\nIs the content hateful?\nOptions:\n(A) not-hateful\n(B) hateful"},
            {"role": "assistant", "content": "(B) hateful"}]},
        {"id": "text1", "conversations": [
            {"from": "human", "value": "Which is a fruit?\nA. apple\nB. chair"},
            {"from": "gpt", "value": "A"}]},
    ]


def test_llava_conversations_become_one_sample_per_turn(tmp_path):
    _save_png(tmp_path / "coco" / "train2017" / "000000033471.jpg")
    (tmp_path / "train.json").write_text(json.dumps(_llava_records()))
    bus, street, meme, fruit = load_samples("llava", tmp_path, "train")[0]
    assert (bus.id, bus.question, bus.answer, bus.context) == ("000000033471", "What colour is the bus?",
                                                               "White and red.", "")
    assert (street.id, street.context, street.history) == ("000000033471#1", "",
                                                           [("What colour is the bus?", "White and red.")])
    assert bus.options == street.options == [] and bus.task == "open"  # open-ended: evaluated by generation
    assert (meme.options, meme.answer, meme.task) == (["(A) not-hateful", "(B) hateful"], "(B) hateful", "choice")
    assert (fruit.options, fruit.answer, fruit.has_image) == (["A", "B"], "A", False)  # the letter asked for
    assert bus.has_image and "<image>" not in bus.question


def test_llava_scienceqa_conversion_inline_options_and_an_image_folder(tmp_path):
    """LLaVA's own ScienceQA conversion: the choices inline, ``(A) x (B) y``, the answer a sentence
    naming the letter; its pictures kept apart from the JSON (``data.image_folder``), one record
    with two pictures."""
    _save_png(tmp_path / "pictures" / "a.png")
    _save_png(tmp_path / "pictures" / "b.png")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "test.json").write_text(json.dumps([
        {"id": "sqa1", "image": "a.png", "conversations": [
            {"from": "human",
             "value": "Context: A magnet.\nWhich pole is north?\nOptions: (A) left (B) right\n<image>"},
            {"from": "gpt", "value": "The answer is B."}]},
        {"id": "two", "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nAre they the same?"}, {"from": "gpt", "value": "Yes."}]},
    ]))
    cfg = load_config("default", ["data.format=llava", f"data.path={tmp_path / 'json'}",
                                  f"data.image_folder={tmp_path / 'pictures'}"])
    sqa, two = split_samples(cfg, tmp_path / "json", "test")
    assert (sqa.options, sqa.answer) == (["The answer is A.", "The answer is B."], "The answer is B.")
    assert len(two.images) == 2 and two.options == [] and two.answer == "Yes."
    with pytest.raises(DataFormatError, match="image file not found"):
        load_samples("llava", tmp_path / "json", "test")  # without the image folder


def test_llava_jsonl_with_bad_and_imageless_records(tmp_path):
    records = _llava_records()[2:]
    lines = [json.dumps(r) for r in records] + [
        json.dumps({"id": "x", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}]}),
        json.dumps({"id": "y", "image": "gone.jpg", "conversations": records[0]["conversations"]}),
        "[truncated"]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: 'conversations' must alternate human and assistant"):
        load_samples("llava", tmp_path, "test")
    _skip("llava", tmp_path, "test", good=1, bad=3)


# ---- the registry and the run config ------------------------------------------------------------------------------

def test_registry_names_every_format_and_refuses_others(tmp_path):
    assert set(FORMATS) == {"anther", "scienceqa", "iconqa", "hateful_memes", "crisismmd", "vqa_rad", "slake",
                            "llava"}
    with pytest.raises(ValueError, match="unknown data format 'coco'"):
        load_samples("coco", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_samples("hateful_memes", tmp_path / "absent", "train")


def test_a_run_reads_its_train_and_test_splits_through_data_format(tmp_path):
    _hateful(tmp_path)
    (tmp_path / "train.jsonl").write_text((tmp_path / "dev_seen.jsonl").read_text())
    cfg = load_config("default", ["data.format=hateful_memes", f"data.path={tmp_path}", "data.test_split=dev_seen"])
    assert [s.answer for s in split_samples(cfg, tmp_path, "train")] == ["yes", "no"]
    assert len(split_samples(cfg, tmp_path, "test")) == 2
