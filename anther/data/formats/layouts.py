"""A data set shipped in several layouts, each recognised from the folder it is in.

Each loader module lists its :class:`Layout`\\ s (the original release, the Hugging Face copies);
:func:`load_layout` reads a split with the first layout whose files the folder holds, and a
folder that holds none is refused with the layouts that would have been read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anther.core.sample import Sample

Loaded = tuple[list[Sample], Counter[str]]


@dataclass(frozen=True)
class Layout:
    """One way a data set is laid out on disk."""

    name: str  # what a user recognises: "original release (problems.json, pid_splits.json)"
    find: Callable[[Path], Path | None]  # the folder (``folder`` or one inside it) holding it, or None
    load: Callable[[Path, str, bool], Loaded]


def find_layout(data_set: str, layouts: list[Layout], folder: Path) -> tuple[Layout, Path]:
    """The first of ``layouts`` that ``folder`` holds, and where; else a FileNotFoundError that
    names what each layout needs."""
    for layout in layouts:
        base = layout.find(folder)
        if base is not None:
            return layout, base
    accepted = "; ".join(layout.name for layout in layouts)
    raise FileNotFoundError(f"{folder} holds no {data_set} layout anther reads; it reads: {accepted}")


def load_layout(data_set: str, layouts: list[Layout], folder: Path, split: str, skip_bad: bool) -> Loaded:
    """Split ``split`` of ``folder``, read with the layout it holds."""
    layout, base = find_layout(data_set, layouts, folder)
    return layout.load(base, split, skip_bad)


def first_holding(*relative: str) -> Callable[[Path], Path | None]:
    """A ``find`` for layouts known by a file: the first of ``folder``, ``folder/<sub>`` ... (each
    of ``relative`` a path like ``data/scienceqa/problems.json``) that holds it."""
    def find(folder: Path) -> Path | None:
        for rel in relative:
            if (folder / rel).is_file():
                return (folder / rel).parent
        return None
    return find
