"""Hateful Memes (Kiela et al., NeurIPS 2020) from its release folder.

The folder holds one JSON-lines file per split (``train.jsonl``, ``dev_seen.jsonl``,
``dev_unseen.jsonl``, ``test_seen.jsonl``, ``test_unseen.jsonl``; the phase-1 ``test.jsonl``
has no labels and cannot be read) and the pictures under ``img/``. A record::

    {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"}

Each record becomes a yes/no question (``is this meme hateful?``, ``yes`` for label 1) whose
context is the meme's text and whose image is the meme: the binary task ROC AUC is reported for.
"""

from __future__ import annotations

from pathlib import Path

from anther.core.sample import DataFormatError, Sample

from .records import collect, file_image, jsonl_lines, parse_json_line, require

FIELDS = ("id", "img", "label", "text")
QUESTION = "is this meme hateful?"
OPTIONS = ["yes", "no"]  # the positive class first


def load_hateful_memes(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    return collect(jsonl_lines(folder / f"{split}.jsonl"),
                   lambda line, where: hateful_memes_sample(parse_json_line(line, where), folder, where), skip_bad)


def hateful_memes_sample(record: object, folder: Path, where: str) -> Sample:
    record = require(record, FIELDS, where)
    if record["label"] not in (0, 1):
        raise DataFormatError(f"{where}: 'label' must be 0 or 1, got {record['label']!r}", "bad label")
    return Sample(
        id=str(record["id"]),
        question=QUESTION,
        answer=OPTIONS[0] if record["label"] == 1 else OPTIONS[1],
        options=list(OPTIONS),
        context=str(record["text"]),
        images=file_image(folder, str(record["img"]), where),
        task="hateful",
    )
