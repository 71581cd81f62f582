"""Radiology VQA: VQA-RAD (Lau et al., 2018) and SLAKE (Liu et al., ISBI 2021) from their releases.

**VQA-RAD**: ``data.path`` holds ``VQA_RAD Dataset Public.json`` (a JSON list) and the folder
``VQA_RAD Image Folder/``. Records carry ``qid``, ``image_name``, ``question``, ``answer``,
``answer_type`` (CLOSED / OPEN), ``image_organ`` (HEAD, CHEST, ABD), ``phrase_type``. The
release has no split files; its own split is by ``phrase_type``: split ``train`` is
``freeform`` and ``para``, split ``test`` is ``test_freeform`` and ``test_para``.

**SLAKE**: ``data.path`` holds ``train.json``, ``validate.json``, ``test.json`` (JSON lists) and
``imgs/``. Records carry ``qid``, ``img_name`` (``xmlab102/source.jpg``), ``question``,
``answer``, ``q_lang`` (en / zh), ``answer_type``, ``modality`` (CT, MRI, X-Ray), ``location``.
The English questions are read (``q_lang`` = en), as SLAKE's English benchmark does.

Answers are compared lower-cased. Yes/no answers form the task ``yesno`` (options yes, no);
the others are ``closed`` or ``open`` by ``answer_type``, with every answer of that task in the
split as options. The organ (VQA-RAD) or imaging modality (SLAKE) is the domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.sample import DataFormatError, Sample, load_image

from .records import collect, json_list_records, require, with_answer_vocabulary

VQA_RAD_FILE = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
VQA_RAD_SPLITS = {"train": ("freeform", "para"), "test": ("test_freeform", "test_para")}
SLAKE_IMAGES = "imgs"
YES_NO = ["yes", "no"]


def load_vqa_rad(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    if split not in VQA_RAD_SPLITS:
        raise ValueError(f"VQA-RAD split {split!r}: the release splits by phrase_type into "
                         f"{', '.join(VQA_RAD_SPLITS)}")
    mine = [(where, r) for where, r in json_list_records(folder / VQA_RAD_FILE)
            if not isinstance(r, dict) or r.get("phrase_type") in VQA_RAD_SPLITS[split]]

    def convert(record: Any, where: str) -> Sample:
        record = require(record, ("qid", "image_name", "question", "answer", "phrase_type"), where)
        return medical_sample(record, folder, f"{VQA_RAD_IMAGES}/{record['image_name']}",
                              str(record.get("image_organ") or "default"), where)

    samples, skipped = collect(mine, convert, skip_bad)
    return with_answer_vocabulary(samples), skipped


def load_slake(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    english = [(where, r) for where, r in json_list_records(folder / f"{split}.json")
               if not isinstance(r, dict) or r.get("q_lang", "en") == "en"]

    def convert(record: Any, where: str) -> Sample:
        record = require(record, ("qid", "img_name", "question", "answer"), where)
        return medical_sample(record, folder, f"{SLAKE_IMAGES}/{record['img_name']}",
                              str(record.get("modality") or "default"), where)

    samples, skipped = collect(english, convert, skip_bad)
    return with_answer_vocabulary(samples), skipped


def medical_sample(record: dict[str, Any], folder: Path, image: str, domain: str, where: str) -> Sample:
    """One question about one image (``image`` relative to ``folder``)."""
    answer = str(record["answer"]).strip().lower()
    if not answer:
        raise DataFormatError(f"{where}: empty 'answer'")
    yes_no = answer in YES_NO
    task = "yesno" if yes_no else str(record.get("answer_type") or "open").strip().lower()
    return Sample(
        id=str(record["qid"]),
        question=str(record["question"]),
        answer=answer,
        options=list(YES_NO) if yes_no else [],  # the others: the task's answers, filled in by the loader
        image=load_image(folder / image, where),
        image_path=image,
        task=task,
        domain=domain,
    )
