"""LLaVA-style instruction data: ``<split>.json`` (a JSON list) or ``<split>.jsonl`` in ``data.path``.

The format of LLaVA's ``llava_instruct_150k.json``, of LLaVA's own ScienceQA conversion and of
the many sets converted to it (FedMLLM's per-client files among them)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                       {"from": "gpt", "value": "White and red."}, ...]}

``image`` is one path or a list of paths (several pictures), relative to ``data.image_folder``
when it is set (LLaVA keeps its pictures apart from its JSON), else to ``data.path``; it may be
absent (a text-only record). Turns may also be written ``{"role": "user" | "assistant",
"content": ...}``. Every (human, assistant) pair becomes one Sample about the record's pictures:
the question without the ``<image>`` marker, the earlier turns as its history (turns of the
model's chat format).

A question that lists lettered choices (``(A) red (B) blue`` on one line, or ``A. red`` one per
line) is a multiple-choice question when its answer names one of them, in whatever form the
record writes it: the letter (``B``, ``(B)``), the letter and text (``B. blue``), a sentence
(``The answer is B.``) or the text (``blue``). The target stays the record's answer, and the
options are that same form for each choice, so multiple-choice scoring compares like with like.
Every other answer is open-ended: it has no options and is evaluated by generation (normalised
exact match), never by scoring every answer in the data set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anther.core.images import ImageRef
from anther.core.sample import DataFormatError, Sample, image_path

from .layouts import Loaded
from .records import collect, file_image, json_list_records, jsonl_lines, parse_json_line

HUMAN, ASSISTANT = ("human", "user"), ("gpt", "assistant")
IMAGE_MARKER = "<image>"
CHOICE_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s+(.*\S)\s*$")  # "A. red", "(A) red": one per line
INLINE_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")  # "(A) red (B) blue" on one line
# The forms an answer names a choice in: (before the letter, the letter, after it); "{text}" stands
# for the choice's text.
LETTER_FORMS = [
    re.compile(r"^(?P<pre>\(?)(?P<letter>[A-Z])(?P<post>[).:]?)$"),
    re.compile(r"^(?P<pre>\(?)(?P<letter>[A-Z])(?P<post>[).:]\s+)(?P<text>.+)$"),
    re.compile(r"^(?P<pre>the answer is \(?)(?P<letter>[A-Z])(?P<post>\)?\.?)$", re.IGNORECASE),
]


def load_llava(folder: Path, split: str, skip_bad: bool = False, image_folder: Path | None = None) -> Loaded:
    records, jsonl = _records(folder, split)

    def convert(item: tuple[int, Any], where: str) -> list[Sample]:
        index, record = item
        if jsonl:
            record = parse_json_line(record, where)
        return conversation_samples(record, f"{split}-{index:06d}", image_folder or folder, where)

    return collect(((w, (i, r)) for i, (w, r) in enumerate(records)), convert, skip_bad)


def _records(folder: Path, split: str) -> tuple[Iterable[tuple[str, Any]], bool]:
    if (folder / f"{split}.json").is_file():
        return json_list_records(folder / f"{split}.json"), False
    if (folder / f"{split}.jsonl").is_file():
        return jsonl_lines(folder / f"{split}.jsonl"), True
    raise FileNotFoundError(f"no {split}.json or {split}.jsonl in {folder}")


def conversation_samples(record: Any, fallback_id: str, folder: Path, where: str) -> list[Sample]:
    """The samples of one record: one per (human, assistant) pair, all about its pictures (paths
    relative to ``folder``)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise DataFormatError(f"{where}: expected an object with a 'conversations' list")
    turns = [_turn(t, where) for t in record["conversations"]]
    if not turns or len(turns) % 2 or any(
            role not in (HUMAN if i % 2 == 0 else ASSISTANT) for i, (role, _) in enumerate(turns)):
        raise DataFormatError(f"{where}: 'conversations' must alternate human and assistant turns, starting "
                              f"with human; got roles {[role for role, _ in turns]}")
    images = _images(record.get("image"), folder, where)
    base_id = str(record.get("id") or fallback_id)
    samples: list[Sample] = []
    history: list[tuple[str, str]] = []
    for k in range(0, len(turns), 2):
        question = turns[k][1].replace(IMAGE_MARKER, "").strip()
        options, answer = choices_and_answer(question, turns[k + 1][1].strip())
        samples.append(Sample(id=base_id if k == 0 else f"{base_id}#{k // 2}", question=question, answer=answer,
                              options=options, images=images,
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


def _images(value: Any, folder: Path, where: str) -> tuple[ImageRef, ...]:
    paths = value if isinstance(value, list) else [value]
    if not all(p is None or isinstance(p, str) for p in paths):
        raise DataFormatError(f"{where}: 'image' must be a path or a list of paths, got {value!r:.80}")
    return tuple(ref for p in paths if (rel := image_path(p, where)) for ref in file_image(folder, rel, where))


def listed_choices(question: str) -> list[str]:
    """The choices a question lists with letters A, B, C... in order (one per line, or inline
    after ``(A)``), or none."""
    for found in ([m.groups() for m in map(CHOICE_LINE.match, question.splitlines()) if m],
                  INLINE_CHOICE.findall(question)):
        letters = [letter for letter, _ in found]
        if len(found) >= 2 and letters == [chr(ord("A") + i) for i in range(len(found))]:
            return [text for _, text in found]
    return []


def choices_and_answer(question: str, answer: str) -> tuple[list[str], str]:
    """The options and the target of one turn: when the question lists lettered choices and the
    answer names one, each choice written in the answer's own form (see the module doc); else
    ``([], answer)``, an open-ended turn."""
    choices = listed_choices(question)
    if not choices:
        return [], answer
    if answer in choices:
        return list(choices), answer
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    for form in LETTER_FORMS:
        m = form.match(answer)
        if not m or m.group("letter") not in letters:
            continue
        if "text" in form.groupindex:
            if m.group("text").strip() != choices[letters.index(m.group("letter"))]:
                continue
            options = [f"{m.group('pre')}{L}{m.group('post')}{c}" for L, c in zip(letters, choices)]
        else:
            options = [f"{m.group('pre')}{L}{m.group('post')}" for L in letters]
        return options, answer
    return [], answer
