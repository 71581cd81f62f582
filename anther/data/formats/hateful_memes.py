"""Hateful Memes (Kiela et al., NeurIPS 2020), from its release folder or a Hugging Face copy.

The release folder holds one JSON-lines file per split (``train.jsonl``, ``dev_seen.jsonl``,
``dev_unseen.jsonl``, ``test_seen.jsonl``, ``test_unseen.jsonl``; the phase-1 ``test.jsonl``
has no labels and cannot be read) and the pictures under ``img/``. A record::

    {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"}

A Hugging Face copy (``Multimodal-Fatima/Hatefulmemes_train``, ``emily49/hateful_memes_train_dev``
and the like, parquet or ``save_to_disk``) has columns ``image``, ``text``, ``label`` (0 / 1) and
often ``id``, and names its splits itself (``train``, ``validation``, ``test``: set
``data.test_split`` to its labelled one).

Each record becomes a yes/no question (``is this meme hateful?``, ``yes`` for label 1) whose
context is the meme's text and whose image is the meme: the binary task ROC AUC is reported for.
"""

from __future__ import annotations

from pathlib import Path

from anther.core.images import ImageRef
from anther.core.sample import DataFormatError, Sample

from .hf_tables import TableRow, find_hub_copy, hf_rows
from .layouts import Layout, Loaded, load_layout
from .records import collect, file_image, jsonl_lines, parse_json_line, require

FIELDS = ("id", "img", "label", "text")
QUESTION = "is this meme hateful?"
OPTIONS = ["yes", "no"]  # the positive class first


def load_hateful_memes(folder: Path, split: str, skip_bad: bool = False) -> Loaded:
    return load_layout("Hateful Memes", LAYOUTS, folder, split, skip_bad)


def _load_release(folder: Path, split: str, skip_bad: bool) -> Loaded:
    def convert(line: bytes, where: str) -> Sample:
        record = require(parse_json_line(line, where), FIELDS, where)
        return hateful_memes_sample(record, str(record["id"]), file_image(folder, str(record["img"]), where), where)

    return collect(jsonl_lines(folder / f"{split}.jsonl"), convert, skip_bad)


def _load_hub(folder: Path, split: str, skip_bad: bool) -> Loaded:
    def convert(row: TableRow, where: str) -> Sample:
        values = require(row.values, ("image", "label", "text"), where)
        return hateful_memes_sample(values, str(values.get("id") or f"{split}-{row.index:06d}"), row.image("image"),
                                    where)

    return collect(((row.where, row) for row in hf_rows(folder, split)), convert, skip_bad)


def hateful_memes_sample(record: dict, sample_id: str, images: tuple[ImageRef, ...], where: str) -> Sample:
    if record["label"] not in (0, 1):
        raise DataFormatError(f"{where}: 'label' must be 0 or 1, got {record['label']!r}", "bad label")
    return Sample(
        id=sample_id,
        question=QUESTION,
        answer=OPTIONS[0] if record["label"] == 1 else OPTIONS[1],
        options=list(OPTIONS),
        context=str(record["text"]),
        images=images,
        task="hateful",
    )


def _find_release(folder: Path) -> Path | None:
    return folder if (folder / "img").is_dir() and next(folder.glob("*.jsonl"), None) else None


LAYOUTS = [
    Layout("release (<split>.jsonl and img/)", _find_release, _load_release),
    Layout("Hugging Face copy (parquet files or save_to_disk splits with image, text, label)", find_hub_copy,
           _load_hub),
]
