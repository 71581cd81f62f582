"""QuadrantsVQA: a small VQA set the built-in tiny model was never pretrained on.

It asks about the same closed answer set as ShapesVQA (four colours, three shapes, yes/no) but
draws its pictures another way, so that a run on it measures what tuning adds to a model on data
it was not made for:

- a vertical gradient instead of ShapesVQA's flat, striped, dark or noisy grounds;
- shapes drawn as outlines, not filled, in another palette (raspberry, lime, sky, amber for
  red, green, blue, yellow);
- one to three shapes in the four quadrants of the picture instead of a 3x3 grid, so a shape
  straddles the tiny model's 16-pixel patches;
- questions in another phrasing ("which colour is the circle drawn in?", "which shape is drawn
  in blue?", "can you see a red square?") with no context sentence.

Question kinds (``task``): colour, shape, yesno; ``domain`` is always ``quadrants``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from anther.core.images import in_memory
from anther.core.sample import Sample
from anther.data.shapes_vqa import COLOURS, IMAGE_SIZE, KINDS, subjects

PALETTE = {"red": (200, 50, 120), "green": (120, 210, 70), "blue": (70, 160, 235), "yellow": (245, 165, 20)}
TASKS = ("colour", "shape", "yesno")
DOMAIN = "quadrants"
OUTLINE_PX = 3


@dataclass(frozen=True)
class Outline:
    colour: str
    kind: str
    x: int  # centre, pixels
    y: int
    radius: int


def _scene(rng: random.Random) -> list[Outline]:
    """One to three shapes with distinct (colour, kind), each in a quadrant of its own."""
    n = rng.randint(1, 3)
    half = IMAGE_SIZE // 2
    quadrants = rng.sample(range(4), n)
    combos = rng.sample([(c, k) for c in COLOURS for k in KINDS], n)
    return [Outline(colour, kind, (q % 2) * half + half // 2 + rng.randint(-3, 3),
                    (q // 2) * half + half // 2 + rng.randint(-3, 3), rng.randint(7, 9))
            for q, (colour, kind) in zip(quadrants, combos)]


def render(shapes: list[Outline]) -> Image.Image:
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    d = ImageDraw.Draw(im)
    for y in range(IMAGE_SIZE):  # dark slate at the top to pale grey at the bottom
        t = y / (IMAGE_SIZE - 1)
        d.line([(0, y), (IMAGE_SIZE, y)], fill=(int(60 + 150 * t), int(65 + 145 * t), int(90 + 130 * t)))
    for s in shapes:
        r, colour = s.radius, PALETTE[s.colour]
        box = [s.x - r, s.y - r, s.x + r, s.y + r]
        if s.kind == "circle":
            d.ellipse(box, outline=colour, width=OUTLINE_PX)
        elif s.kind == "square":
            d.rectangle(box, outline=colour, width=OUTLINE_PX)
        else:
            d.polygon([(s.x, s.y - r), (s.x - r, s.y + r), (s.x + r, s.y + r)], outline=colour, width=OUTLINE_PX)
    return im


def _question(rng: random.Random, task: str, shapes: list[Outline]) -> tuple[str, str, list[str]]:
    """(question, answer, options) with exactly one right option."""
    if task == "colour":
        s = rng.choice(subjects(task, shapes))
        return f"which colour is the {s.kind} drawn in?", s.colour, list(COLOURS)
    if task == "shape":
        s = rng.choice(subjects(task, shapes))
        return f"which shape is drawn in {s.colour}?", s.kind, list(KINDS)
    if task == "yesno":
        present = {(s.colour, s.kind) for s in shapes}
        if rng.random() < 0.5:
            colour, kind = rng.choice(sorted(present))
            answer = "yes"
        else:
            colour, kind = rng.choice([(c, k) for c in COLOURS for k in KINDS if (c, k) not in present])
            answer = "no"
        return f"can you see a {colour} {kind}?", answer, ["yes", "no"]
    raise ValueError(f"unknown QuadrantsVQA task {task!r}; choose from {TASKS}")


def generate(n: int, seed: int, prefix: str = "q") -> list[Sample]:
    """``n`` QuadrantsVQA samples, the kinds in turn; identical output for identical arguments."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        shapes = _scene(rng)
        while not subjects(task, shapes):
            shapes = _scene(rng)
        question, answer, options = _question(rng, task, shapes)
        out.append(Sample(id=f"{prefix}{seed}-{i:06d}", question=question, answer=answer, options=options,
                          context="", images=in_memory(render(shapes)), task=task, domain=DOMAIN))
    return out
