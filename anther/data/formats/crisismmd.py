"""CrisisMMD v2.0 (Alam et al., ICWSM 2018): tweets with images from seven natural disasters.

``data.path`` is the release folder (``CrisisMMD_v2.0/``): the benchmark splits as tab-separated
files ``crisismmd_datasplit_all/task_<task>_text_img_<split>.tsv`` (``<task>``: informative,
humanitarian, damage; ``<split>``: train, dev, test) and the images under ``data_image/``, named
by the files' ``image`` column relative to the release folder. Columns::

    event_name  tweet_id  image_id  tweet_text  image  label  [label_text  label_image  label_text_image]

A split name is ``<task>_<split>`` (``humanitarian_train``) or just ``<split>``, which reads the
humanitarian task FedMLLM uses. The tweet is the text context, the picture the image, the
``label`` the answer among the task's classes; the disaster (``event_name``) is the domain, so
``partition.scheme=domain`` gives each client the tweets of one disaster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from anther.core.sample import DataFormatError, Sample

from .records import collect, file_image

SPLIT_DIR = "crisismmd_datasplit_all"
COLUMNS = ("event_name", "image_id", "tweet_text", "image", "label")
TASKS = {  # task -> (question, classes)
    "informative": ("is this tweet informative for humanitarian aid?", ("informative", "not_informative")),
    "humanitarian": ("which humanitarian category does this tweet belong to?", (
        "affected_individuals", "infrastructure_and_utility_damage", "injured_or_dead_people",
        "missing_or_found_people", "rescue_volunteering_or_donation_effort", "vehicle_damage",
        "other_relevant_information", "not_humanitarian")),
    "damage": ("how severe is the damage shown?", ("severe_damage", "mild_damage", "little_or_no_damage")),
}
URL = re.compile(r"https?://\S+")


def tsv_path(folder: Path, split: str) -> tuple[str, Path]:
    """The task and the annotation file a split name means."""
    task, _, name = split.rpartition("_")
    task = task or "humanitarian"
    if task not in TASKS:
        raise ValueError(f"CrisisMMD split {split!r}: unknown task {task!r}; use <task>_<split> with a task "
                         f"among {', '.join(TASKS)} (or just the split for humanitarian)")
    filename = f"task_{task}_text_img_{name}.tsv"
    # the release's folder, the split folder itself, or the split folder unzipped inside one of its name
    for candidate in (folder / SPLIT_DIR / filename, folder / filename, folder / SPLIT_DIR / SPLIT_DIR / filename):
        if candidate.is_file():
            return task, candidate
    raise FileNotFoundError(f"no CrisisMMD annotation file {filename} in {folder / SPLIT_DIR} or {folder}")


def tsv_rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(file:line, row)`` of a tab-separated file with a header; a row with the wrong number of
    fields is passed on as a list, for the converter to reject (or count)."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataFormatError(f"{path}:1: header lacks column(s) {missing}; it has {header}")
        for lineno, line in enumerate(f, start=2):
            if line.strip():
                fields = line.rstrip("\n").split("\t")
                yield f"{path}:{lineno}", dict(zip(header, fields)) if len(fields) == len(header) else fields


def load_crisismmd(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    task, path = tsv_path(folder, split)
    return collect(tsv_rows(path), lambda row, where: crisismmd_sample(row, task, folder, where), skip_bad)


def crisismmd_sample(row: dict[str, str] | list[str], task: str, folder: Path, where: str) -> Sample:
    if isinstance(row, list):
        raise DataFormatError(f"{where}: {len(row)} tab-separated fields, the header names a different number")
    question, classes = TASKS[task]
    if row["label"] not in classes:
        raise DataFormatError(f"{where}: label {row['label']!r} is not a {task} class {list(classes)}",
                              "answer not an option")
    return Sample(
        id=row["image_id"],
        question=question,
        answer=row["label"],
        options=list(classes),
        context=URL.sub("", row["tweet_text"]).strip(),
        images=file_image(folder, row["image"], where),
        task=task,
        domain=row["event_name"],
    )
