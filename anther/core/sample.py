"""The one sample type every anther data set is read into, and its on-disk format.

A data set on disk is a folder::

    my_data/
      train.jsonl        one JSON object per line (fields below)
      test.jsonl
      images/...         image files referenced by relative path

Fields of a record:

- ``id`` (str or int): unique within the split (a reused id is an error).
- ``image`` (str or null): path of the image, relative to the folder and inside it (no absolute
  path, no ``..``); null for text-only. It must decode fully: a corrupt or truncated file, or
  one over Pillow's ``Image.MAX_IMAGE_PIXELS``, is an error.
- ``context`` (str): free text that comes with the sample (may be empty).
- ``question`` (str, non-empty): the instruction.
- ``answer`` (str, non-empty): the reference answer.
- ``options`` (list of str): answer choices for multiple-choice scoring; must contain ``answer``.
- ``task`` (str, optional): question kind, used for per-task metrics.
- ``domain`` (str, optional): visual domain, used by the domain-shift scenario.
- ``history`` (list of [question, answer] pairs, optional): earlier turns of a multi-turn
  conversation about the same image, before ``question``; the model sees them as turns of its
  chat format, and only the final ``answer`` is trained and evaluated.

Missing modalities are first-class: a sample with ``image = null`` carries no image
tokens at all, and one with an empty ``context`` keeps only the instruction.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

REQUIRED_FIELDS = ("id", "question", "answer", "options")
TEXT_FIELDS = ("question", "answer")  # must be non-empty strings
OPTIONAL_TEXT_FIELDS = ("context", "task", "domain")  # strings or null
# What Pillow raises on a file it cannot decode: unknown or corrupt format (OSError,
# UnidentifiedImageError), truncated data (OSError, EOFError, struct.error), bad headers
# (SyntaxError, ValueError), or more pixels than Image.MAX_IMAGE_PIXELS allows (a
# decompression bomb: DecompressionBombError).
IMAGE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


class DataFormatError(ValueError):
    """A record on disk is malformed; the message names the file and the record."""


@dataclass
class Sample:
    """One (image, context, question, answer) example."""

    id: str
    question: str
    answer: str
    options: list[str]
    context: str = ""
    image: Image.Image | None = field(default=None, repr=False, compare=False)
    image_path: str | None = None
    task: str = "vqa"
    domain: str = "default"
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (question, answer) turns

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def has_text(self) -> bool:
        return bool(self.context)

    def without_image(self) -> Sample:
        return dataclasses.replace(self, image=None, image_path=None)

    def without_text(self) -> Sample:
        return dataclasses.replace(self, context="")


def write_split(samples: list[Sample], folder: Path, split: str) -> Path:
    """Write ``samples`` as ``folder/split.jsonl`` with their images as PNG files."""
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            rel = None
            if s.image is not None:
                rel = f"images/{split}/{s.id}.png"
                s.image.save(folder / rel)
            record = {
                "id": s.id,
                "image": rel,
                "context": s.context,
                "question": s.question,
                "answer": s.answer,
                "options": s.options,
                "task": s.task,
                "domain": s.domain,
            }
            if s.history:
                record["history"] = [list(turn) for turn in s.history]
            f.write(json.dumps(record) + "\n")
    return path


def load_image(path: Path, where: str) -> Image.Image:
    """Open an image fully (so truncation is caught here), or fail naming ``where``."""
    if not path.is_file():
        raise DataFormatError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except IMAGE_ERRORS as e:
        raise DataFormatError(f"{where}: cannot decode image {path}: {type(e).__name__}: {e}") from e


def image_path(value: object, where: str) -> str | None:
    """A record's ``image``: null, or a relative path inside the data folder."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: 'image' must be a relative path or null, got {value!r:.80}")
    parts = PurePosixPath(value.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise DataFormatError(f"{where}: 'image' must be a path inside the data folder, got {value!r}")
    return value


def _check_types(record: dict, where: str) -> None:
    for k in TEXT_FIELDS:
        if not isinstance(record[k], str) or not record[k].strip():
            raise DataFormatError(f"{where}: {k!r} must be a non-empty string, got {record[k]!r:.80}")
    for k in OPTIONAL_TEXT_FIELDS:
        if record.get(k) is not None and not isinstance(record[k], str):
            raise DataFormatError(f"{where}: {k!r} must be a string or null, got {record[k]!r:.80}")
    history = record.get("history")
    if history is not None and not (isinstance(history, list) and all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) and x.strip() for x in t) for t in history)):
        raise DataFormatError(f"{where}: 'history' must be a list of [question, answer] pairs of non-empty strings, "
                              f"got {history!r:.80}")
    if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool) or str(record["id"]) == "":
        raise DataFormatError(f"{where}: 'id' must be a non-empty string or an integer, got {record['id']!r:.80}")


def record_to_sample(record: object, folder: Path, where: str) -> Sample:
    """Validate one JSON record and turn it into a Sample."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_FIELDS if record.get(k) is None]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing}")
    _check_types(record, where)
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataFormatError(f"{where}: 'options' must be a list of strings")
    if record["answer"] not in options:
        raise DataFormatError(f"{where}: answer {record['answer']!r} is not among options {options}")
    image_rel = image_path(record.get("image"), where)
    image = load_image(folder / image_rel, where) if image_rel else None
    return Sample(
        id=str(record["id"]),
        question=str(record["question"]),
        answer=str(record["answer"]),
        options=list(options),
        context=str(record.get("context") or ""),
        image=image,
        image_path=image_rel,
        task=str(record.get("task") or "vqa"),
        domain=str(record.get("domain") or "default"),
        history=[(q, a) for q, a in record.get("history") or []],
    )


def read_split(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    """Read ``folder/split.jsonl``; return the samples and how many bad records were skipped.

    A bad record (not UTF-8, not JSON, a missing or mistyped field, a missing or undecodable
    image, an id already used by an earlier line) raises :class:`DataFormatError` naming file and
    line, unless ``skip_bad`` is set, in which case it is counted (never silently dropped).
    """
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}")
    samples, skipped = [], 0
    first_line: dict[str, str] = {}  # id -> where it was first seen
    for where, line in jsonl_lines(path):
        try:
            sample = record_to_sample(parse_json_line(line, where), Path(folder), where)
            if sample.id in first_line:
                raise DataFormatError(f"{where}: id {sample.id!r} is already used at {first_line[sample.id]}")
            first_line[sample.id] = where
            samples.append(sample)
        except DataFormatError:
            if not skip_bad:
                raise
            skipped += 1
    return samples, skipped


def jsonl_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(file:line, bytes)`` of every non-blank line of a JSON-lines file, undecoded: each is
    parsed with :func:`parse_json_line`, so a line that is not UTF-8 or not JSON is one bad
    record like any other (named, or counted with ``skip_bad``)."""
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file {path}")
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", line


def parse_json_line(line: str | bytes, where: str) -> object:
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: invalid JSON: {e}") from e
