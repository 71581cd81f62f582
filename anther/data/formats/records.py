"""What every loader of a published data set shares: turning raw records into Samples with
errors that name the file and the record, and counting (never silently dropping) the records
it was asked to skip.

Each record is located by a ``where`` string (``file:line`` for line-based files,
``file: record N`` for JSON lists, ``file: row N`` for tables) that every error starts with.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from anther.core.errors import LeftOut
from anther.core.images import ImageFile, ImageRef
from anther.core.sample import DataFormatError, Sample, check_exist, check_images, jsonl_lines, parse_json_line

__all__ = ["collect", "file_image", "json_list_records", "jsonl_lines", "parse_json_line", "read_json",
           "require", "split_names", "with_answer_vocabulary"]


def collect(records: Iterable[tuple[str, Any]], convert: Callable[[Any, str], Sample | list[Sample]],
            skip_bad: bool) -> tuple[list[Sample], Counter[str]]:
    """``convert`` every ``(where, record)`` into a Sample (or a list of them: a conversation's
    turns, none) and decode each image once to check it; a :class:`DataFormatError` is raised, or
    with ``skip_bad`` counted by its reason (a :class:`LeftOut` record is always counted): returns
    the samples, in order, and the records left out, by reason."""
    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    for where, record in records:
        try:
            converted = convert(record, where)
            converted = converted if isinstance(converted, list) else [converted]
            for sample in converted:
                check_images(sample)
            samples += converted
        except DataFormatError as e:
            if not (skip_bad or isinstance(e, LeftOut)):
                raise
            skipped[e.reason] += 1
    return samples, skipped


def require(record: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """``record`` as a dict holding every field in ``fields`` (a null counts as missing)."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected an object with fields {list(fields)}, got {type(record).__name__}")
    missing = [k for k in fields if record.get(k) is None]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing}", "missing field")
    return record


def file_image(folder: Path, relative: str, where: str) -> tuple[ImageRef, ...]:
    """The ref of an image file a record names relative to ``folder``, checked to exist."""
    return check_exist((ImageFile(str(folder / relative), where),))


def read_json(path: Path) -> Any:
    """A whole JSON file; a syntax error names the file, line and column."""
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from e


def json_list_records(path: Path) -> Iterable[tuple[str, Any]]:
    """``(where, record)`` of a file holding a JSON list, records numbered from 0."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return ((f"{path}: record {i}", record) for i, record in enumerate(data))


def with_answer_vocabulary(samples: list[Sample]) -> list[Sample]:
    """Give every open-ended sample (empty ``options``) the distinct answers of its task in the
    split as options, so multiple-choice scoring is classification over the data set's answer
    set (as VQA-RAD and SLAKE are usually evaluated) and exact match still scores generation. A
    task with a single distinct answer gets none (one option would always be right): its samples
    stay open-ended, evaluated by generation only."""
    vocab: dict[str, set[str]] = {}
    for s in samples:
        if not s.options:
            vocab.setdefault(s.task, set()).add(s.answer)
    return [dataclasses.replace(s, options=sorted(vocab[s.task])) if not s.options and len(vocab[s.task]) > 1
            else s for s in samples]


def split_names(folder: Path, pattern: str) -> list[str]:
    """The names matching ``pattern`` in ``folder``, for 'which splits are there' errors."""
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []
