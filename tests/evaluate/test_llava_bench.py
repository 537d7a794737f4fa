"""LLaVA-Bench: score parsing, relative scores by hand, end to end through a local judge server."""

from __future__ import annotations

import re

import pytest
from conftest import FIXTURES, FakeOpenAI

from rlhfv_nb.evaluate.benchmarks import read_jsonl
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.evaluate.llava_bench import (
    evaluate_llava_bench,
    load_rules,
    parse_scores,
    review_prompt,
    summarize,
)

QUESTIONS = read_jsonl(FIXTURES / "qa_questions.jsonl")
REFERENCES = read_jsonl(FIXTURES / "qa_gpt4_answer.jsonl")
CONTEXTS = read_jsonl(FIXTURES / "caps_boxes.jsonl")


@pytest.mark.parametrize(("text", "pair"), [("8 6\nGood.", (8.0, 6.0)), ("7, 9.5\n", (7.0, 9.5)),
                                            ("  10 10 ", (10.0, 10.0))])
def test_parse_scores(text: str, pair: tuple[float, float]) -> None:
    assert parse_scores(text) == pair


@pytest.mark.parametrize("text", ["Assistant 1: 8\nAssistant 2: 6", "8\n6", "eight six"])
def test_parse_scores_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_scores(text)


def test_rules_are_packaged() -> None:
    rules = load_rules()
    assert {"conv", "detail", "complex"} <= set(rules) and rules["conv"]["role"] == "Assistant"


def test_review_prompt_layout() -> None:
    prompt = review_prompt(CONTEXTS[0], QUESTIONS[0], "ref answer", "model answer", load_rules()["conv"])
    assert prompt.startswith(
        "[Context]\nA man throws a frisbee to his dog in a park.\nTwo dogs chase a flying disc."
        "\n\nperson: [0.1, 0.2, 0.4, 0.9]\ndog: [0.5, 0.6, 0.7, 0.9]\n\n[Question]\n"
    )
    assert "[Assistant 1]\nref answer\n\n[End of Assistant 1]\n\n[Assistant 2]\nmodel answer\n\n" in prompt
    assert "[System]\nWe would like to request your feedback" in prompt


def test_summarize_hand_computed() -> None:
    s = summarize(["conv", "conv", "detail", "complex", "complex"], [(8, 6), (6, 6), (10, 5), (8, 8), None])
    assert s["conv"] == {"reference": 7, "model": 6, "relative": pytest.approx(600 / 7), "n": 2}
    assert s["detail"]["relative"] == pytest.approx(50.0)
    assert s["complex"]["relative"] == pytest.approx(100.0) and s["complex"]["n"] == 1
    assert s["all"]["relative"] == pytest.approx(100 * (25 / 4) / (32 / 4)) and s["failed"] == [4]


def test_evaluate_end_to_end(openai_server: FakeOpenAI) -> None:
    def review(prompt: str) -> str:
        answer = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", prompt, re.S)
        if answer is None:
            return "Assistant 1 gets 8 and assistant 2 gets 4."  # reply to the nudge: still malformed
        return {"good": "8 8\nEqual.", "weak": "8 4\nWeaker.", "odd": "Both are fine."}[answer.group(1)]

    openai_server.responder = review
    judge = JudgeClient("judge-test", base_url=openai_server.url, max_retries=0)
    answers = {0: "good", 1: "weak", 2: "good", 3: "odd"}
    out = evaluate_llava_bench(QUESTIONS, REFERENCES, CONTEXTS, answers, judge)
    s = out["summary"]
    assert s["conv"]["relative"] == pytest.approx(100.0) and s["conv"]["n"] == 1
    assert s["detail"]["relative"] == pytest.approx(50.0) and s["complex"]["relative"] == pytest.approx(100.0)
    assert s["all"]["relative"] == pytest.approx(100 * (20 / 3) / 8)
    assert s["failed"] == [3] and "unparseable" in out["reviews"][3]["error"]
    assert openai_server.requests[0]["messages"][0]["role"] == "system"
    assert s["judge"]["judge_model"] == "judge-test"
    with pytest.raises(ValueError, match="question row 0 .*no model answer"):
        evaluate_llava_bench(QUESTIONS, REFERENCES, CONTEXTS, {}, judge)
