"""The one sample type every anther data set is read into, and its on-disk format.

A data set on disk is a folder::

    my_data/
      train.jsonl        one JSON object per line (fields below)
      test.jsonl
      images/...         image files referenced by relative path

Fields of a record:

- ``id`` (str): unique within the split.
- ``image`` (str or null): path of the image, relative to the folder; null for text-only.
- ``context`` (str): free text that comes with the sample (may be empty).
- ``question`` (str): the instruction.
- ``answer`` (str): the reference answer.
- ``options`` (list of str): answer choices for multiple-choice scoring; must contain ``answer``.
- ``task`` (str, optional): question kind, used for per-task metrics.
- ``domain`` (str, optional): visual domain, used by the domain-shift scenario.

Missing modalities are first-class: a sample with ``image = null`` carries no image
tokens at all, and one with an empty ``context`` keeps only the instruction.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

REQUIRED_FIELDS = ("id", "question", "answer", "options")


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
            f.write(json.dumps(record) + "\n")
    return path


def load_image(path: Path, where: str) -> Image.Image:
    """Open an image fully (so truncation is caught here), or fail naming ``where``."""
    if not path.is_file():
        raise DataFormatError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataFormatError(f"{where}: cannot decode image {path}: {e}") from e


def record_to_sample(record: object, folder: Path, where: str) -> Sample:
    """Validate one JSON record and turn it into a Sample."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing}")
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataFormatError(f"{where}: 'options' must be a list of strings")
    if record["answer"] not in options:
        raise DataFormatError(f"{where}: answer {record['answer']!r} is not among options {options}")
    image_rel = record.get("image")
    image = load_image(folder / image_rel, where) if image_rel else None
    return Sample(
        id=str(record["id"]),
        question=str(record["question"]),
        answer=str(record["answer"]),
        options=list(options),
        context=str(record.get("context") or ""),
        image=image,
        image_path=image_rel,
        task=str(record.get("task", "vqa")),
        domain=str(record.get("domain", "default")),
    )


def read_split(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    """Read ``folder/split.jsonl``; return the samples and how many bad records were skipped.

    A bad record raises :class:`DataFormatError` naming file and line, unless
    ``skip_bad`` is set, in which case it is counted (never silently dropped).
    """
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}")
    samples, skipped = [], 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{where}: invalid JSON: {e}") from e
                samples.append(record_to_sample(record, Path(folder), where))
            except DataFormatError:
                if not skip_bad:
                    raise
                skipped += 1
    return samples, skipped
