"""Data set formats by name: ``data.format=scienceqa data.path=/data/ScienceQA``.

Every loader reads one split of a folder, ``load(folder, split, skip_bad) -> (samples, left_out)``:
a malformed record or a missing image raises :class:`~anther.core.sample.DataFormatError`
naming the file and the record, unless ``skip_bad`` is set, in which case it is counted in
``left_out`` by reason (with the records a layout cannot use, which are always counted). Each
loader's module says which layouts it reads (detected from the folder), which files each has and
what its split names are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from anther.core.sample import Sample, read_split

from . import hateful_memes, iconqa, medical_vqa, scienceqa
from .crisismmd import load_crisismmd
from .hateful_memes import load_hateful_memes
from .iconqa import load_iconqa
from .layouts import find_layout
from .llava_json import load_llava
from .medical_vqa import load_slake, load_vqa_rad
from .scienceqa import load_scienceqa

Loader = Callable[[Path, str, bool], tuple[list[Sample], Counter[str]]]
IMAGE_FOLDER_FORMATS = ("llava",)  # the formats whose records name pictures apart from their folder
# Each format's labelled (train, test) splits, what data.train_split / data.test_split default to.
# Hateful Memes' phase-1 test.jsonl has no labels, so its dev set is the test split; IconQA's
# Hugging Face copy has no train split (data.train_split=val there).
DEFAULT_SPLITS = {"anther": ("train", "test"), "scienceqa": ("train", "test"), "iconqa": ("train", "test"),
                  "hateful_memes": ("train", "dev_seen"), "crisismmd": ("train", "test"),
                  "vqa_rad": ("train", "test"), "slake": ("train", "test"), "llava": ("train", "test")}

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


# The formats read in several layouts, each recognised from the folder (the others have one).
LAYOUTS = {"scienceqa": ("ScienceQA", scienceqa.LAYOUTS), "iconqa": ("IconQA", iconqa.LAYOUTS),
           "vqa_rad": ("VQA-RAD", medical_vqa.VQA_RAD_LAYOUTS),
           "hateful_memes": ("Hateful Memes", hateful_memes.LAYOUTS)}


def layout_name(data_format: str, folder: Path) -> str:
    """Which of its layouts the data set in ``folder`` is in (the format's one, for the others)."""
    if data_format not in LAYOUTS:
        return data_format
    layout, base = find_layout(*LAYOUTS[data_format], folder)
    return f"{layout.name} at {base}"


def load_samples(data_format: str, folder: Path, split: str, skip_bad: bool = False,
                 image_folder: Path | None = None) -> tuple[list[Sample], Counter[str]]:
    """Split ``split`` of the data set in ``folder``, read as ``data_format`` (its pictures under
    ``image_folder``, for the formats that keep them apart)."""
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; choose from {', '.join(FORMATS)}")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    if image_folder is None:
        return FORMATS[data_format](folder, split, skip_bad)
    if data_format not in IMAGE_FOLDER_FORMATS:
        raise ValueError(f"data.image_folder applies to data.format={' or '.join(IMAGE_FOLDER_FORMATS)}, "
                         f"not {data_format}: its records name pictures inside data.path")
    if not image_folder.is_dir():
        raise FileNotFoundError(f"data.image_folder={image_folder} is not a folder")
    return load_llava(folder, split, skip_bad, image_folder)
