"""Wrong colours and places of objects that are in the scene (rlhfv_nb.world_eval's AMBER-like attribute check)."""

from __future__ import annotations

import json

import pytest

from rlhfv_nb.evaluate.chair import ChairVocabulary
from rlhfv_nb.world import Scene, WorldConfig, WorldObject, synonyms_text
from rlhfv_nb.world_eval import (
    WORLD_VOCABULARY,
    check_attributes,
    scene_from_text,
    scene_text,
    score_attributes,
    stated_objects,
    world_scores,
    wrong_spans,
)

CFG = WorldConfig()  # 2x2 grid: the four corners
VOCAB = ChairVocabulary.from_synonyms_text(synonyms_text(CFG), name=WORLD_VOCABULARY)
# the demo case: every object named right, two of three places wrong
SCENE = Scene((WorldObject("star", "blue", 0, 1), WorldObject("ball", "green", 1, 0), WorldObject("box", "red", 1, 1)))
ANSWER = "A red box is in the bottom right. A blue star is in the bottom left. A green ball is in the top left."


def _wrong(text: str, scene: Scene) -> list[tuple[str, bool, bool]]:
    return [(c.stated.kind, c.wrong_color, c.wrong_place) for c in check_attributes(text, scene, CFG)]


def test_no_object_hallucinated_but_two_places_wrong() -> None:
    assert _wrong(ANSWER, SCENE) == [("box", False, False), ("star", False, True), ("ball", False, True)]
    colors, places = wrong_spans(check_attributes(ANSWER, SCENE, CFG))
    assert colors == [] and [ANSWER[slice(*s)] for s in places] == ["in the bottom left", "in the top left"]
    item = {"id": "d", "image_id": 7, "qtype": "describe", "scene": json.dumps(SCENE.to_dict())}
    scores = world_scores([item], {"d": ANSWER}, VOCAB, CFG)
    assert scores.chair.summary["CHAIRs"] == 0.0 and scores.chair.summary["n_mentions"] == 3
    summary = scores.attributes.summary
    assert (summary["wrong_color"], summary["wrong_place"], summary["attribute_hallucination"]) == (0.0, 2 / 3, 1.0)


def test_colours_spans_synonyms_and_absent_kinds() -> None:
    text = "A purple sphere is in the bottom left. There is a red tent in the top right."
    (ball,) = check_attributes(text, SCENE, CFG)  # the tent is CHAIR's hallucination, not checked here
    assert (ball.stated.kind, ball.wrong_color, ball.wrong_place) == ("ball", True, False)
    assert text[slice(*ball.stated.color_span)] == "purple" and text[slice(*ball.stated.span)] == "sphere"
    assert _wrong("A box is there.", SCENE) == [("box", False, False)]  # nothing stated, nothing wrong


def test_several_objects_of_a_kind() -> None:
    """A red box bottom right, a blue box top left: the place is checked against the boxes of the stated colour."""
    boxes = Scene((WorldObject("box", "blue", 0, 0), WorldObject("box", "red", 1, 1)))
    assert _wrong("A red box is in the bottom right.", boxes) == [("box", False, False)]
    assert _wrong("A blue box is in the bottom right.", boxes) == [("box", False, True)]  # the blue one is elsewhere
    assert _wrong("A red box is in the top left.", boxes) == [("box", False, True)]
    # a wrong colour is not also a wrong place: the place is checked against every box
    assert _wrong("A green box is in the top left.", boxes) == [("box", True, False)]
    assert _wrong("A green box is in the top right.", boxes) == [("box", True, True)]
    assert _wrong("A box is in the top right.", boxes) == [("box", False, True)]


def test_places_are_read_as_the_templates_write_them() -> None:
    shared = "A red box and a blue star are in the bottom right."  # one place for both objects
    assert [(s.kind, s.place) for s in stated_objects(shared, CFG)] == [("box", "bottom right"),
                                                                          ("star", "bottom right")]
    assert _wrong(shared, SCENE) == [("box", False, False), ("star", False, True)]
    paired = "In the top right, a blue star; in the bottom left, a green ball."
    assert [s.place for s in stated_objects(paired, CFG)] == ["top right", "bottom left"]
    three = "A box, a star and a ball, in the top left and in the top right."  # two places for three: nobody's
    assert [s.place for s in stated_objects(three, CFG)] == [None, None, None]
    moved = "There is a green ball in the top left. Red box at the bottom right!"
    assert [(s.place, moved[slice(*s.place_span)]) for s in stated_objects(moved, CFG)] == [
        ("top left", "in the top left"), ("bottom right", "at the bottom right")]  # spans in the whole text


def test_rates_are_over_stated_attributes_and_answers() -> None:
    result = score_attributes({1: ANSWER, 2: "A blue star is in the top right. A ball.", 3: ""},
                              {1: SCENE, 2: SCENE, 3: SCENE}, CFG)
    s = result.summary
    assert (s["n_colors"], s["n_wrong_colors"], s["n_places"], s["n_wrong_places"]) == (4, 0, 4, 2)
    assert (s["wrong_color"], s["wrong_place"], s["attribute_hallucination"]) == (0.0, 0.5, pytest.approx(1 / 3))
    assert result.counts()["wrong_place"] == {1: (2, 3), 2: (0, 1), 3: (0, 0)}
    assert score_attributes({}, {}, CFG).summary["wrong_color"] is None
    with pytest.raises(KeyError, match="no scene for image id"):
        score_attributes({4: "A box."}, {1: SCENE}, CFG)
    json.dumps(result.to_dict())


def test_chair_counts_add_up_to_the_summary() -> None:
    scores = world_scores(
        [{"id": f"d{i}", "image_id": i, "qtype": "describe", "scene": json.dumps(SCENE.to_dict())} for i in range(3)],
        {"d0": ANSWER, "d1": "A red tent and a box.", "d2": "Nothing."}, VOCAB, CFG)
    summary = scores.chair.summary
    for key, counts in scores.chair.counts().items():
        num, den = (sum(c[i] for c in counts.values()) for i in (0, 1))
        assert num / den == pytest.approx(summary[key]), key
    assert set(scores.counts()) == {"CHAIRs", "CHAIRs_refine", "CHAIRi", "recall", "wrong_color", "wrong_place",
                                    "attribute_hallucination"}


def test_scene_as_text_and_back() -> None:
    text = scene_text(SCENE, CFG)
    assert text == "blue star in the top right, green ball in the bottom left, red box in the bottom right"
    assert scene_from_text(text, CFG) == SCENE
    assert scene_from_text("star, ball", CFG) is None and scene_from_text("", CFG) is None
    assert scene_from_text("blue star in the top right, ball in the top left", CFG) is None
    with pytest.raises(ValueError, match="'center' is no place of the 2x2 grid"):
        scene_from_text("red ball in the center", CFG)
