"""ShapesVQA: anther's built-in multimodal data set, generated from a seed with Pillow.

Each image holds one to three shapes (colour, kind, size, position) drawn in one
of several visual domains; each sample asks one question about it. The
``context`` text states part of the scene on its own (for example how many shapes
there are, or one object's colour), so some questions are answerable from text
alone, some only from the image, which is what missing-modality scenarios need.

Question kinds (``task``): colour, shape, count, position, yesno.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

from anther.core.images import in_memory
from anther.core.sample import Sample

IMAGE_SIZE = 48
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
KINDS = ("circle", "square", "triangle")
SIZES = {"small": 9, "big": 14}
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("left", "right", "above", "below")
DOMAINS = ("plain", "noisy", "dark", "striped")
PRETRAIN_DOMAINS = ("plain", "striped")
TASKS = ("colour", "shape", "count", "position", "yesno")
# Bumped whenever the same seed would give different samples, so cached copies are remade.
VERSION = 3


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size: str
    x: int  # centre, pixels
    y: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


def _place_shapes(rng: random.Random, n: int) -> list[Shape]:
    """Draw n shapes with distinct (colour, kind) on a 3x3 grid of distinct cells."""
    cells = rng.sample(range(9), n)
    combos = rng.sample([(c, k) for c in COLOURS for k in KINDS], n)
    step = IMAGE_SIZE // 3
    shapes = []
    for cell, (colour, kind) in zip(cells, combos):
        cx = (cell % 3) * step + step // 2 + rng.randint(-1, 1)
        cy = (cell // 3) * step + step // 2 + rng.randint(-1, 1)
        shapes.append(Shape(colour, kind, rng.choice(list(SIZES)), cx, cy))
    return shapes


def _background(rng: random.Random, domain: str) -> Image.Image:
    if domain == "plain":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (245, 245, 240))
    if domain == "dark":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (30, 30, 40))
    if domain == "striped":
        im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (225, 225, 210))
        d = ImageDraw.Draw(im)
        for x in range(-IMAGE_SIZE, IMAGE_SIZE, 6):
            d.line([(x, 0), (x + IMAGE_SIZE, IMAGE_SIZE)], fill=(190, 190, 175), width=2)
        return im
    if domain == "noisy":
        im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        im.putdata([tuple(rng.randint(150, 250) for _ in range(3)) for _ in range(IMAGE_SIZE**2)])
        return im
    raise ValueError(f"unknown visual domain {domain!r}; choose from {DOMAINS}")


def _palette(colour: str, domain: str) -> tuple[int, int, int]:
    r, g, b = COLOURS[colour]
    if domain == "dark":  # a muted palette on a dark ground
        return (int(r * 0.8) + 30, int(g * 0.8) + 30, int(b * 0.8) + 30)
    return (r, g, b)


def render(shapes: list[Shape], domain: str, rng: random.Random) -> Image.Image:
    im = _background(rng, domain)
    d = ImageDraw.Draw(im)
    for s in shapes:
        h = SIZES[s.size] // 2
        box = [s.x - h, s.y - h, s.x + h, s.y + h]
        fill = _palette(s.colour, domain)
        if s.kind == "circle":
            d.ellipse(box, fill=fill)
        elif s.kind == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(s.x, s.y - h), (s.x - h, s.y + h), (s.x + h, s.y + h)], fill=fill)
    if domain == "noisy":
        im = im.filter(ImageFilter.GaussianBlur(0.6))
    return im


def _cell(s: Shape) -> tuple[int, int]:
    """(row, column) of the 3x3 grid cell the shape sits in."""
    step = IMAGE_SIZE // 3
    return s.y // step, s.x // step


def _relation(a: Shape, b: Shape) -> str | None:
    """Where a is relative to b, by the dominant axis of their grid cells; None when the
    cells are diagonal (equal row and column offsets), where no one word is right."""
    (ra, ca), (rb, cb) = _cell(a), _cell(b)
    dr, dc = ra - rb, ca - cb
    if abs(dc) > abs(dr):
        return "left" if dc < 0 else "right"
    if abs(dr) > abs(dc):
        return "above" if dr < 0 else "below"
    return None


def subjects(task: str, shapes: list) -> list:
    """What a question of ``task`` may ask about so that exactly one answer is right: a shape
    whose kind (colour question) or colour (shape question) no other shape shares, or an
    ordered pair with a clear relation (position question). Colour and shape questions read only
    ``.colour`` and ``.kind``, so other generators' shapes may ask them too."""
    if task == "colour":
        return [s for s in shapes if sum(t.kind == s.kind for t in shapes) == 1]
    if task == "shape":
        return [s for s in shapes if sum(t.colour == s.colour for t in shapes) == 1]
    if task == "position":
        return [(a, b) for a in shapes for b in shapes if a is not b and _relation(a, b)]
    return shapes


def _scene(rng: random.Random, task: str) -> list[Shape]:
    """Shapes for one question, drawn again until the question has exactly one right answer."""
    while True:
        shapes = _place_shapes(rng, rng.randint(2, 3) if task == "position" else rng.randint(1, 3))
        if subjects(task, shapes):
            return shapes


@dataclass(frozen=True)
class Question:
    """One question about a scene, in the task's phrasing and in the terse pretraining one."""

    task: str
    text: str
    terse: str
    answer: str
    options: list[str]


def _question(rng: random.Random, task: str, shapes: list[Shape]) -> Question:
    if task == "colour":
        s = rng.choice(subjects(task, shapes))
        return Question(task, f"what colour is the {s.kind}?", f"colour {s.kind}", s.colour, list(COLOURS))
    if task == "shape":
        s = rng.choice(subjects(task, shapes))
        return Question(task, f"what shape is the {s.colour} object?", f"shape {s.colour}", s.kind, list(KINDS))
    if task == "count":
        return Question(task, "how many shapes are there?", "count", COUNT_WORDS[len(shapes) - 1], list(COUNT_WORDS))
    if task == "position":
        a, b = rng.choice(subjects(task, shapes))
        return Question(task, f"where is the {a.name} relative to the {b.name}?", f"where {a.name} {b.name}",
                        _relation(a, b), list(RELATIONS))
    if task == "yesno":
        if rng.random() < 0.5:
            c, k = rng.choice([(s.colour, s.kind) for s in shapes])
            answer = "yes"
        else:
            present = {(s.colour, s.kind) for s in shapes}
            c, k = rng.choice([(c, k) for c in COLOURS for k in KINDS if (c, k) not in present])
            answer = "no"
        return Question(task, f"is there a {c} {k}?", f"exists {c} {k}", answer, ["yes", "no"])
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def _context(rng: random.Random, shapes: list[Shape]) -> str:
    """A sentence or two that states part of the scene."""
    n = len(shapes)
    facts = [f"there {'is' if n == 1 else 'are'} {COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''}."]
    s = rng.choice(shapes)
    facts.append(rng.choice([f"one of them is {s.colour}.", f"one of them is a {s.kind}.",
                             f"the {s.colour} one is {s.size}."]))
    return " ".join(rng.sample(facts, rng.randint(1, 2)))


def caption(shapes: list[Shape]) -> str:
    """A full description of the scene, used to pretrain the tiny model."""
    parts = [f"{COUNT_WORDS[len(shapes) - 1]} shape{'s' if len(shapes) > 1 else ''}."]
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    for s in sorted(shapes, key=_cell):
        row, col = _cell(s)
        where = f"{rows[row]} {cols[col]}"
        parts.append(f"a {s.size} {s.colour} {s.kind} at {where}.")
    return " ".join(parts)


def generate(n: int, seed: int, domains: tuple[str, ...] = DOMAINS,
             tasks: tuple[str, ...] = TASKS, prefix: str = "s") -> list[Sample]:
    """Generate ``n`` ShapesVQA samples; identical output for identical arguments."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        shapes = _scene(rng, task)
        domain = rng.choice(domains)
        q = _question(rng, task, shapes)
        out.append(Sample(
            id=f"{prefix}{seed}-{i:06d}", question=q.text, answer=q.answer, options=q.options,
            context=_context(rng, shapes), images=in_memory(render(shapes, domain, rng)),
            task=task, domain=domain,
        ))
    return out


def generate_scenes(n: int, seed: int, domains: tuple[str, ...] = PRETRAIN_DOMAINS
                    ) -> list[tuple[Image.Image, list[Shape]]]:
    """Rendered scenes with their shapes, for pretraining (a different stream from the VQA splits)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shapes = _place_shapes(rng, rng.randint(1, 3))
        out.append((render(shapes, rng.choice(domains), rng), shapes))
    return out


def generate_captions(n: int, seed: int, domains: tuple[str, ...] = PRETRAIN_DOMAINS
                      ) -> list[tuple[Image.Image, str]]:
    """Images with full captions, for pretraining."""
    return [(im, caption(shapes)) for im, shapes in generate_scenes(n, seed, domains)]


def cell_labels(shapes: list[Shape]) -> list[tuple[int, int, int]]:
    """(colour, kind, size) class of each of the 3x3 grid cells, row by row; 0 = empty.

    The labels a vision encoder is pretrained on, one per cell (with anther's tiny
    model each cell is exactly one ViT patch)."""
    cells = [(0, 0, 0)] * 9
    for s in shapes:
        row, col = _cell(s)
        cells[row * 3 + col] = (
            1 + list(COLOURS).index(s.colour), 1 + KINDS.index(s.kind), 1 + list(SIZES).index(s.size))
    return cells


def generate_terse_qa(n: int, seed: int, domains: tuple[str, ...] = PRETRAIN_DOMAINS
                      ) -> list[tuple[Image.Image, Question, str]]:
    """(image, question, context sentence) for pretraining, asked by ``question.terse``: the
    skills of the task, in a different phrasing and on fewer visual domains than the
    federated task."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        shapes = _scene(rng, task)
        q = _question(rng, task, shapes)
        out.append((render(shapes, rng.choice(domains), rng), q, _context(rng, shapes)))
    return out


def corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Text the tokenizer is trained on: every word any sample or caption can contain."""
    rng = random.Random(seed)
    lines = []
    for s in generate(n // 4, seed, prefix="c"):
        lines += [s.context, s.question, s.answer]
    lines += [c for _, c in generate_captions(n // 4, seed + 1)]
    lines += [f"q: {q.terse} a: {q.answer}" for _, q, _ in generate_terse_qa(n // 4, seed + 2)]
    words = list(COLOURS) + list(KINDS) + list(SIZES) + list(COUNT_WORDS) + list(RELATIONS)
    lines += [" ".join(rng.sample(words, 5)) for _ in range(n // 4)]
    return lines
