"""Rows of a Hugging Face hub data set kept on local disk, in either way people keep them.

- **parquet files** as the hub serves them (``huggingface-cli download --repo-type dataset``):
  ``data/train-00000-of-00001-<hash>.parquet``, ``ScienceQA-FULL/train-*.parquet`` or the
  converter's ``default/train/0000.parquet``; a split's files are those named ``<split>-*`` or
  lying in a folder named ``<split>``;
- **``save_to_disk``** folders (``load_dataset(...).save_to_disk(DIR)``): ``DIR/<split>/`` with
  ``state.json`` and arrow shards, read with ``datasets.load_from_disk``.

Rows come back as plain dicts with ``Image`` columns undecoded (``{"bytes", "path"}``), so a bad
image is an error of that row, named ``<file>: row N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from anther.core.sample import DataFormatError, load_image

from .records import decode_image

BATCH_ROWS = 256


def split_parquet_files(folder: Path, split: str) -> list[Path]:
    """The parquet files of ``split`` under ``folder``, all from one folder (a hub repo with
    several configurations, like lmms-lab/ScienceQA, must be pointed at one of them)."""
    files = sorted(p for p in folder.rglob("*.parquet")
                   if p.name.startswith(f"{split}-") or p.parent.name == split)
    parents = sorted({str(p.parent) for p in files})
    if len(parents) > 1:
        raise ValueError(f"parquet files of split {split!r} lie in {len(parents)} folders ({', '.join(parents)}); "
                         "set data.path to the one configuration you mean")
    return files


def hf_rows(folder: Path, split: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(where, row index, row)`` of ``split``, from a ``save_to_disk`` folder or parquet files."""
    if (folder / split / "state.json").is_file():
        yield from _saved_rows(folder / split)
        return
    files = split_parquet_files(folder, split)
    if not files:
        found = sorted({p.name for p in folder.rglob("*.parquet")}
                       | {p.parent.name + "/" for p in folder.glob("*/state.json")})
        raise FileNotFoundError(f"no split {split!r} in {folder}: neither {split}/state.json (save_to_disk) "
                                f"nor parquet files named {split}-* or in a folder {split}/; "
                                f"found: {found or 'nothing'}")
    index = 0
    for path in files:
        for where, row in _parquet_rows(path):
            yield where, index, row
            index += 1


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            yield f"{path}: row {row}", record
            row += 1


def _saved_rows(split_dir: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    from datasets import load_from_disk

    table = load_from_disk(str(split_dir)).with_format("arrow")
    row = 0
    for batch in table.iter(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            yield f"{split_dir}: row {row}", row, record
            row += 1


def hf_image(value: Any, folder: Path, where: str, column: str) -> Image.Image | None:
    """Decode an ``Image`` cell: inline bytes, or a path relative to ``folder``; None stays None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), where)
    if isinstance(value, dict) and value.get("bytes"):
        return decode_image(value["bytes"], where)
    if isinstance(value, dict) and value.get("path"):
        return load_image(folder / value["path"], where)
    raise DataFormatError(f"{where}: column {column!r} holds no image bytes and no path: {value!r:.80}")
