"""MMHal-Bench: rating parsing, aggregation by hand, end to end through a local judge server."""

from __future__ import annotations

import json
import re

import pytest
from conftest import FIXTURES, FakeOpenAI

from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.evaluate.mmhal import evaluate_mmhal, judge_prompt, parse_rating, summarize

ITEMS = json.loads((FIXTURES / "mmhal_template.json").read_text())
TYPES = [item["question_type"] for item in ITEMS]


@pytest.mark.parametrize(("text", "rating"), [("Fine.\nRating: 5", 5), ("rating: 0, not informative", 0),
                                              ("**Rating:** 4", 4), ("Rating: 6 ... Rating: 6", 6)])
def test_parse_rating(text: str, rating: int) -> None:
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text", ["Good answer.", "Rating: 2 or Rating: 5", "Rating: 9"])
def test_parse_rating_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rating(text)


def test_prompt_fills_the_official_template() -> None:
    prompt = judge_prompt({**ITEMS[0], "image_content": ["Fire hydrant", "Tree"]}, "It is yellow.")
    assert "### Image Contents\nFire hydrant, Tree\n\n### Question\nWhat color is the fire hydrant" in prompt
    assert prompt.rstrip().endswith("### LMM Response to Evaluate\nIt is yellow.")
    assert "- Rating: 6, very informative with good analysis or reasoning, no hallucination" in prompt


def test_summarize_hand_computed() -> None:
    ratings = [6, 5, 4, 3, 2, 1, 0, None, 6, 6, 6, 6, 0, 0, 0, 0]
    s = summarize(ratings, TYPES)
    rated = [r for r in ratings if r is not None]  # 15 ratings, sum 45
    assert s["score"] == pytest.approx(45 / 15)
    assert s["hallucination_rate"] == pytest.approx(7 / 15)  # 2, 1, 0 and four 0s
    informative = [3, 2, 1, 0, 2, 1, 0, 3, 3, 3, 3, 0, 0, 0, 0]
    assert s["informativeness"] == pytest.approx(sum(informative) / 15 / 3 * 100)
    assert len(rated) == s["n_rated"] == 15 and s["failed"] == [7]
    assert s["per_type"] == {"attribute": 6, "adversarial": 5.5, "comparison": 5, "counting": 4.5,
                             "relation": 1, "environment": 0.5, "holistic": 0, "other": 0}


def test_evaluate_end_to_end(openai_server: FakeOpenAI) -> None:
    def rate(prompt: str) -> str:
        marker = re.search(r"RATE=(\d)", prompt)
        return f"The response is fine.\nRating: {marker.group(1)}" if marker else "I am unsure."

    openai_server.responder = rate
    judge = JudgeClient("judge-test", base_url=openai_server.url, max_retries=0)
    out = evaluate_mmhal(ITEMS, judge)
    s = out["summary"]
    assert s["failed"] == [7] and out["items"][7]["rating"] is None
    assert "unparseable" in out["items"][7]["error"]
    assert len(out["items"][7]["judge_replies"]) == 2  # retried once with a nudge
    assert s["score"] == pytest.approx(3.0) and s["hallucination_rate"] == pytest.approx(3 / 7)
    assert s["informativeness"] == pytest.approx(9 / 7 / 3 * 100)
    assert s["per_type"]["other"] is None and s["judge"]["judge_model"] == "judge-test"
    assert all(row["judge_model"] == "judge-test" for row in out["items"])
    with pytest.raises(ValueError, match="2 answers for 8"):
        evaluate_mmhal(ITEMS, judge, answers=["a", "b"])
