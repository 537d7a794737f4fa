"""CHAIR on hand-made COCO-format fixtures with hand-computed answers; the LLM path through the real `openai` client.

WordNet must be installed (`python -m rlhfv_nb.evaluate.wordnet`, which `make env` runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import JUDGE_MODEL, FakeOpenAI

from rlhfv_nb.evaluate.chair import (
    ChairVocabulary,
    evaluate_chair,
    extract_mentions,
    extraction_prompt_template,
    lemmatize,
    load_coco_ground_truth,
    noun_lemma,
    parse_object_list,
    refine_objects,
    score_responses,
    terms_to_mentions,
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

# RLHF-V eval/eval_gpt_obj_halbench.py `prompt_template`, as the string it evaluates to (an independent copy).
UPSTREAM_PROMPT = """You are an expert in image objects extraction according to a question answer pair. \
We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. \
Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object \
name in your result.
4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., "object_n"].
5. You should return an empty JSON list () if no visible objects can be found.
"""


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
        # WordNet turns "sports" into "sport", so "sports ball" is no phrase; "ball" still is sports ball
        ("two wine glasses, tennis rackets and sports balls", ["wine glass", "tennis racket", "sports ball"]),
        ("a man wearing a bow tie", ["person", "tie"]),
        ("My iPhone", []),  # upstream's table says "iPhone"; the text is lower-cased: never matches
        ("It is hot, dog.", ["dog"]),  # punctuation is a word: no "hot dog" across the comma
        ("A dog. A cat! A horse? A dog's bowl", ["dog", "cat", "horse", "dog", "bowl"]),
        ("", []),
    ],
)
def test_extract_mentions_rules(text: str, expected: list[str]) -> None:
    assert categories(text) == expected


@pytest.mark.parametrize(
    ("plural", "wordnet", "inflect", "found"),
    [
        # NLTK's lemmatize returns the shortest WordNet form, the first on a tie: "men" (a WordNet noun) beats "man"
        ("men", "men", "man", []),
        ("vases", "vas", "vase", []),  # "vas" (deferens) is shorter than "vase"
        ("hairdryers", "hairdryers", "hairdryer", []),  # unknown to WordNet: kept as it is
        ("teeth", "teeth", "tooth", []),
        ("buses", "bus", "bus", ["bus"]),
        ("bus", "bus", "bu", ["bus"]),  # inflect mangles singulars ending in s; WordNet knows them
        ("tennis", "tennis", "tenni", []),
        ("skis", "ski", "ski", ["skis"]),
        ("children", "child", "child", ["person"]),
    ],
)
def test_wordnet_lemmas_where_inflect_differs(plural: str, wordnet: str, inflect: str, found: list[str]) -> None:
    assert lemmatize(plural) == wordnet
    assert categories(f"Two {plural}.") == found
    engine = pytest.importorskip("inflect").engine()
    assert (engine.singular_noun(plural) or plural) == inflect


def test_mentions_carry_offsets_into_original_text() -> None:
    text = 'Two Baby Cats near "TEDDY BEARS", and a dog\'s bowl.'
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
    assert s["extraction"] == "words (WordNet lemmas)" and "n_skipped_short" not in s
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


# -- the LLM path ------------------------------------------------------------------------------------------------
def test_extraction_prompt_is_upstreams() -> None:
    assert extraction_prompt_template() == UPSTREAM_PROMPT


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('["dog", "frisbee"]', ["dog", "frisbee"]),
        ('Objects:\n["dog", "frisbee"]', ["dog", "frisbee"]),  # upstream: the last line
        ('```json\n["dog"]\n```', ["dog"]),
        ("[]", []),
        ("()", []),  # what the prompt calls an empty JSON list
    ],
)
def test_parse_object_list(reply: str, expected: list[str]) -> None:
    assert parse_object_list(reply) == expected


@pytest.mark.parametrize("reply", ["a dog and a frisbee", "[1, 2]", '["dog", null]'])
def test_parse_object_list_rejects(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_object_list(reply)


@pytest.mark.parametrize(
    ("word", "lemma"),
    [("men", "man"), ("teeth", "tooth"), ("vases", "vase"), ("glasses", "glass"), ("buses", "bus"),
     ("bus", "bus"), ("glass", "glass"), ("hairdryers", "hairdryer"), ("people", "people"), ("dogs", "dog")],
)
def test_noun_lemmas_follow_spacys_rules(word: str, lemma: str) -> None:
    assert noun_lemma(word) == lemma


@pytest.mark.parametrize(
    ("objects", "terms", "found"),
    [
        (["dog collar"], ["dog collar"], []),  # a noun compound counts only as a whole
        (["baseball player"], ["baseball player"], []),
        (["pizza slice", "slice of pizza"], ["pizza slice", "slice", "pizza"], ["pizza"]),
        (["men", "young man"], ["man"], ["person"]),  # de-duplicated per answer
        (["red car", "orange cat", "sleeping dog", "wooden chair"], ["car", "cat", "dog", "chair"],
         ["car", "cat", "dog", "chair"]),
        (["teddy bears", "baby elephants", "wine glasses"], ["teddy bear", "elephant", "wine glass"],
         ["teddy bear", "elephant", "wine glass"]),
        (["man with teddy bear"], ["teddy bear"], ["teddy bear"]),  # upstream: phrases first, then nothing else
        (["cell phone case"], ["cell phone"], ["cell phone"]),
        (["person holding umbrella"], ["person", "umbrella"], ["person", "umbrella"]),
        (["toilet", "seat"], ["toilet", "seat"], ["toilet"]),
        (["vases", "hairdryers"], ["vase", "hairdryer"], ["vase", "hair drier"]),
    ],
)
def test_refine_objects_lemmas_and_compounds(objects: list[str], terms: list[str], found: list[str]) -> None:
    assert refine_objects(objects, COCO) == terms
    assert [m.category for m in terms_to_mentions(terms, COCO)] == found


LLM_ANSWERS = {
    "a": "A baseball player and two dogs play with frisbees near a parked car.",
    "b": "A cat sits on the toilet seat beside the sink.",
    "c": "Two men share a bowl of broccoli with two teddy bears.",
    "d": "A passenger train.",  # 3 words: not sent
    "e": "",
    "f": "A man in a red shirt throws a frisbee to the dog.",
    "x": "A dog runs on the beach today.",  # unknown image
}
LLM_IMAGES = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 4, "f": 1, "x": 999}
QUESTIONS = {k: f"Question {k}: what is in this picture?" for k in LLM_ANSWERS}
REPLIES = {
    "a": '["baseball player", "dogs", "frisbees", "car", "dog collar"]',
    "b": "I cannot list them.",
    "c": '["men", "bowl", "broccoli", "teddy bears", "bowls"]',
    "f": '```json\n["man", "red shirt", "frisbee", "dog"]\n```',
}


def answer_in(prompt: str) -> str:
    return prompt.split("[Start of Examiner's Answer]\n\n", 1)[1].split("\n\n[End of Examiner's Answer]", 1)[0]


def test_llm_extraction_as_upstream(openai_server: FakeOpenAI, coco_dir: Path) -> None:
    def extract(content: str) -> str:
        if "[Start of Examiner's Answer]" not in content:
            return "Sorry, still no list."  # reply to the nudge
        return REPLIES[next(k for k, a in LLM_ANSWERS.items() if a and a == answer_in(content))]

    openai_server.responder = extract
    judge = JudgeClient(JUDGE_MODEL, base_url=openai_server.url, max_retries=0)  # temperature 0: 0.2 is per call
    result = evaluate_chair(LLM_ANSWERS, coco_dir, image_ids=LLM_IMAGES, judge=judge, method="llm",
                            questions=QUESTIONS)
    s = result.summary
    assert s["extraction"] == f"llm ({JUDGE_MODEL})" and s["judge"]["judge_model"] == JUDGE_MODEL
    assert s["extraction_temperature"] == 0.2 and s["extraction_max_tokens"] == 512
    assert (s["n_scored"], s["n_skipped_short"], s["n_extraction_failed"], s["n_missing_gt"]) == (5, 2, 1, 1)
    # a: dog, frisbee, car (car hallucinated; "baseball player" and "dog collar" are no person or dog);
    # c: person (men), bowl, broccoli, teddy bear (person, teddy bear hallucinated); f: person, frisbee, dog
    assert s["CHAIRs"] == pytest.approx(2 / 5)
    assert s["CHAIRs_refine"] == pytest.approx(2 / 3)
    assert s["CHAIRi"] == pytest.approx(3 / 10)
    assert s["recall"] == pytest.approx(7 / 11)
    by_id = {d.id: d for d in result.details}
    assert by_id["a"].objects == ["dog", "frisbee", "car"]
    assert by_id["a"].extracted_terms == ["baseball player", "dog", "frisbee", "car", "dog collar"]
    assert sorted(m.category for m in by_id["c"].hallucinated) == ["person", "teddy bear"]
    assert by_id["f"].objects == ["person", "frisbee", "dog"]
    assert by_id["d"].status == "skipped_short" and by_id["d"].objects == [] and by_id["e"].status == "empty"
    assert by_id["b"].status == "extraction_failed" and "unparseable" in by_id["b"].error
    assert by_id["x"].status == "missing_gt"
    json.dumps(result.to_dict())

    # what went over the wire: upstream's prompt as the one system message, temperature 0.2, max_tokens 512
    first = [r for r in openai_server.requests if len(r["messages"]) == 1]
    sent = sorted(answer_in(r["messages"][0]["content"]) for r in first)
    assert sent == sorted(LLM_ANSWERS[k] for k in "abcf")  # not the short, empty or unknown-image ones
    for r in first:
        key = next(k for k in "abcf" if LLM_ANSWERS[k] == answer_in(r["messages"][0]["content"]))
        expected = UPSTREAM_PROMPT.replace("{question}", QUESTIONS[key]).replace("{answer}", LLM_ANSWERS[key])
        assert r["messages"] == [{"role": "system", "content": expected}]
    assert len(openai_server.requests) == 5  # + one nudge for "b"
    assert all(r["temperature"] == 0.2 and r["max_tokens"] == 512 and r["model"] == JUDGE_MODEL
               for r in openai_server.requests)

    words = evaluate_chair(LLM_ANSWERS, coco_dir, image_ids=LLM_IMAGES, method="words").summary
    assert words["extraction"] == "words (WordNet lemmas)" and len(openai_server.requests) == 5
    assert words["n_scored"] == 6  # the word match reads every answer with ground truth


def test_llm_judge_errors_are_counted_not_scored(openai_server: FakeOpenAI, coco_dir: Path) -> None:
    openai_server.script.extend([500])
    judge = JudgeClient(JUDGE_MODEL, base_url=openai_server.url, max_retries=0, temperature=0.2)
    answers = {1: "A man throws a frisbee to his dog in the park.", 4: "A train."}
    result = evaluate_chair(answers, coco_dir, judge=judge, questions={1: "Describe the image."})
    s = result.summary
    assert (s["n_extraction_failed"], s["n_scored"], s["n_skipped_short"]) == (1, 1, 1)
    assert s["CHAIRs"] == 0.0 and s["CHAIRi"] is None  # the failed answer is not "no objects"
    failed = next(d for d in result.details if d.status == "extraction_failed")
    assert failed.id == 1 and failed.error.startswith("judge error")


def test_llm_method_needs_a_judge_and_the_questions(openai_server: FakeOpenAI, coco_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs a judge"):
        evaluate_chair({1: "A dog."}, coco_dir, method="llm")
    with pytest.raises(ValueError, match="method must be"):
        evaluate_chair({1: "A dog."}, coco_dir, method="spacy")
    judge = JudgeClient(JUDGE_MODEL, base_url=openai_server.url, max_retries=0, temperature=0.2)
    with pytest.raises(ValueError, match=r"`questions` lacks \[1\]"):
        evaluate_chair({1: "A man throws a frisbee to his dog."}, coco_dir, judge=judge)
    words = evaluate_chair({1: "A man throws a frisbee to his dog."}, coco_dir, judge=judge, method="words")
    assert words.summary["extraction"] == "words (WordNet lemmas)"
    assert openai_server.requests == []
