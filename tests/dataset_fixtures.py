"""Data sets in their real on-disk layouts, made small, for the end-to-end tests.

The layouts follow the data sets' own releases: lupantech/IconQA (``iconqa_data/problems.json``,
``pid_splits.json`` keyed ``<ques_type>_<split>``, a folder per problem with ``image.png`` and the
choice pictures ``choices`` names; answers are choice indices, or the text for fill-in-the-blank).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

KINDS = ("choose_txt", "choose_img", "fill_in_blank")


def _picture(path: Path, dots: int, colour: tuple[int, int, int]) -> None:
    """A small picture of ``dots`` dots, so questions have something to look at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (32, 32), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for k in range(dots):
        x, y = 4 + 9 * (k % 3), 4 + 9 * (k // 3)
        draw.ellipse([x, y, x + 6, y + 6], fill=colour)
    im.save(path)


def iconqa_release(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """``root/iconqa_data`` with ``per_split[split]`` problems of each question type: counting
    questions asked three ways, image-choice ones with 2 to 5 choice pictures."""
    rng = random.Random(seed)
    base = root / "iconqa_data"
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {}
    for split, n in per_split.items():
        for kind in KINDS:
            splits[f"{kind}_{split}"] = []
            for _ in range(n):
                pid = str(1000 + len(problems))
                dots = rng.randint(1, 5)
                folder = base / "iconqa" / split / kind / pid
                _picture(folder / "image.png", dots, (200, 40, 40))
                problem = {"question": "How many dots are there?", "ques_type": kind, "split": split,
                           "grade": "prek", "label": "", "skills": ["counting"]}
                if kind == "choose_txt":
                    choices = [str(c) for c in rng.sample(range(1, 6), 3) if c != dots][:2] + [str(dots)]
                    rng.shuffle(choices)
                    problem |= {"choices": choices, "answer": choices.index(str(dots))}
                elif kind == "choose_img":
                    count = rng.randint(2, 5)
                    right = rng.randrange(count)
                    names = [f"choice_{k}.png" for k in range(count)]
                    for k, name in enumerate(names):
                        _picture(folder / name, dots if k == right else (dots % 5) + 1, (40, 40, 200))
                    problem |= {"question": "Which picture has as many dots as this one?", "choices": names,
                                "answer": right}
                else:
                    problem |= {"choices": None, "answer": str(dots)}
                problems[pid] = problem
                splits[f"{kind}_{split}"].append(pid)
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps(splits))
    return base
