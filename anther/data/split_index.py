"""A split read once into an index on disk, from which each client reads only its own records.

Reading a published data set means parsing its annotation files whole and decoding every picture
once to check it. That is done once per split (by whichever process needs it first; the others
wait on a file lock) into ``$ANTHER_HOME/index/<key>/``:

- ``records.jsonl``: one line per sample, its text fields and its pictures' refs, no pixels;
- ``offsets.npy``: where each line starts, so a client seeks to its own records only;
- ``tasks.npy``, ``answers.npy``, ``domains.npy``: each record's task, answer and domain as codes
  into the names in ``index.json``, which partitioning and stratified sampling need of every
  record (memory-mapped: a few bytes a record, never the records themselves);
- ``index.json``: the counts, the names, and the records left out by reason.

The key covers the folder, the format, the split, the reading options and the size and time of
every annotation file in the folder (to three levels), so an edited data set is indexed again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from filelock import FileLock

from anther.core.config import anther_home
from anther.core.images import ImageFile, ImageRef, TableImage
from anther.core.sample import Sample
from anther.data.formats.registry import load_samples

INDEX_VERSION = 1  # bumped when what an index holds changes
ANNOTATION_SUFFIXES = {".json", ".jsonl", ".tsv", ".csv", ".parquet", ".arrow"}


@dataclass(frozen=True)
class SplitSource:
    """What an index is of: one split of a data set folder, read one way."""

    folder: str
    data_format: str
    split: str
    skip_bad: bool = False
    image_folder: str | None = None

    def key(self) -> str:
        files = sorted(_annotation_files(Path(self.folder)))
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        raw = json.dumps([INDEX_VERSION, asdict(self), stamp])
        return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _annotation_files(folder: Path, depth: int = 3) -> list[Path]:
    found = []
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.is_file() and entry.suffix in ANNOTATION_SUFFIXES:
            found.append(entry)
        elif entry.is_dir() and depth > 1:
            found += _annotation_files(entry, depth - 1)
    return found


class SplitIndex:
    """An indexed split: its size, every record's task, answer and domain, and the records
    themselves read on demand (:meth:`samples`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        meta = json.loads((root / "index.json").read_text())
        self.size: int = meta["size"]
        self.left_out: Counter[str] = Counter(meta["left_out"])
        self._names = meta["names"]
        self._offsets = np.load(root / "offsets.npy", mmap_mode="r")

    def column(self, name: str) -> tuple[str, ...]:
        """Every record's ``task``, ``answer`` or ``domain``, in order."""
        codes = np.load(self.root / f"{name}s.npy", mmap_mode="r")
        names = self._names[name]
        return tuple(names[c] for c in codes.tolist())

    def samples(self, indices: list[int] | tuple[int, ...] | range) -> list[Sample]:
        """The records at ``indices`` (in that order), read from disk one by one."""
        out = []
        with (self.root / "records.jsonl").open("rb") as f:
            for i in indices:
                f.seek(int(self._offsets[i]))
                out.append(_sample(json.loads(f.readline())))
        return out


def split_index(source: SplitSource) -> SplitIndex:
    """The index of ``source``, built first if there is none for its current files."""
    return _index(source, source.key())


@lru_cache(maxsize=8)
def _index(source: SplitSource, key: str) -> SplitIndex:
    root = anther_home() / "index" / key
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / "index.json").is_file():
            _build(source, root)
    return SplitIndex(root)


def _build(source: SplitSource, root: Path) -> None:
    samples, left_out = load_samples(source.data_format, Path(source.folder), source.split, source.skip_bad,
                                     Path(source.image_folder) if source.image_folder else None)
    if left_out:
        reasons = ", ".join(f"{n} {reason}" for reason, n in left_out.most_common())
        print(f"anther: left out {left_out.total()} record(s) of {source.data_format} split {source.split!r} in "
              f"{source.folder}: {reasons}", file=sys.stderr)
    tmp = root.with_name(root.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    names: dict[str, dict[str, int]] = {"task": {}, "answer": {}, "domain": {}}
    codes: dict[str, list[int]] = {k: [] for k in names}
    offsets = []
    with (tmp / "records.jsonl").open("wb") as f:
        for s in samples:
            offsets.append(f.tell())
            f.write(json.dumps(_record(s)).encode() + b"\n")
            for key, mapping in names.items():
                codes[key].append(mapping.setdefault(getattr(s, key), len(mapping)))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    for key, values in codes.items():
        np.save(tmp / f"{key}s.npy", np.asarray(values, dtype=np.int32))
    (tmp / "index.json").write_text(json.dumps({
        "source": asdict(source), "size": len(samples), "left_out": dict(left_out),
        "names": {key: list(mapping) for key, mapping in names.items()}}, indent=1))
    tmp.rename(root)


def _record(s: Sample) -> dict:
    return {"id": s.id, "question": s.question, "answer": s.answer, "options": s.options, "context": s.context,
            "task": s.task, "domain": s.domain, "history": s.history, "images": [_ref(r) for r in s.images]}


def _ref(ref: ImageRef) -> dict:
    if isinstance(ref, ImageFile):
        return {"file": ref.path, "where": ref.where}
    if isinstance(ref, TableImage):
        return {"table": ref.table, "row": ref.row, "column": ref.column, "folder": ref.folder, "where": ref.where}
    raise TypeError(f"{ref.where}: a picture held only in memory cannot be indexed")


def _sample(record: dict) -> Sample:
    images = tuple(ImageFile(r["file"], r["where"]) if "file" in r else
                   TableImage(r["table"], r["row"], r["column"], r["folder"], r["where"]) for r in record["images"])
    return Sample(id=record["id"], question=record["question"], answer=record["answer"], options=record["options"],
                  context=record["context"], images=images, task=record["task"], domain=record["domain"],
                  history=[tuple(turn) for turn in record["history"]])
