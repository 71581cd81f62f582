"""ScienceQA (Lu et al., NeurIPS 2022), in either layout it is shipped in.

- **Original release** (github.com/lupantech/ScienceQA, ``data/scienceqa/``): ``problems.json``
  (an object from problem id to ``{question, choices, answer, hint, image, task, grade, subject,
  topic, category, skill, lecture, solution, split}``), ``pid_splits.json`` (split name to problem
  ids: ``train``, ``val``, ``test``, ``trainval``, ``minitrain``, ``minival``, ``minitest``) and the
  pictures ``images/<split>/<pid>/image.png`` (``image`` null for text-only problems).
  ``data.path`` may be that folder or the repository's root.
- **Hugging Face copy** (``derek-thomas/ScienceQA``; ``lmms-lab/ScienceQA``, one configuration
  folder): splits ``train``, ``validation``, ``test`` with the same fields, ``image`` an ``Image``
  column. See :mod:`anther.data.formats.hf_tables` for how such copies are kept on disk.

Both name the validation split either way (``val`` or ``validation``). Each problem becomes one
Sample: the hint is the text context, the choices the options, the subject (natural / social /
language science) the task and the topic the domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.images import ImageRef
from anther.core.sample import DataFormatError, Sample

from .hf_tables import TableRow, find_hub_copy, has_split, hf_rows
from .layouts import Layout, Loaded, first_holding, load_layout
from .records import collect, file_image, read_json, require

FIELDS = ("question", "choices", "answer")
SPLIT_ALIASES = {"val": "validation", "validation": "val"}


def load_scienceqa(folder: Path, split: str, skip_bad: bool = False) -> Loaded:
    return load_layout("ScienceQA", LAYOUTS, folder, split, skip_bad)


def _load_original(base: Path, split: str, skip_bad: bool) -> Loaded:
    problems, pids = _original_split(base, split)

    def convert(pid: str, where: str) -> Sample:
        problem = require(problems.get(pid), FIELDS, where)
        images = (file_image(base, f"images/{problem.get('split') or split}/{pid}/{problem['image']}", where)
                  if problem.get("image") else ())
        return scienceqa_sample(problem, pid, images, where)

    return collect(((f"{base / 'problems.json'}: problem {pid}", pid) for pid in pids), convert, skip_bad)


def _original_split(base: Path, split: str) -> tuple[dict[str, Any], list[str]]:
    problems, splits = read_json(base / "problems.json"), read_json(base / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise DataFormatError(f"{base}: problems.json and pid_splits.json must each hold a JSON object")
    name = split if split in splits else SPLIT_ALIASES.get(split, split)
    if name not in splits:
        raise FileNotFoundError(f"ScienceQA original release at {base}: no split {split!r} in pid_splits.json; "
                                f"it has {', '.join(sorted(splits))}")
    return problems, [str(pid) for pid in splits[name]]


def _load_hub(folder: Path, split: str, skip_bad: bool) -> Loaded:
    if not has_split(folder, split) and has_split(folder, SPLIT_ALIASES.get(split, split)):
        split = SPLIT_ALIASES[split]

    def convert(row: TableRow, where: str) -> Sample:
        return scienceqa_sample(require(row.values, FIELDS, where), f"{split}-{row.index:06d}", row.image("image"),
                                where)

    return collect(((row.where, row) for row in hf_rows(folder, split)), convert, skip_bad)


def scienceqa_sample(problem: dict[str, Any], sample_id: str, images: tuple[ImageRef, ...], where: str) -> Sample:
    """One problem (the same fields in both layouts) as a Sample."""
    choices, answer = problem["choices"], problem["answer"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataFormatError(f"{where}: 'choices' must be a list of at least two strings, got {choices!r:.80}")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataFormatError(f"{where}: 'answer' must index 'choices' (0..{len(choices) - 1}), got {answer!r}",
                              "answer not an option")
    return Sample(
        id=sample_id,
        question=str(problem["question"]),
        answer=choices[answer],
        options=list(choices),
        context=str(problem.get("hint") or ""),
        images=images,
        task=str(problem.get("subject") or "scienceqa"),
        domain=str(problem.get("topic") or "default"),
    )


LAYOUTS = [
    Layout("original release (problems.json and pid_splits.json, pictures in images/<split>/<pid>/; the folder "
           "or its data/scienceqa/)", first_holding("pid_splits.json", "data/scienceqa/pid_splits.json"),
           _load_original),
    Layout("Hugging Face copy (parquet files or save_to_disk splits)", find_hub_copy, _load_hub),
]
