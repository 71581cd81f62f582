"""IconQA (Lu et al., NeurIPS 2021 datasets track) as the Hugging Face hub distributes it, saved locally.

``lmms-lab/ICON-QA`` holds splits ``val`` and ``test`` (so train on one and test on the other:
``data.train_split=val``) with columns ``question_id``, ``question``, ``choices`` (the choices
as one comma-separated string), ``answer``, ``query_image``, ``choice_image_0``,
``choice_image_1``, ... (``Image``s), ``ques_type``, ``label``, ``grade``, ``skills``. See
:mod:`anther.data.formats.hf_tables` for the layouts read.

The three question kinds become the task:

- ``choose_txt``: the choices are the options; the answer is one of them (or its index);
- ``choose_img``: the choices are pictures, and anther's samples carry one image, so the query
  image and the choice images are laid out side by side in one picture and the options are
  ``the first image``, ``the second image``, ...; the answer is the index of the right one;
- ``fill_in_blank``: open answers (mostly numbers); the options are every answer of this kind
  in the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from anther.core.sample import DataFormatError, Sample

from .hf_tables import hf_image, hf_rows
from .records import collect, require, with_answer_vocabulary

FIELDS = ("question", "answer", "ques_type", "query_image")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
GAP = 8  # pixels between the query and the choice images of a composite


def load_iconqa(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    rows = ((where, (index, row)) for where, index, row in hf_rows(folder, split))

    def convert(item: tuple[int, Any], where: str) -> Sample:
        index, row = item
        return iconqa_sample(row, f"{split}-{index:06d}", folder, where)

    samples, skipped = collect(rows, convert, skip_bad)
    return with_answer_vocabulary(samples), skipped


def iconqa_sample(row: Any, fallback_id: str, folder: Path, where: str) -> Sample:
    row = require(row, FIELDS, where)
    kind, answer = str(row["ques_type"]), str(row["answer"]).strip()
    image = hf_image(row["query_image"], folder, where, "query_image")
    if kind == "choose_txt":
        options = _text_choices(row.get("choices"), where)
        answer = _resolve(answer, options, where)
    elif kind == "choose_img":
        choices = _choice_images(row, folder, where)
        options = [f"the {ORDINALS[i]} image" for i in range(len(choices))]
        answer = _resolve(answer, options, where)
        image = side_by_side([image, *choices])
    elif kind == "fill_in_blank":
        options = []  # filled with the split's answer vocabulary
    else:
        raise DataFormatError(f"{where}: unknown ques_type {kind!r}; expected choose_txt, choose_img or "
                              "fill_in_blank")
    return Sample(id=str(row.get("question_id") or fallback_id), question=str(row["question"]), answer=answer,
                  options=options, image=image, task=kind)


def _text_choices(value: Any, where: str) -> list[str]:
    choices = value.split(",") if isinstance(value, str) else value
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataFormatError(f"{where}: 'choices' must be a comma-separated string or a list of strings")
    choices = [c.strip() for c in choices if c.strip()]
    if len(choices) < 2:
        raise DataFormatError(f"{where}: a choose_txt question needs at least two choices, got {choices}")
    return choices


def _choice_images(row: dict[str, Any], folder: Path, where: str) -> list[Image.Image]:
    columns = sorted((k for k in row if k.startswith("choice_image_") and row[k] is not None),
                     key=lambda k: int(k.rsplit("_", 1)[1]))
    images = [hf_image(row[k], folder, where, k) for k in columns]
    if not 2 <= len(images) <= len(ORDINALS):
        raise DataFormatError(f"{where}: a choose_img question needs 2 to {len(ORDINALS)} choice_image_* "
                              f"columns, got {len(images)}")
    return images


def _resolve(answer: str, options: list[str], where: str) -> str:
    """The option ``answer`` names, by text or by index."""
    if answer in options:
        return answer
    if answer.isdigit() and int(answer) < len(options):
        return options[int(answer)]
    raise DataFormatError(f"{where}: answer {answer!r} is neither one of the choices {options} nor an index")


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """The images in a row on white, tops aligned: a query and its choice pictures as one image."""
    width = sum(im.width for im in images) + GAP * (len(images) - 1)
    out = Image.new("RGB", (width, max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + GAP
    return out
