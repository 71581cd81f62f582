"""QuadrantsVQA, the set the tiny model was never pretrained on: its pictures use none of
ShapesVQA's colours, every question has exactly one right option that the picture shows, and
``anther data generate --set quadrants_vqa`` writes a folder a run reads."""

from __future__ import annotations

from collections import Counter

from anther.cli import main
from anther.core.sample import read_split
from anther.data import quadrants_vqa, shapes_vqa


def _colours(sample) -> set[tuple[int, int, int]]:
    (picture,) = sample.pictures()
    return {rgb for _, rgb in picture.convert("RGB").getcolors(maxcolors=4096)}


def test_the_same_seed_gives_the_same_set_and_the_kinds_take_turns():
    a, b = quadrants_vqa.generate(30, seed=5), quadrants_vqa.generate(30, seed=5)
    assert [(s.question, s.answer) for s in a] == [(s.question, s.answer) for s in b]
    assert [s.task for s in a[:3]] == list(quadrants_vqa.TASKS) and {s.domain for s in a} == {"quadrants"}
    assert a != quadrants_vqa.generate(30, seed=6)


def test_each_answer_is_one_option_and_the_picture_shows_it():
    samples = quadrants_vqa.generate(300, seed=1)
    for s in samples:
        assert s.options.count(s.answer) == 1 and s.context == ""
        colours = _colours(s)
        assert not colours & set(shapes_vqa.COLOURS.values())  # another palette
        if s.task == "colour":
            assert quadrants_vqa.PALETTE[s.answer] in colours
        if s.task == "shape":
            colour = s.question.removeprefix("which shape is drawn in ").removesuffix("?")
            assert quadrants_vqa.PALETTE[colour] in colours
    yes_no = Counter(s.answer for s in samples if s.task == "yesno")
    assert 0.35 < yes_no["yes"] / sum(yes_no.values()) < 0.65


def test_no_question_is_phrased_as_shapes_vqa_asks_it():
    shapes_questions = {s.question for s in shapes_vqa.generate(300, seed=1)}
    assert not shapes_questions & {s.question for s in quadrants_vqa.generate(300, seed=1)}


def test_the_cli_writes_a_folder_a_run_reads(tmp_path, capsys):
    assert main(["data", "generate", "--set", "quadrants_vqa", "--out", str(tmp_path), "--train", "9",
                 "--test", "6"]) == 0
    assert f"anther simulate data.path={tmp_path}" in capsys.readouterr().out
    train, skipped = read_split(tmp_path, "train")
    test, _ = read_split(tmp_path, "test")
    assert len(train) == 9 and len(test) == 6 and not skipped
    assert {s.task for s in test} == set(quadrants_vqa.TASKS)
    assert all(s.id.startswith("train") for s in train) and all(s.id.startswith("test") for s in test)
