"""Data set formats by name: ``data.format=scienceqa data.path=/data/ScienceQA``.

Every loader reads one split of a folder, ``load(folder, split, skip_bad) -> (samples, skipped)``:
a malformed record or a missing image raises :class:`~anther.core.sample.DataFormatError`
naming the file and the record, unless ``skip_bad`` is set, in which case it is counted in
``skipped``. Each loader's module says which files it reads and what its split names are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from anther.core.sample import Sample, read_split

from .crisismmd import load_crisismmd
from .hateful_memes import load_hateful_memes
from .iconqa import load_iconqa
from .llava_json import load_llava
from .medical_vqa import load_slake, load_vqa_rad
from .scienceqa import load_scienceqa

Loader = Callable[[Path, str, bool], tuple[list[Sample], int]]

FORMATS: dict[str, Loader] = {
    "anther": read_split,  # anther's own: <split>.jsonl + images (sample.py)
    "scienceqa": load_scienceqa,
    "iconqa": load_iconqa,
    "hateful_memes": load_hateful_memes,
    "crisismmd": load_crisismmd,
    "vqa_rad": load_vqa_rad,
    "slake": load_slake,
    "llava": load_llava,
}


def load_samples(data_format: str, folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    """Split ``split`` of the data set in ``folder``, read as ``data_format``."""
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; choose from {', '.join(FORMATS)}")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    return FORMATS[data_format](folder, split, skip_bad)
