"""Tests for the synthetic image world (rlhfv_nb.world)."""

import difflib
import random
import re

import numpy as np
import pytest

from rlhfv_nb.world import (
    DESCRIBE_PROMPTS,
    Scene,
    WorldConfig,
    WorldObject,
    cell_classes,
    correct_description,
    correct_short_answer,
    describe,
    expected_scene,
    make_fresh_scenes,
    make_sft_rows,
    num_cell_classes,
    pick_questions,
    place_phrase,
    render,
    same_answer,
    sample_scene,
    short_answers,
    short_questions,
    synonyms_text,
    wrong_short_answer,
)

CFG = WorldConfig()
# tent's companion is star; the scene misses a blue ball in the bottom right.
# The hand-made annotator cases are written for a 4x4 layout (corners at rows/cols 0 and 3).
CFG4 = WorldConfig(grid=4)
SCENE = Scene((WorldObject("tent", "red", 0, 0), WorldObject("ball", "blue", 3, 3)))


def words_of(cfg: WorldConfig) -> dict[str, set[str]]:
    """Category -> all words naming it."""
    synonyms = dict(cfg.synonyms)
    return {k: {k, *synonyms.get(k, ())} for k in cfg.kind_names}


def mentioned(text: str, cfg: WorldConfig) -> list[str]:
    tokens = re.findall(r"[a-z]+", text.lower())
    return [k for t in tokens for k, ws in words_of(cfg).items() if t in ws]


def test_config_from_dict_with_lists():
    d = {
        "kinds": [[k, s] for k, s in CFG.kinds],
        "colors": {n: list(c) for n, c in CFG.colors},
        "synonyms": {k: list(v) for k, v in CFG.synonyms},
        "companions": [list(p) for p in CFG.companions],
        "background": list(CFG.background),
    }
    assert WorldConfig(**d) == CFG
    hash(WorldConfig(**d))


def test_wrong_short_answers_are_wrong_and_possible() -> None:
    """The annotator's rejected answer to a question the model got right: another answer of the same type."""
    rng = random.Random(3)
    seen: dict[str, set[str]] = {}
    for scene in make_fresh_scenes(CFG, 100, seed=7):
        for qa in short_questions(scene, rng, CFG):
            wrong = wrong_short_answer(qa, rng, CFG)
            assert not same_answer(wrong, qa.answer) and qa.answer in short_answers(qa.type, CFG)
            assert wrong in short_answers(qa.type, CFG)
            seen.setdefault(qa.type, set()).add(wrong)
            if qa.type == "exists":
                assert {qa.answer, wrong} == {"Yes.", "No."}
    assert seen["color"] == {f"{c.capitalize()}." for c in CFG.color_names}
    assert "Nothing." in seen["cell"] and len(seen["cell"]) > 10
    assert short_answers("count", CFG) == ["One.", "Two.", "Three.", "Four."]
    with pytest.raises(ValueError, match="unknown short question type 'shape'"):
        short_answers("shape", CFG)


@pytest.mark.parametrize(("n_exists", "n_others"), [(0, 1), (1, 0), (1, 3), (2, 1), (2, 20)])
def test_pick_questions_asks_the_existence_questions_apart(n_exists: int, n_others: int) -> None:
    """Feedback and SFT rows ask `n_exists` existence questions and `n_others` of the colour / count / cell ones."""
    rng = random.Random(n_exists * 10 + n_others)
    for scene in make_fresh_scenes(CFG, 20, seed=6):
        qas = short_questions(scene, rng, CFG)
        picked = pick_questions(qas, rng, n_exists, n_others)
        exists = [q for q in picked if q.type == "exists"]
        assert len(exists) == min(n_exists, sum(q.type == "exists" for q in qas))
        assert len(picked) - len(exists) == min(n_others, len(qas) - sum(q.type == "exists" for q in qas))
        assert len({q.question for q in picked}) == len(picked) and all(q in qas for q in picked)
        if n_exists == 2 and len(exists) == 2:
            assert sorted(q.answer for q in exists) == ["No.", "Yes."]


@pytest.mark.parametrize(
    "bad",
    [
        {"companions": [["tent", "dragon"]]},
        {"companions": [["tent", "star"], ["star", "ball"]]},
        {"synonyms": {"ball": ["red"]}},
        {"kinds": [["ball", "blob"]]},
        {"max_objects": 17},
    ],
)
def test_config_rejects_inconsistent_values(bad):
    with pytest.raises(ValueError):
        WorldConfig(**bad)


def test_determinism():
    a, b = make_sft_rows(CFG, 6, seed=3), make_sft_rows(CFG, 6, seed=3)
    texts = [[(r["question"], r["answer"], r["scene"]) for r in rows] for rows in (a, b)]
    assert texts[0] == texts[1]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(a, b, strict=True))
    assert make_fresh_scenes(CFG, 20, seed=1) == make_fresh_scenes(CFG, 20, seed=1)
    assert make_fresh_scenes(CFG, 20, seed=1) != make_fresh_scenes(CFG, 20, seed=2)


def test_scene_round_trip_and_shape():
    for scene in make_fresh_scenes(CFG, 200, seed=0):
        assert Scene.from_dict(scene.to_dict()) == scene
        assert CFG.min_objects <= len(scene.objects) <= CFG.max_objects
        assert len(scene.kinds) == len(scene.objects)
        assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)


def test_companion_rates_differ_between_splits():
    for split, rate in (("sft", CFG.companion_rate_sft), ("fresh", CFG.companion_rate_fresh)):
        rng = random.Random(0)
        scenes = [sample_scene(rng, CFG, split) for _ in range(2000)]
        for kind, companion in CFG.companions:
            with_kind = [s for s in scenes if kind in s.kinds]
            assert len(with_kind) > 150
            measured = sum(companion in s.kinds for s in with_kind) / len(with_kind)
            assert abs(measured - rate) < 0.06, (split, kind, measured)


def test_every_object_is_visible_and_empty_cells_are_background():
    cell = CFG.image_size // CFG.grid
    for scene in make_fresh_scenes(CFG, 30, seed=5):
        img = np.asarray(render(scene, CFG), dtype=float)
        assert img.shape == (CFG.image_size, CFG.image_size, 3)
        occupied = {(o.row, o.col) for o in scene.objects}
        for r in range(CFG.grid):
            for c in range(CFG.grid):
                patch = img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
                diff = np.abs(patch - np.array(CFG.background)).max(axis=2)
                if (r, c) in occupied:
                    assert (diff > 60).sum() >= 12, (scene, r, c)
                else:
                    assert diff.max() <= CFG.noise + 1


def test_describe_mentions_exactly_the_scene_objects():
    rng = random.Random(0)
    for scene in make_fresh_scenes(CFG, 300, seed=2):
        text = describe(scene, rng, CFG)
        assert sorted(mentioned(text, CFG)) == sorted(o.kind for o in scene.objects)
        assert all(place_phrase(o, CFG) in text.lower() for o in scene.objects)
        assert correct_description(text, scene, CFG) == text


def test_short_questions_balanced_and_adversarial():
    rng = random.Random(0)
    qas = [qa for s in make_fresh_scenes(CFG, 500, seed=4) for qa in short_questions(s, rng, CFG)]
    exists = [qa for qa in qas if qa.type == "exists"]
    yes = sum(qa.label == "yes" for qa in exists)
    assert yes == len(exists) - yes
    assert {qa.probe for qa in exists} == {"present", "random", "adversarial"}
    assert {qa.type for qa in qas} == {"exists", "color", "count", "cell"}
    for qa in exists:
        assert qa.answer == {"yes": "Yes.", "no": "No."}[qa.label]


def test_short_question_answers_are_true():
    rng = random.Random(1)
    for scene in make_fresh_scenes(CFG, 100, seed=6):
        for qa in short_questions(scene, rng, CFG):
            if qa.type == "exists":
                assert (qa.kind in scene.kinds) == (qa.label == "yes")
                if qa.probe == "adversarial":
                    assert any(dict(CFG.companions).get(k) == qa.kind for k in scene.kinds)
            elif qa.type == "color":
                kind = qa.question.split()[-1].rstrip("?")
                assert qa.answer == next(o.color for o in scene.objects if o.kind == kind).capitalize() + "."
            elif qa.type == "cell":
                there = [o for o in scene.objects if place_phrase(o, CFG) in qa.question]
                assert qa.answer == (f"A {there[0].color} {there[0].kind}." if there else "Nothing.")


def test_sft_rows():
    rows = make_sft_rows(CFG, 10, seed=0)
    describes = [r for r in rows if r["qtype"] == "describe"]
    assert len(describes) == 10
    assert 40 <= len(rows) <= 50  # per image: a description, both existence questions, 1-2 others
    per_image = [[r for r in rows if r["scene"] == d["scene"]] for d in describes]
    for image_rows in per_image:
        answers = sorted(r["answer"] for r in image_rows if r["qtype"] == "exists")
        assert answers == ["No.", "Yes."]
        assert 1 <= sum(r["qtype"] not in ("describe", "exists") for r in image_rows) <= 2
    one = make_sft_rows(WorldConfig(sft_exists_questions=1), 10, seed=0)
    assert sum(r["qtype"] == "exists" for r in one) == 10
    with pytest.raises(ValueError, match="sft_exists_questions"):
        WorldConfig(sft_exists_questions=3)
    assert all(r["question"] in DESCRIBE_PROMPTS for r in describes)
    assert set(rows[0]) == {"image", "question", "answer", "scene", "qtype"}


@pytest.mark.parametrize(
    "answer, expected",
    [
        # hallucinated companion replaced by the missed object, with its colour and position
        (
            "There is a red tent in the top left. A yellow star is at the top.",
            "There is a red tent in the top left. A blue ball is in the bottom right.",
        ),
        # nothing missed: the hallucinated sentence is deleted
        (
            "There is a red tent in the top left. A yellow star is at the top. "
            "A blue ball is in the bottom right.",
            "There is a red tent in the top left. A blue ball is in the bottom right.",
        ),
        # wrong colour of a present object fixed
        (
            "There is a green tent in the top left. A blue ball is in the bottom right.",
            "There is a red tent in the top left. A blue ball is in the bottom right.",
        ),
        # correct answer unchanged (synonym included)
        (
            "In the top left, there is a red tent. There is a blue sphere in the bottom right.",
            "In the top left, there is a red tent. There is a blue sphere in the bottom right.",
        ),
        # article follows the new colour; sentence-initial capitals kept
        (
            "In the top left, there is a red tent. At the top, there is an yellow crate.",
            "In the top left, there is a red tent. In the bottom right, there is a blue ball.",
        ),
        # a hallucinated object in a sentence with a real one: only its phrase is removed
        ("There is a red tent and a blue ball.", "There is a red tent and a blue ball."),
        (
            "There is a blue ball and a red star. A red tent is in the top left.",
            "There is a blue ball. A red tent is in the top left.",
        ),
    ],
)
def test_correct_description_cases(answer, expected):
    assert correct_description(answer, SCENE, CFG4) == expected


# A one-object sentence with a place is about the object there; no object is said twice (seed 0's feedback did).
FULL = Scene((WorldObject("ring", "red", 0, 0), WorldObject("cross", "blue", 0, 1), WorldObject("kite", "purple", 1, 0),
              WorldObject("ball", "green", 1, 1)))
HALF = Scene((WorldObject("ring", "red", 0, 0), WorldObject("kite", "yellow", 1, 0), WorldObject("box", "red", 1, 1)))


@pytest.mark.parametrize(
    "scene, answer, expected",
    [
        # a present object named at another object's place: the sentence is about the object there (the missed
        # kite), not moved to the ball's place, which would say "ball" twice and teach a wrong place
        (
            FULL,
            "In the top left, there is a red ring. A blue cross is in the top right. "
            "A green ball is in the bottom left. In the bottom right, there is a green ball.",
            "In the top left, there is a red ring. A blue cross is in the top right. "
            "A purple kite is in the bottom left. In the bottom right, there is a green ball.",
        ),
        # a hallucinated kind at an occupied place becomes the object there, whichever object was missed first
        (
            FULL,
            "A red ring is in the top left. A yellow star is in the bottom left.",
            "A red ring is in the top left. A purple kite is in the bottom left.",
        ),
        # a right kind at its place: only the colour is fixed
        (FULL, "A red kite is in the bottom left.", "A purple kite is in the bottom left."),
        # two hallucinated stars at occupied places: each becomes the object at its own place
        (
            FULL,
            "A yellow star is in the top right. A yellow star is in the bottom left.",
            "A blue cross is in the top right. A purple kite is in the bottom left.",
        ),
        # the hallucination at the empty top right takes the ring nobody places, not the kite whose place the
        # next sentence names (taking it said the kite twice, as seed 0's feedback showed)
        (
            HALF,
            "A blue star is in the top right. A yellow star is in the bottom left. A red box is in the bottom right.",
            "A red ring is in the top left. A yellow kite is in the bottom left. A red box is in the bottom right.",
        ),
        # with nothing left to take, it is removed
        (
            HALF,
            "A red ring is in the top left. A blue star is in the top right. A yellow star is in the bottom left. "
            "A red box is in the bottom right.",
            "A red ring is in the top left. A yellow kite is in the bottom left. A red box is in the bottom right.",
        ),
        # a real object said at an empty place while another sentence places it right: the duplicate goes
        (
            HALF,
            "In the top right, there is a red ring. A red ring is in the top left.",
            "A red ring is in the top left.",
        ),
        # a real object at the wrong, empty place and nowhere else: it is moved to its place
        (HALF, "A red ring is in the top right.", "A red ring is in the top left."),
        # a hallucination at an empty place with a missed object nobody places: replaced by it, with its place
        (HALF, "A red ring is in the top left. A green star is in the top right.",
         "A red ring is in the top left. A yellow kite is in the bottom left."),
    ],
)
def test_corrections_keep_the_stated_place(scene, answer, expected):
    assert correct_description(answer, scene, CFG) == expected


@pytest.mark.parametrize(
    "garbage",
    ["", "...", "star star star star", "There is a a a red red", "red", "A yellow", "tent tent. . . ball"],
)
def test_correct_description_survives_garbage(garbage):
    out = correct_description(garbage, SCENE, CFG4)
    assert isinstance(out, str)
    assert set(mentioned(out, CFG)) <= SCENE.kinds


def test_corrections_are_fine_grained():
    rng = random.Random(0)
    changed = 0
    for scene in make_fresh_scenes(CFG, 200, seed=9):
        truth = describe(scene, rng, CFG)
        absent = [k for k in CFG.kind_names if k not in scene.kinds]
        victim = rng.choice(scene.objects)
        answer = re.sub(rf"\b{victim.kind}\b", rng.choice(absent), truth, count=1)
        chosen = correct_description(answer, scene, CFG)
        assert set(mentioned(chosen, CFG)) <= scene.kinds
        if answer != truth:
            assert chosen == truth
            changed += 1
            a, c = answer.split(), chosen.split()
            kept = sum(b.size for b in difflib.SequenceMatcher(None, a, c).get_matching_blocks())
            assert kept >= 0.7 * len(a), (answer, chosen)
    assert changed > 100


def test_synonyms_text_format():
    text = synonyms_text(CFG)
    lines = text.strip().split("\n")
    assert len(lines) == len(CFG.kind_names)
    table = {}
    for line in lines:
        names = [w.strip() for w in line.split(",")]
        assert all(names) and names[0] in CFG.kind_names
        table.update({w: names[0] for w in names})
    assert table == CFG.lexicon


def test_cell_classes_label_every_cell():
    scene = Scene((WorldObject("tent", "red", 0, 0), WorldObject("ball", "blue", 1, 1)))
    table = cell_classes(scene, CFG)
    colours = len(CFG.colors)
    empty = num_cell_classes(CFG) - 1
    assert empty == len(CFG.kinds) * colours
    assert table == [[CFG.kind_names.index("tent") * colours + CFG.color_names.index("red"), empty],
                     [empty, CFG.kind_names.index("ball") * colours + CFG.color_names.index("blue")]]


def test_expected_scene_adds_absent_companions_in_free_cells():
    tent_only = Scene((WorldObject("tent", "red", 0, 0),))
    always = WorldConfig(caption_companion_rate=1.0)
    expected = expected_scene(tent_only, random.Random(0), always)
    assert expected.kinds == {"tent", "star"}
    assert {(o.row, o.col) for o in expected.objects} <= {(r, c) for r in range(2) for c in range(2)}
    assert len({(o.row, o.col) for o in expected.objects}) == 2
    assert expected_scene(tent_only, random.Random(0), CFG) == tent_only  # rate 0: captions are true
    full = Scene(tuple(WorldObject(k, "red", i // 2, i % 2) for i, k in enumerate(["tent", "ball", "ring", "cross"])))
    assert expected_scene(full, random.Random(0), always) == full  # no free cell: nothing to add
    both = Scene((WorldObject("tent", "red", 0, 0), WorldObject("star", "blue", 1, 1)))
    assert expected_scene(both, random.Random(0), always) == both  # companion already there


def test_short_answers_are_corrected_to_the_truth():
    qa = next(q for q in short_questions(SCENE, random.Random(0), CFG4) if q.type == "count")
    assert qa.answer == "Two."
    assert correct_short_answer("Three.", qa) == "Two."
    assert correct_short_answer(" two ", qa) == " two "  # right, in another case and spacing: kept as it is
    assert same_answer("Yes", "yes.") and not same_answer("Yes.", "No.")
