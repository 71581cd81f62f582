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
- ``images`` (list of str, instead of ``image``): several pictures, in the order the question
  refers to them (``image 1``, ``image 2``, ...). Families whose processors take several images
  get them all; the others get them tiled into one numbered picture (``data.multi_image``).
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

A Sample holds :mod:`anther.core.images` refs, not pixels: a picture is decoded when a batch
needs it. Reading a split decodes each image once to check it, and keeps none.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from anther.core.errors import DataFormatError
from anther.core.images import ImageFile, ImageRef

__all__ = ["DataFormatError", "Sample", "check_images", "image_path", "jsonl_lines", "parse_json_line",
           "read_split", "record_to_sample", "write_split"]

REQUIRED_FIELDS = ("id", "question", "answer", "options")
TEXT_FIELDS = ("question", "answer")  # must be non-empty strings
OPTIONAL_TEXT_FIELDS = ("context", "task", "domain")  # strings or null


@dataclass
class Sample:
    """One (image, context, question, answer) example."""

    id: str
    question: str
    answer: str
    options: list[str]
    context: str = ""
    images: tuple[ImageRef, ...] = ()  # decoded when a batch needs them (anther.core.images)
    task: str = "vqa"
    domain: str = "default"
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (question, answer) turns

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    @property
    def image(self) -> Image.Image | None:
        """The first picture, decoded; None for a sample without one."""
        return self.images[0].open() if self.images else None

    def pictures(self) -> list[Image.Image]:
        """Every picture of the sample, decoded, in order."""
        return [ref.open() for ref in self.images]

    @property
    def has_text(self) -> bool:
        return bool(self.context)

    def without_image(self) -> Sample:
        return dataclasses.replace(self, images=())

    def without_text(self) -> Sample:
        return dataclasses.replace(self, context="")


def write_split(samples: list[Sample], folder: Path, split: str) -> Path:
    """Write ``samples`` as ``folder/split.jsonl`` with their images as PNG files."""
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            paths = []
            for k, picture in enumerate(s.pictures()):
                paths.append(f"images/{split}/{s.id}" + (f"-{k}" if k else "") + ".png")
                picture.save(folder / paths[-1])
            record = {
                "id": s.id,
                **({"images": paths} if len(paths) > 1 else {"image": paths[0] if paths else None}),
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
        raise DataFormatError(f"{where}: missing field(s) {missing}", "missing field")
    _check_types(record, where)
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataFormatError(f"{where}: 'options' must be a list of strings")
    if record["answer"] not in options:
        raise DataFormatError(f"{where}: answer {record['answer']!r} is not among options {options}",
                              "answer not an option")
    return Sample(
        id=str(record["id"]),
        question=str(record["question"]),
        answer=str(record["answer"]),
        options=list(options),
        context=str(record.get("context") or ""),
        images=_record_images(record, folder, where),
        task=str(record.get("task") or "vqa"),
        domain=str(record.get("domain") or "default"),
        history=[(q, a) for q, a in record.get("history") or []],
    )


def _record_images(record: dict, folder: Path, where: str) -> tuple[ImageRef, ...]:
    """The refs of a record's ``image`` or ``images`` (each checked to exist, not yet decoded)."""
    if record.get("images") is not None:
        if record.get("image") is not None:
            raise DataFormatError(f"{where}: give 'image' or 'images', not both")
        paths = record["images"]
        if not isinstance(paths, list) or not paths:
            raise DataFormatError(f"{where}: 'images' must be a non-empty list of relative paths, got {paths!r:.80}")
    else:
        paths = [record.get("image")]
    refs = tuple(ImageFile(str(Path(folder) / rel), where) for rel in (image_path(p, where) for p in paths) if rel)
    return check_exist(refs)


def check_exist(refs: tuple[ImageRef, ...]) -> tuple[ImageRef, ...]:
    """``refs``, each one checked to be there (a missing file fails naming its record)."""
    for ref in refs:
        if not ref.exists():
            ref.open()  # raises the ImageError that names the record and the file
    return refs


def check_images(sample: Sample) -> Sample:
    """``sample`` after decoding each of its pictures once (and keeping none of them): a corrupt,
    truncated or oversized image fails here, naming its record, instead of in a later batch."""
    for ref in sample.images:
        ref.open()
    return sample


def read_split(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], Counter[str]]:
    """Read ``folder/split.jsonl``; return the samples and the bad records skipped, by reason.

    A bad record (not UTF-8, not JSON, a missing or mistyped field, a missing or undecodable
    image, an id already used by an earlier line) raises :class:`DataFormatError` naming file and
    line, unless ``skip_bad`` is set, in which case it is counted (never silently dropped).
    """
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}")
    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    first_line: dict[str, str] = {}  # id -> where it was first seen
    for where, line in jsonl_lines(path):
        try:
            sample = check_images(record_to_sample(parse_json_line(line, where), Path(folder), where))
            if sample.id in first_line:
                raise DataFormatError(f"{where}: id {sample.id!r} is already used at {first_line[sample.id]}",
                                      "reused id")
            first_line[sample.id] = where
            samples.append(sample)
        except DataFormatError as e:
            if not skip_bad:
                raise
            skipped[e.reason] += 1
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
