"""Radiology VQA: VQA-RAD (Lau et al., 2018) and SLAKE (Liu et al., ISBI 2021).

**VQA-RAD**, in either layout. The release: ``data.path`` holds ``VQA_RAD Dataset Public.json``
(a JSON list) and the folder ``VQA_RAD Image Folder/``. Records carry ``qid``, ``image_name``,
``question``, ``answer``, ``answer_type`` (CLOSED / OPEN), ``image_organ`` (HEAD, CHEST, ABD),
``phrase_type``. The release has no split files; its own split is by ``phrase_type``: split
``train`` is ``freeform`` and ``para``, split ``test`` is ``test_freeform`` and ``test_para``.
The Hugging Face copy (``flaviagiammarino/vqa-rad``, parquet or ``save_to_disk``): splits
``train`` and ``test`` with columns ``image``, ``question``, ``answer`` only, so its questions
have no organ (domain ``default``) and no answer type (``yesno`` or ``open``).

**SLAKE**: ``data.path`` holds ``train.json``, ``validate.json``, ``test.json`` (JSON lists) and
``imgs/``. Records carry ``qid``, ``img_name`` (``xmlab102/source.jpg``), ``question``,
``answer``, ``q_lang`` (en / zh), ``answer_type``, ``modality`` (CT, MRI, X-Ray), ``location``.
The English questions are read (``q_lang`` = en), as SLAKE's English benchmark does; the others
are counted as left out (``not in English``), as are VQA-RAD records whose ``phrase_type`` is in
neither split.

Answers are compared lower-cased. Yes/no answers form the task ``yesno`` (options yes, no);
the others are ``closed`` or ``open`` by ``answer_type``, with every answer of that task in the
split as options. The organ (VQA-RAD) or imaging modality (SLAKE) is the domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.errors import LeftOut
from anther.core.images import ImageRef
from anther.core.sample import DataFormatError, Sample

from .hf_tables import TableRow, find_hub_copy, hf_rows
from .layouts import Layout, Loaded, first_holding, load_layout
from .records import collect, file_image, json_list_records, require, with_answer_vocabulary

VQA_RAD_FILE = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
VQA_RAD_SPLITS = {"train": ("freeform", "para"), "test": ("test_freeform", "test_para")}
SLAKE_IMAGES = "imgs"
YES_NO = ["yes", "no"]


def load_vqa_rad(folder: Path, split: str, skip_bad: bool = False) -> Loaded:
    return load_layout("VQA-RAD", VQA_RAD_LAYOUTS, folder, split, skip_bad)


def _load_vqa_rad_hub(folder: Path, split: str, skip_bad: bool) -> Loaded:
    def convert(row: TableRow, where: str) -> Sample:
        values = require(row.values, ("question", "answer"), where)
        return medical_sample({**values, "qid": f"{split}-{row.index:06d}"}, row.image("image"), "default", where)

    samples, left_out = collect(((row.where, row) for row in hf_rows(folder, split)), convert, skip_bad)
    return with_answer_vocabulary(samples), left_out


def _load_vqa_rad_release(folder: Path, split: str, skip_bad: bool) -> Loaded:
    if split not in VQA_RAD_SPLITS:
        raise ValueError(f"VQA-RAD split {split!r}: the release splits by phrase_type into "
                         f"{', '.join(VQA_RAD_SPLITS)}")
    known = {phrase for phrases in VQA_RAD_SPLITS.values() for phrase in phrases}

    def convert(record: Any, where: str) -> Sample:
        record = require(record, ("qid", "image_name", "question", "answer", "phrase_type"), where)
        if record["phrase_type"] not in known:
            raise LeftOut(f"{where}: phrase_type {record['phrase_type']!r} is in no split", "phrase_type of no split")
        if record["phrase_type"] not in VQA_RAD_SPLITS[split]:
            return []  # the other split's
        return medical_sample(record, file_image(folder, f"{VQA_RAD_IMAGES}/{record['image_name']}", where),
                              str(record.get("image_organ") or "default"), where)

    samples, left_out = collect(json_list_records(folder / VQA_RAD_FILE), convert, skip_bad)
    return with_answer_vocabulary(samples), left_out


def load_slake(folder: Path, split: str, skip_bad: bool = False) -> Loaded:
    def convert(record: Any, where: str) -> Sample:
        record = require(record, ("qid", "img_name", "question", "answer"), where)
        if record.get("q_lang", "en") != "en":
            raise LeftOut(f"{where}: a question in {record['q_lang']!r}", "not in English")
        return medical_sample(record, file_image(folder, f"{SLAKE_IMAGES}/{record['img_name']}", where),
                              str(record.get("modality") or "default"), where)

    samples, left_out = collect(json_list_records(folder / f"{split}.json"), convert, skip_bad)
    return with_answer_vocabulary(samples), left_out


def medical_sample(record: dict[str, Any], images: tuple[ImageRef, ...], domain: str, where: str) -> Sample:
    """One question about one picture."""
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
        images=images,
        task=task,
        domain=domain,
    )


VQA_RAD_LAYOUTS = [
    Layout(f"release ({VQA_RAD_FILE} and {VQA_RAD_IMAGES}/)", first_holding(VQA_RAD_FILE), _load_vqa_rad_release),
    Layout("Hugging Face copy flaviagiammarino/vqa-rad (parquet files or save_to_disk splits)", find_hub_copy,
           _load_vqa_rad_hub),
]
