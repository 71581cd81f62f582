"""IconQA (Lu et al., NeurIPS 2021 datasets track), in either layout it is shipped in.

- **Original release** (github.com/lupantech/IconQA, ``iconqa_data/``): ``problems.json`` (an
  object from problem id to ``{question, choices, answer, ques_type, split, grade, label, ...}``;
  ``answer`` the index of the right choice, or the text for ``fill_in_blank``), ``pid_splits.json``
  (keys ``<ques_type>_<split>``: ``choose_txt_train``, ``choose_img_val``, ...), and one folder per
  problem, ``iconqa/<split>/<ques_type>/<pid>/`` with ``image.png`` and, for image choices, the
  files ``choices`` names (``choice_0.png``, ...). ``data.path`` may be ``iconqa_data`` or the
  folder above it. Split ``train`` reads all three question types; ``choose_img_train`` one.
- **Hugging Face copy** (``lmms-lab/ICON-QA``, splits ``val`` and ``test`` only: train on one and
  test on the other, ``data.train_split=val``): columns ``question_id``, ``question``, ``choices``
  (one comma-separated string), ``answer`` (a string), ``query_image``, ``choice_image_0``,
  ``choice_image_1``, ``ques_type``, ... (see :mod:`anther.data.formats.hf_tables`). The copy keeps
  only two choice pictures per question, so image-choice questions with more choices are left out
  and counted (``choice pictures not in this copy``); the original release has them all.

The question types become the task:

- ``choose_txt``: the choices are the options;
- ``choose_img``: the sample's pictures are the question's (image 1) and then each choice's
  (image 2, 3, ...); the options name them, ``image 2``, ``image 3``, ... Families that take one
  picture see them tiled into one numbered picture (``data.multi_image``);
- ``fill_in_blank``: open answers (mostly numbers); the options are every answer of this kind
  in the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.errors import LeftOut
from anther.core.images import ImageRef
from anther.core.sample import DataFormatError, Sample

from .hf_tables import TableRow, find_hub_copy, hf_rows
from .layouts import Layout, Loaded, first_holding, load_layout
from .records import collect, file_image, read_json, require, with_answer_vocabulary

KINDS = ("choose_txt", "choose_img", "fill_in_blank")
HUB_FIELDS = ("question", "answer", "ques_type", "query_image")
ORIGINAL_FIELDS = ("question", "answer", "ques_type")


def load_iconqa(folder: Path, split: str, skip_bad: bool = False) -> Loaded:
    samples, left_out = load_layout("IconQA", LAYOUTS, folder, split, skip_bad)
    return with_answer_vocabulary(samples), left_out


def choice_options(count: int) -> list[str]:
    """The options of an image-choice question: the choice pictures' numbers (the question's
    picture is image 1)."""
    return [f"image {k + 2}" for k in range(count)]


# The original release.

def _load_original(base: Path, split: str, skip_bad: bool) -> Loaded:
    problems, splits = read_json(base / "problems.json"), read_json(base / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise DataFormatError(f"{base}: problems.json and pid_splits.json must each hold a JSON object")
    keys = [split] if split in splits else [f"{kind}_{split}" for kind in KINDS if f"{kind}_{split}" in splits]
    if not keys:
        raise FileNotFoundError(f"IconQA original release at {base}: no split {split!r} in pid_splits.json, nor "
                                f"<ques_type>_{split}; it has {', '.join(sorted(splits))}")
    pids = [str(pid) for key in keys for pid in splits[key]]

    def convert(pid: str, where: str) -> Sample:
        problem = require(problems.get(pid), ORIGINAL_FIELDS, where)
        kind = _kind(problem, where)
        folder = f"iconqa/{problem.get('split') or split}/{kind}/{pid}"
        images = file_image(base, f"{folder}/image.png", where)
        choices = problem.get("choices") or []
        if kind == "choose_img":
            images += tuple(ref for name in _choice_list(choices, where) for ref in
                            file_image(base, f"{folder}/{name}", where))
        return iconqa_sample(pid, problem["question"], kind, choices, problem["answer"], images, where)

    return collect(((f"{base / 'problems.json'}: problem {pid}", pid) for pid in pids), convert, skip_bad)


# The Hugging Face copy.

def _load_hub(folder: Path, split: str, skip_bad: bool) -> Loaded:
    def convert(row: TableRow, where: str) -> Sample:
        values = require(row.values, HUB_FIELDS, where)
        kind = _kind(values, where)
        images = row.image("query_image")
        choices = values.get("choices") or []
        if kind == "choose_img":
            names = _choice_list(choices, where)
            pictures = tuple(ref for k in range(len(names)) for ref in row.image(f"choice_image_{k}"))
            if len(pictures) < len(names):
                raise LeftOut(f"{where}: {len(names)} choices but {len(pictures)} choice pictures in this copy",
                              "choice pictures not in this copy")
            images += pictures
        sample_id = str(values.get("question_id") or f"{split}-{row.index:06d}")
        return iconqa_sample(sample_id, values["question"], kind, choices, values["answer"], images, where)

    return collect(((row.where, row) for row in hf_rows(folder, split)), convert, skip_bad)


# Both.

def iconqa_sample(sample_id: str, question: Any, kind: str, choices: Any, answer: Any,
                  images: tuple[ImageRef, ...], where: str) -> Sample:
    if kind == "fill_in_blank":
        options, answer = [], str(answer).strip()  # the options: the split's answers (load_iconqa)
    else:
        names = _choice_list(choices, where)
        options = names if kind == "choose_txt" else choice_options(len(names))
        answer = options[_choice_index(answer, names, where)]
    return Sample(id=sample_id, question=str(question), answer=answer, options=options, images=images, task=kind)


def _kind(record: dict[str, Any], where: str) -> str:
    kind = str(record["ques_type"])
    if kind not in KINDS:
        raise DataFormatError(f"{where}: unknown ques_type {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _choice_list(value: Any, where: str) -> list[str]:
    """The choices: a list, or one comma-separated string (the Hugging Face copy)."""
    choices = value.split(",") if isinstance(value, str) else value
    if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise DataFormatError(f"{where}: 'choices' must be a comma-separated string or a list, got {value!r:.80}")
    choices = [str(c).strip() for c in choices if str(c).strip()]
    if len(choices) < 2:
        raise DataFormatError(f"{where}: a multiple-choice question needs at least two choices, got {choices}")
    return choices


def _choice_index(answer: Any, choices: list[str], where: str) -> int:
    """Which choice ``answer`` names: an integer is an index (the original release); a string is
    the choice's text (``choice_1.png`` or ``7``, the Hugging Face copy), else an index."""
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    text = str(answer).strip()
    if text in choices:
        return choices.index(text)
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    raise DataFormatError(f"{where}: answer {text!r} is neither one of the choices {choices} nor their index",
                          "answer not an option")


LAYOUTS = [
    Layout("original release (problems.json and pid_splits.json, pictures in iconqa/<split>/<ques_type>/<pid>/; "
           "the folder iconqa_data or the one above it)",
           first_holding("pid_splits.json", "iconqa_data/pid_splits.json"), _load_original),
    Layout("Hugging Face copy lmms-lab/ICON-QA (parquet files or save_to_disk splits)", find_hub_copy, _load_hub),
]
