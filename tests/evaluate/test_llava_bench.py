"""LLaVA-Bench: score parsing, relative scores by hand, end to end through a local judge server."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
from conftest import FIXTURES, FakeOpenAI

from rlhfv_nb.evaluate.benchmarks import read_jsonl
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.evaluate.llava_bench import (
    SYSTEM_PROMPT,
    evaluate_llava_bench,
    load_rules,
    parse_scores,
    review_prompt,
    summarize,
    summarize_runs,
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
    assert out["reviews"][3]["scores"] is None and len(out["reviews"][3]["judgments"][0]["judge_replies"]) == 2
    assert (s["n_failed"], s["n_failed_judgments"], s["n_unparsed"], s["repeats"], s["n_items"]) == (1, 1, 1, 1, 4)
    assert s["all"]["relative_std"] is None and [run["all"]["relative"] for run in s["runs"]] == [s["all"]["relative"]]
    assert openai_server.requests[0]["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert {r["temperature"] for r in openai_server.requests} == {0.2}  # upstream LLaVA-Bench judge temperature
    assert s["judge"]["judge_model"] == "judge-test"
    with pytest.raises(ValueError, match="question row 0 .*no model answer"):
        evaluate_llava_bench(QUESTIONS, REFERENCES, CONTEXTS, {}, judge)


CATS = ["conv", "conv", "detail", "complex", "complex"]
RUNS = [[(8, 6), (6, 6), (10, 5), (8, 8), None], [(8, 8), (8, 8), (10, 10), (8, 4), (8, 4)]]


def test_summarize_runs_hand_computed() -> None:
    s = summarize_runs(CATS, RUNS)
    # run 0: conv 100*6/7, detail 50, complex 100, all 100*(25/4)/(32/4); run 1: 100, 100, 50, 100*(34/5)/(42/5)
    expected = {"conv": (600 / 7, 100.0), "detail": (50.0, 100.0), "complex": (100.0, 50.0),
                "all": (100 * 25 / 32, 100 * 34 / 42)}
    for name, (a, b) in expected.items():
        assert s[name]["relative"] == pytest.approx((a + b) / 2), name
        assert s[name]["relative_std"] == pytest.approx(abs(a - b) / math.sqrt(2)), name  # n-1 = 1
        assert [run[name]["relative"] for run in s["runs"]] == pytest.approx([a, b])
    assert s["conv"]["relative"] == pytest.approx(92.857143) and s["conv"]["relative_std"] == pytest.approx(10.101525)
    assert s["all"]["relative"] == pytest.approx(79.538690) and s["all"]["relative_std"] == pytest.approx(1.999260)
    assert (s["conv"]["reference"], s["conv"]["model"]) == (7.5, 7)  # means of (7, 8) and (6, 8)
    assert (s["complex"]["n"], s["all"]["n"], s["failed"], s["n_failed"], s["repeats"]) == (1, 4, [4], 1, 2)
    one = summarize_runs(CATS, RUNS[:1])
    assert one["conv"]["relative"] == pytest.approx(600 / 7) and one["conv"]["relative_std"] is None


def test_evaluate_with_repeats(openai_server: FakeOpenAI) -> None:
    seen: Counter[str] = Counter()
    reviews = {"a": ["8 8", "8 4"], "b": ["8 4", "8 4"], "c": ["10 10", "10 5"], "d": ["6 3", "6 6"]}

    def review(prompt: str) -> str:
        answer = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", prompt, re.S).group(1)
        run = seen[answer]
        seen[answer] += 1
        return reviews[answer][run] + "\nReview."

    openai_server.responder = review
    judge = JudgeClient("judge-test", base_url=openai_server.url, max_retries=0, max_concurrency=1)
    out = evaluate_llava_bench(QUESTIONS, REFERENCES, CONTEXTS, {0: "a", 1: "b", 2: "c", 3: "d"}, judge, repeats=2)
    s = out["summary"]
    # questions: 0 conv, 1 detail, 2 complex, 3 conv
    conv = (100 * (8 + 3) / (8 + 6), 100 * (4 + 6) / (8 + 6))
    assert s["conv"]["relative"] == pytest.approx(sum(conv) / 2)
    assert s["conv"]["relative_std"] == pytest.approx(abs(conv[0] - conv[1]) / math.sqrt(2))
    assert s["detail"]["relative"] == pytest.approx(50.0) and s["detail"]["relative_std"] == pytest.approx(0.0)
    assert s["complex"]["relative"] == pytest.approx(75.0)
    all_runs = (100 * (8 + 4 + 10 + 3) / 32, 100 * (4 + 4 + 5 + 6) / 32)
    assert s["all"]["relative"] == pytest.approx(sum(all_runs) / 2)
    assert (s["repeats"], s["n_failed"], len(openai_server.requests)) == (2, 0, 8)
    assert out["reviews"][0]["scores"] == (8, 6) and [j["scores"] for j in out["reviews"][0]["judgments"]] == [
        (8.0, 8.0), (8.0, 4.0)]
