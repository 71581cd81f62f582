"""LLaVA-style instruction data: ``<split>.json`` (a JSON list) or ``<split>.jsonl`` in ``data.path``.

The format of LLaVA's ``llava_instruct_150k.json`` and of the many sets converted to it
(FedMLLM's per-client files among them)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                       {"from": "gpt", "value": "White and red."}, ...]}

``image`` is relative to ``data.path`` and may be absent (a text-only record). Turns may also
be written ``{"role": "user" | "assistant", "content": ...}``. Every (human, assistant) pair
becomes one Sample about the record's image: the question without the ``<image>`` marker, the
earlier turns of the conversation as its history (turns of the model's chat format). When the question lists lettered
choices (``(A) red`` or ``A. red``, one per line) and the answer names one of them (``(A) red``,
``A``, or ``red``), the choices are the options; otherwise the answer is open-ended and the
options are every open-ended answer in the split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anther.core.sample import DataFormatError, Sample, load_image

from .records import collect, json_list_records, jsonl_lines, parse_json_line, with_answer_vocabulary

HUMAN, ASSISTANT = ("human", "user"), ("gpt", "assistant")
IMAGE_MARKER = "<image>"
CHOICE_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s+(.*\S)\s*$")
LETTER_ANSWER = re.compile(r"^\(?([A-Z])[).:]?(?:\s+(.*\S))?\s*$")


def load_llava(folder: Path, split: str, skip_bad: bool = False) -> tuple[list[Sample], int]:
    records, jsonl = _records(folder, split)
    samples: list[Sample] = []

    def convert(item: tuple[int, Any], where: str) -> list[Sample]:
        index, record = item
        if jsonl:
            record = parse_json_line(record, where)
        return conversation_samples(record, f"{split}-{index:06d}", folder, where)

    per_record, skipped = collect(((w, (i, r)) for i, (w, r) in enumerate(records)), convert, skip_bad)
    for group in per_record:
        samples += group
    return with_answer_vocabulary(samples), skipped


def _records(folder: Path, split: str) -> tuple[Iterable[tuple[str, Any]], bool]:
    if (folder / f"{split}.json").is_file():
        return json_list_records(folder / f"{split}.json"), False
    if (folder / f"{split}.jsonl").is_file():
        return jsonl_lines(folder / f"{split}.jsonl"), True
    raise FileNotFoundError(f"no {split}.json or {split}.jsonl in {folder}")


def conversation_samples(record: Any, fallback_id: str, folder: Path, where: str) -> list[Sample]:
    """The samples of one record: one per (human, assistant) pair, all about its image."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise DataFormatError(f"{where}: expected an object with a 'conversations' list")
    turns = [_turn(t, where) for t in record["conversations"]]
    if not turns or len(turns) % 2 or any(
            role not in (HUMAN if i % 2 == 0 else ASSISTANT) for i, (role, _) in enumerate(turns)):
        raise DataFormatError(f"{where}: 'conversations' must alternate human and assistant turns, starting "
                              f"with human; got roles {[role for role, _ in turns]}")
    image_rel = _image_path(record.get("image"), where)
    image = load_image(folder / image_rel, where) if image_rel else None
    base_id = str(record.get("id") or fallback_id)
    samples: list[Sample] = []
    history: list[tuple[str, str]] = []
    for k in range(0, len(turns), 2):
        question = turns[k][1].replace(IMAGE_MARKER, "").strip()
        options, answer = choices_and_answer(question, turns[k + 1][1].strip())
        samples.append(Sample(id=base_id if k == 0 else f"{base_id}#{k // 2}", question=question, answer=answer,
                              options=options, image=image, image_path=image_rel,
                              task="choice" if options else "open", history=list(history)))
        history.append((question, turns[k + 1][1].strip()))
    return samples


def _turn(turn: Any, where: str) -> tuple[str, str]:
    if isinstance(turn, dict):
        role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if isinstance(role, str) and isinstance(text, str):
            return role, text
    raise DataFormatError(f"{where}: a turn must be {{'from', 'value'}} or {{'role', 'content'}} strings, "
                          f"got {turn!r:.80}")


def _image_path(value: Any, where: str) -> str | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None or isinstance(value, str):
        return value or None
    raise DataFormatError(f"{where}: 'image' must be one path (anther's samples carry one image), got {value!r:.80}")


def choices_and_answer(question: str, answer: str) -> tuple[list[str], str]:
    """The lettered choices the question lists and the one the answer names, or ``([], answer)``
    when the question lists none or the answer names none of them (an open-ended sample)."""
    found = [m.groups() for m in map(CHOICE_LINE.match, question.splitlines()) if m]
    letters = [letter for letter, _ in found]
    if len(found) < 2 or letters != [chr(ord("A") + i) for i in range(len(found))]:
        return [], answer
    options = [text for _, text in found]
    if answer in options:
        return options, answer
    m = LETTER_ANSWER.match(answer)
    if m and m.group(1) in letters:
        chosen = options[letters.index(m.group(1))]
        if m.group(2) in (None, chosen):
            return options, chosen
    return [], answer
