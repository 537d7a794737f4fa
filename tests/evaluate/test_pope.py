"""POPE: answer parsing, metrics against hand-computed values, sampler properties."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfv_nb.evaluate.pope import (
    build_questions,
    evaluate_pope,
    images_from_coco,
    parse_answer,
    score_answers,
)

IMAGES = {
    "a.jpg": ["person", "dog", "frisbee"],
    "b.jpg": ["person", "car", "bus", "truck"],
    "c.jpg": ["cat", "couch", "remote"],
    "d.jpg": ["person", "car", "traffic light"],
    "e.jpg": ["apple"],  # too few objects: skipped
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog.", ("yes", True)),
        ("No, there is no dog.", ("no", True)),
        ("There is not a dog in the image.", ("no", True)),
        ("Yes. But no cat.", ("yes", True)),  # only the first sentence counts
        ("I think so", ("yes", False)),
        ("", ("yes", False)),
        (None, ("yes", False)),
    ],
)
def test_parse_answer(text: str | None, expected: tuple[str, bool]) -> None:
    assert parse_answer(text) == expected


def test_metrics_hand_computed() -> None:
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    questions = [{"question_id": i, "label": label} for i, label in enumerate(labels)]
    # question 5 has no answer
    answers = {0: "Yes, there is.", 1: "No.", 2: "There is not a dog.", 3: "yes", 4: "I think so"}
    m = score_answers(questions, answers)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["yes_ratio"] == pytest.approx(4 / 6)
    assert m["n_unparseable"] == 2 and m["n"] == 6


def test_evaluate_per_split() -> None:
    q = [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    out = evaluate_pope({"random": (q, {1: "Yes", 2: "No"}), "popular": (q, {1: "Yes", 2: "Yes"})})
    assert out["random"]["accuracy"] == 1.0 and out["popular"]["accuracy"] == 0.5


def _check_common(questions: list[dict], sample_num: int = 2) -> None:
    per_image: dict[str, list[dict]] = {}
    for q in questions:
        per_image.setdefault(q["image"], []).append(q)
    assert "e.jpg" not in per_image
    for image, qs in per_image.items():
        labels = [q["label"] for q in qs]
        assert labels == ["yes", "no"] * sample_num  # 50/50, paired
        negatives = [q["object"] for q in qs if q["label"] == "no"]
        assert not set(negatives) & set(IMAGES[image]) and len(set(negatives)) == len(negatives)
        assert [q["object"] for q in qs if q["label"] == "yes"] == IMAGES[image][:sample_num]
    assert [q["question_id"] for q in questions] == list(range(1, len(questions) + 1))


def test_random_sampler_is_seeded() -> None:
    first = build_questions(IMAGES, "random", sample_num=2, seed=1)
    _check_common(first)
    assert first == build_questions(IMAGES, "random", sample_num=2, seed=1)


def test_popular_sampler_uses_most_frequent_objects() -> None:
    qs = build_questions(IMAGES, "popular", sample_num=2)
    _check_common(qs)
    # frequency: person 3, car 2, then the rest once (first-seen order: dog, frisbee, bus, ...)
    by_image = {img: [q["object"] for q in qs if q["image"] == img and q["label"] == "no"] for img in IMAGES}
    assert by_image["c.jpg"] == ["person", "car"]
    assert by_image["a.jpg"] == ["car", "bus"]


def test_adversarial_sampler_uses_co_occurring_objects() -> None:
    qs = build_questions(IMAGES, "adversarial", sample_num=2)
    _check_common(qs)
    negatives = {(q["image"], q["object"]) for q in qs if q["label"] == "no"}
    # in a.jpg, "person" co-occurs most with car (2 images): the negative paired with person is car
    pairs = [(qs[i]["object"], qs[i + 1]["object"]) for i in range(0, len(qs), 2)]
    assert ("person", "car") in pairs and ("a.jpg", "car") in negatives


def test_question_text_and_errors() -> None:
    qs = build_questions({"x.jpg": ["apple"], "y.jpg": ["dog"]}, "random", sample_num=1)
    assert [q["text"] for q in qs[:2]] == ["Is there an apple in the image?", "Is there a dog in the image?"]
    with pytest.raises(ValueError, match="unknown POPE strategy"):
        build_questions(IMAGES, "hard")


def test_images_from_coco(coco_dir: Path) -> None:
    images = images_from_coco(coco_dir)
    assert images["COCO_val2014_000000000001.jpg"] == ["person", "dog", "frisbee"]
