"""CHAIR on hand-made COCO-format fixtures with hand-computed answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FakeOpenAI

from rlhfv_nb.evaluate.chair import (
    ChairVocabulary,
    evaluate_chair,
    extract_mentions,
    load_coco_ground_truth,
    parse_object_list,
    score_responses,
)
from rlhfv_nb.evaluate.judge import JudgeClient

COCO = ChairVocabulary.coco()

RESPONSES = {
    1: "A man and two dogs play with frisbees near a parked car.",  # car hallucinated
    "000000000002": "A baby cat sits on the toilet seat beside the sink.",  # sink only in captions
    "3": "A bowl of broccoli and a teddy bear on the table.",  # teddy bear hallucinated
    4: "",  # empty answer
    999: "A dog.",  # unknown image id
}


def categories(text: str, vocab: ChairVocabulary = COCO) -> list[str]:
    return [m.category for m in extract_mentions(text, vocab)]


def test_coco_vocabulary_has_80_categories() -> None:
    assert len(COCO.categories) == 80 and COCO.categories[0] == "person"
    assert COCO.category_of("Dining Table") == "dining table"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two dogs and three buses.", ["dog", "bus"]),
        ("people, children and women", ["person", "person", "person"]),
        ("knives, mice and scissors", ["knife", "mouse", "scissors"]),
        ("a baby elephant next to an adult giraffe", ["elephant", "giraffe"]),
        ("a baby", ["person"]),
        ("the passenger train and a passenger jet", ["train", "airplane"]),
        ("a toilet seat", ["toilet"]),
        ("the seat of the toilet", ["toilet"]),
        ("a seat", ["chair"]),
        ("hot dogs and teddy bears", ["hot dog", "teddy bear"]),
        ("a motor bike on the train tracks", ["motorcycle"]),
        ("two wine glasses, tennis rackets and sports balls", ["wine glass", "tennis racket", "sports ball"]),
        ("a man wearing a bow tie", ["person", "tie"]),
        ("My iPhone", ["cell phone"]),
        ("", []),
    ],
)
def test_extract_mentions_rules(text: str, expected: list[str]) -> None:
    assert categories(text) == expected


def test_mentions_carry_offsets_into_original_text() -> None:
    text = "Two Baby Cats near TEDDY BEARS, and a dog's bowl."
    found = extract_mentions(text, COCO)
    assert [(m.word, text[m.start:m.end]) for m in found] == [
        ("cat", "Baby Cats"), ("teddy bear", "TEDDY BEARS"), ("dog", "dog"), ("bowl", "bowl")]


def test_custom_vocabulary_for_a_synthetic_world() -> None:
    text = "red cube, cube, box\nblue sphere, sphere, ball, orb\n"
    vocab = ChairVocabulary.from_synonyms_text(text, name="toy")
    assert vocab.categories == ("red cube", "blue sphere")
    assert categories("Two boxes, a red cube and an orb.", vocab) == ["red cube", "red cube", "blue sphere"]
    truth = {"a": {"red cube"}, "b": set()}
    result = score_responses({"a": "A cube and a ball.", "b": "A sphere."}, truth, vocab)
    assert result.summary["CHAIRi"] == pytest.approx(2 / 3) and result.summary["vocabulary"] == "toy"


def test_vocabulary_errors_name_the_line() -> None:
    with pytest.raises(ValueError, match="line 2: 'box' already belongs to category 'cube'"):
        ChairVocabulary.from_synonyms_text("cube, box\nchest, box\n", name="toy")
    with pytest.raises(ValueError, match="line 1: empty synonym"):
        ChairVocabulary.from_synonyms_text("cube, , box\n")


def test_ground_truth_from_instances_and_captions(coco_dir: Path) -> None:
    truth = load_coco_ground_truth(coco_dir)
    assert truth == {
        1: {"person", "dog", "frisbee"},
        2: {"cat", "toilet", "sink"},  # sink named only in a caption
        3: {"bowl", "broccoli", "dining table"},  # table named only in a caption
        4: {"train"},  # "passenger train" is not a person
    }


def test_evaluate_chair_hand_computed(coco_dir: Path) -> None:
    result = evaluate_chair(RESPONSES, coco_dir)
    s = result.summary
    assert s["CHAIRs"] == pytest.approx(2 / 4)
    assert s["CHAIRs_refine"] == pytest.approx(2 / 3)
    assert s["CHAIRi"] == pytest.approx(2 / 11)
    assert s["recall"] == pytest.approx(9 / 10)
    assert s["avg_len"] == pytest.approx((12 + 11 + 11 + 0) / 4)
    assert (s["n_responses"], s["n_scored"], s["n_empty"], s["n_missing_gt"]) == (5, 4, 1, 1)
    assert s["extraction"] == "word_match"
    by_id = {d.id: d for d in result.details}
    assert [(m.word, m.category) for m in by_id[1].hallucinated] == [("car", "car")]
    assert by_id[2].hallucinated == []
    assert by_id[2].objects == ["cat", "toilet", "sink"]
    assert [m.category for m in by_id[3].hallucinated] == ["teddy bear"]
    assert by_id[4].status == "empty" and by_id[999].status == "missing_gt"
    json.dumps(result.to_dict())  # JSON-ready


def test_missing_coco_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json.*annotations_trainval2014\.zip"):
        evaluate_chair({1: "A dog."}, tmp_path)


def test_parse_object_list() -> None:
    assert parse_object_list('Objects:\n["dog", "frisbee"]') == ["dog", "frisbee"]
    assert parse_object_list("[]") == []
    with pytest.raises(ValueError):
        parse_object_list("a dog and a frisbee")


def test_llm_extraction_mode(openai_server: FakeOpenAI, coco_dir: Path) -> None:
    def extract(prompt: str) -> str:
        if "[Answer]" not in prompt:
            return "Sorry, still no list."  # reply to the nudge
        answer = prompt.split("[Answer]\n", 1)[1].split("\n\n", 1)[0]
        if "frisbee" in answer:
            return '["man", "dogs", "frisbees", "red car"]'
        if "toilet" in answer:
            return "I cannot list them."  # malformed twice: reported, not scored
        return '["bowl", "broccoli", "teddy bear", "table"]'

    openai_server.responder = extract
    judge = JudgeClient("judge-test", base_url=openai_server.url, max_retries=0)
    result = evaluate_chair(RESPONSES, coco_dir, judge=judge)
    s = result.summary
    assert s["extraction"] == "llm" and s["judge"]["judge_model"] == "judge-test"
    assert s["n_extraction_failed"] == 1 and s["n_scored"] == 3
    assert s["CHAIRi"] == pytest.approx(2 / 8)
    failed = next(d for d in result.details if d.status == "extraction_failed")
    assert failed.id == 2 and "unparseable" in failed.error
    # 1 + 2 (nudged retry) + 1: empty answers and unknown ids are not sent
    assert len(openai_server.requests) == 4
