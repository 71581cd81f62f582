"""Where a sample's images are, decoded only when a batch needs them.

A data set of LLaVA-665k's size does not fit in memory as decoded pictures, so a
:class:`~anther.core.sample.Sample` holds :class:`ImageRef`\\ s, not pixels: a file in the data
folder (:class:`ImageFile`), a cell of a parquet or Arrow table (:class:`TableImage`), or, for
data made in memory (the built-in generator, tests), the picture itself (:class:`InMemoryImage`).
``ref.open()`` decodes; the last :data:`DECODE_CACHE_SIZE` decoded images are kept, so an image
read again in the next step is not decoded twice and memory stays bounded.

Every ref carries ``where`` (``file:line``, ``file: row N``): a picture that cannot be decoded
raises :class:`ImageError` naming the record, as at read time.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from anther.core.errors import DataFormatError

# What Pillow raises on a file it cannot decode: unknown or corrupt format (OSError,
# UnidentifiedImageError), truncated data (OSError, EOFError, struct.error), bad headers
# (SyntaxError, ValueError), or more pixels than Image.MAX_IMAGE_PIXELS allows (a
# decompression bomb: DecompressionBombError).
IMAGE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)
DECODE_CACHE_SIZE = 256  # decoded pictures kept per process (a few batches' worth)


class ImageError(DataFormatError):
    """An image a record names is missing or cannot be decoded; the message names the record."""

    def __init__(self, message: str, reason: str = "bad image") -> None:
        super().__init__(message, reason)


class ImageRef(Protocol):
    """One image of a sample, not yet decoded."""

    where: str

    def open(self) -> Image.Image:
        """The picture as RGB, decoded (or from the decode cache)."""
        ...

    def exists(self) -> bool:
        """Whether the image is there at all (cheap: no decoding)."""
        ...


def decode_bytes(data: bytes, where: str) -> Image.Image:
    """Fully decode image bytes (so truncation is caught here), or fail naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except IMAGE_ERRORS as e:
        raise ImageError(f"{where}: cannot decode the image bytes: {type(e).__name__}: {e}") from e


def decode_file(path: Path, where: str) -> Image.Image:
    """Fully decode an image file, or fail naming ``where`` and the file."""
    if not path.is_file():
        raise ImageError(f"{where}: image file not found: {path}", "missing image")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except IMAGE_ERRORS as e:
        raise ImageError(f"{where}: cannot decode image {path}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class ImageFile:
    """An image file (an absolute path), decoded on first use."""

    path: str
    where: str = field(compare=False)

    def open(self) -> Image.Image:
        try:
            stat = Path(self.path).stat()
        except OSError:
            return decode_file(Path(self.path), self.where)  # raises: not found
        return _cached_file(self.path, stat.st_mtime_ns, stat.st_size, self.where)  # a rewritten file is new

    def exists(self) -> bool:
        return Path(self.path).is_file()


@dataclass(frozen=True)
class TableImage:
    """An ``Image`` cell of a table on disk: row ``row`` of column ``column`` of a parquet file or
    of a ``save_to_disk`` split folder (``{"bytes", "path"}``, the path relative to ``folder``)."""

    table: str
    row: int
    column: str
    folder: str = field(compare=False)
    where: str = field(compare=False)

    def open(self) -> Image.Image:
        return _cached_cell(self.table, self.row, self.column, self.folder, self.where)

    def exists(self) -> bool:
        return True  # the table has the cell; whether it decodes is open()'s to say


@dataclass(frozen=True, eq=False)
class InMemoryImage:
    """A picture already in memory (generated data, tests): nothing to decode."""

    image: Image.Image = field(repr=False)
    where: str = "in memory"

    def open(self) -> Image.Image:
        return self.image

    def exists(self) -> bool:
        return True


def in_memory(*images: Image.Image | None) -> tuple[ImageRef, ...]:
    """Refs of pictures held in memory (Nones left out): ``Sample(..., images=in_memory(im))``."""
    return tuple(InMemoryImage(im) for im in images if im is not None)


def image_cell(value: Any, where: str) -> bytes | str | None:
    """What an ``Image`` cell holds: its bytes, else its path, else None (no image)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    raise ImageError(f"{where}: the image cell holds no image bytes and no path: {value!r:.80}")


@functools.lru_cache(maxsize=DECODE_CACHE_SIZE)
def _cached_file(path: str, mtime_ns: int, size: int, where: str) -> Image.Image:
    return decode_file(Path(path), where)


@functools.lru_cache(maxsize=DECODE_CACHE_SIZE)
def _cached_cell(table: str, row: int, column: str, folder: str, where: str) -> Image.Image:
    cell = image_cell(_table_value(table, row, column), where)
    if cell is None:
        raise ImageError(f"{where}: column {column!r} is empty in this row")
    if isinstance(cell, bytes):
        return decode_bytes(cell, where)
    return decode_file(Path(folder) / cell, where)


def _table_value(table: str, row: int, column: str) -> Any:
    """One cell, read from the row group (parquet) or memory-mapped table (Arrow) that holds it."""
    if table.endswith(".parquet"):
        group, offset = _row_group_of(table, row)
        return _parquet_group(table, group, column).column(column)[offset].as_py()
    return _arrow_table(table).column(column)[row].as_py()


@functools.lru_cache(maxsize=16)
def _row_starts(table: str) -> tuple[int, ...]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(table).metadata
    starts, total = [], 0
    for i in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(i).num_rows
    return tuple(starts)


def _row_group_of(table: str, row: int) -> tuple[int, int]:
    starts = _row_starts(table)
    group = max(i for i, start in enumerate(starts) if start <= row)
    return group, row - starts[group]


@functools.lru_cache(maxsize=4)
def _parquet_group(table: str, group: int, column: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(table).read_row_group(group, columns=[column])


@functools.lru_cache(maxsize=4)
def _arrow_table(split_dir: str):
    from datasets import load_from_disk

    return load_from_disk(split_dir).data  # memory-mapped: pages are read when a cell is
