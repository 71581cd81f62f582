"""ScienceQA (Lu et al., NeurIPS 2022) as the Hugging Face hub distributes it, saved locally.

``derek-thomas/ScienceQA`` (and ``lmms-lab/ScienceQA``, one configuration folder) holds splits
``train``, ``validation``, ``test`` with columns ``image`` (an ``Image``, null for text-only
questions), ``question``, ``choices`` (list of str), ``answer`` (index into ``choices``),
``hint`` (the context), ``task``, ``grade``, ``subject``, ``topic``, ``category``, ``skill``,
``lecture``, ``solution``. See :mod:`anther.data.formats.hf_tables` for the layouts read.

Each row becomes one Sample: the hint is the text context, the choices the options, the
subject (natural / social / language science) the task and the topic the domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.sample import DataFormatError, Sample

from .hf_tables import hf_image, hf_rows
from .records import collect, require

FIELDS = ("question", "choices", "answer")


def load_scienceqa(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    rows = ((where, (index, row)) for where, index, row in hf_rows(folder, split))

    def convert(item: tuple[int, Any], where: str) -> Sample:
        index, row = item
        return scienceqa_sample(row, f"{split}-{index:06d}", folder, where)

    return collect(rows, convert, skip_bad)


def scienceqa_sample(row: Any, sample_id: str, folder: Path, where: str) -> Sample:
    row = require(row, FIELDS, where)
    choices, answer = row["choices"], row["answer"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataFormatError(f"{where}: 'choices' must be a list of at least two strings, got {choices!r:.80}")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataFormatError(f"{where}: 'answer' must index 'choices' (0..{len(choices) - 1}), got {answer!r}")
    return Sample(
        id=sample_id,
        question=str(row["question"]),
        answer=choices[answer],
        options=list(choices),
        context=str(row.get("hint") or ""),
        image=hf_image(row.get("image"), folder, where, "image"),
        task=str(row.get("subject") or "scienceqa"),
        domain=str(row.get("topic") or "default"),
    )
