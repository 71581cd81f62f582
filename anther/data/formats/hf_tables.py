r"""Rows of a Hugging Face hub data set kept on local disk, in either way people keep them.

- **parquet files** as the hub serves them (``huggingface-cli download --repo-type dataset``):
  ``data/train-00000-of-00001-<hash>.parquet``, ``ScienceQA-FULL/train-*.parquet`` or the
  converter's ``default/train/0000.parquet``; a split's files are those named ``<split>-*`` or
  lying in a folder named ``<split>``;
- **``save_to_disk``** folders (``load_dataset(...).save_to_disk(DIR)``): ``DIR/<split>/`` with
  ``state.json`` and arrow shards, read with ``datasets.load_from_disk``.

Rows come back as :class:`TableRow`\ s: the cells as plain values, and ``row.image(column)``
the ref of an ``Image`` cell, decoded only when a batch needs it (so a bad image is an error of
that row, named ``<file>: row N``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anther.core.images import ImageRef, TableImage, image_cell

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


@dataclass
class TableRow:
    """One row of a table on disk: its cells, and where it is (for errors and image refs)."""

    where: str
    index: int  # within the split
    values: dict[str, Any]
    table: str  # the parquet file, or the save_to_disk split folder
    row: int  # within ``table``
    folder: Path  # what an image cell's path is relative to

    def get(self, column: str, default: Any = None) -> Any:
        return self.values.get(column, default)

    def image(self, column: str) -> tuple[ImageRef, ...]:
        """The ref of the ``Image`` cell ``column`` (none if the cell is empty)."""
        if image_cell(self.values.get(column), self.where) is None:
            return ()
        return (TableImage(self.table, self.row, column, str(self.folder), self.where),)


def hf_rows(folder: Path, split: str) -> Iterator[TableRow]:
    """The rows of ``split``, from a ``save_to_disk`` folder or parquet files."""
    if (folder / split / "state.json").is_file():
        yield from _saved_rows(folder / split, folder)
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
        for row, record in enumerate(_parquet_records(path)):
            yield TableRow(f"{path}: row {row}", index, record, str(path), row, folder)
            index += 1


def _parquet_records(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        yield from batch.to_pylist()


def _saved_rows(split_dir: Path, folder: Path) -> Iterator[TableRow]:
    from datasets import load_from_disk

    table = load_from_disk(str(split_dir)).with_format("arrow")
    row = 0
    for batch in table.iter(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            yield TableRow(f"{split_dir}: row {row}", row, record, str(split_dir), row, folder)
            row += 1


def has_split(folder: Path, split: str) -> bool:
    """Whether ``folder`` holds split ``split`` in either way."""
    return (folder / split / "state.json").is_file() or bool(split_parquet_files(folder, split))


def find_hub_copy(folder: Path) -> Path | None:
    """``folder`` if it holds a hub data set's parquet files or ``save_to_disk`` splits, else None."""
    if next(folder.glob("*/state.json"), None) or next(folder.rglob("*.parquet"), None):
        return folder
    return None
