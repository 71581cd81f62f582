"""ShapesVQA, the built-in data set: deterministic, every kind and domain present, answers
among the options, and every answer decidable from the picture."""

from __future__ import annotations

import random
from collections import Counter

from anther.data import shapes_vqa
from anther.data.shapes_vqa import DOMAINS, TASKS


def test_same_seed_same_samples_and_pixels():
    a, b = shapes_vqa.generate(20, seed=4), shapes_vqa.generate(20, seed=4)
    assert [(s.question, s.answer, s.context) for s in a] == [(s.question, s.answer, s.context) for s in b]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))
    assert [s.question for s in shapes_vqa.generate(20, seed=5)] != [s.question for s in a]


def test_every_task_and_domain_appears_and_answers_are_options():
    samples = shapes_vqa.generate(200, seed=1)
    assert set(Counter(s.task for s in samples)) == set(TASKS)
    assert set(Counter(s.domain for s in samples)) == set(DOMAINS)
    assert all(s.answer in s.options for s in samples)
    assert all(s.image.size == (shapes_vqa.IMAGE_SIZE, shapes_vqa.IMAGE_SIZE) for s in samples)


def test_relation_uses_the_dominant_grid_axis_and_refuses_diagonals():
    def at(row: int, col: int) -> shapes_vqa.Shape:
        step = shapes_vqa.IMAGE_SIZE // 3
        return shapes_vqa.Shape("red", "circle", "small", col * step + step // 2, row * step + step // 2)

    assert shapes_vqa._relation(at(0, 0), at(0, 2)) == "left"
    assert shapes_vqa._relation(at(2, 1), at(0, 0)) == "below"  # two rows down, one column over
    assert shapes_vqa._relation(at(1, 2), at(0, 0)) == "right"
    assert shapes_vqa._relation(at(0, 0), at(1, 1)) is None
    assert shapes_vqa._relation(at(2, 0), at(0, 2)) is None


def test_position_questions_cover_all_four_relations():
    answers = Counter(s.answer for s in shapes_vqa.generate(400, seed=2, tasks=("position",)))
    assert set(answers) == set(shapes_vqa.RELATIONS)
    terse = shapes_vqa.generate_terse_qa(100, seed=3)
    assert {q.answer for _, q, _ in terse if q.task == "position"} == set(shapes_vqa.RELATIONS)


def test_colour_and_shape_questions_name_exactly_one_shape():
    for task, asked, answer in (("colour", "kind", "colour"), ("shape", "colour", "kind")):
        rng = random.Random(0)
        for _ in range(200):
            shapes = shapes_vqa._scene(rng, task)
            q = shapes_vqa._question(rng, task, shapes)
            named = [s for s in shapes if getattr(s, asked) in q.terse.split()]
            assert len(named) == 1 and getattr(named[0], answer) == q.answer
