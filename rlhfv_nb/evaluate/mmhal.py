"""MMHal-Bench (Sun et al., 2023): an LLM judge rates each answer 0..6 against image contents and a reference.

Summary (as RLHF-V's scripts): `score` = mean rating; `hallucination_rate` = share of ratings < 3
(a fraction); `informativeness` = mean of (s - 3 if s >= 3 else s) / 3 * 100 (percent); `per_type`
= mean rating per question type, grouped by question order `i % 8`. Items whose judge reply cannot
be parsed (after one nudged retry) are reported in `failed` and left out, never scored 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from statistics import mean

from rlhfv_nb.evaluate.judge import JudgeClient

N_TYPES = 8
RATING_NUDGE = (
    "Your reply did not contain exactly one rating. Repeat your verdict and end with one line of the form "
    "'Rating: N', where N is an integer from 0 to 6."
)
_RATING = re.compile(r"rating\s*:\s*\**\s*(\d+)", re.IGNORECASE)


@cache
def prompt_template() -> str:
    """The official judge template, with placeholders image_content, question, gt_answer, model_answer."""
    return resources.files("rlhfv_nb.evaluate").joinpath("resources/mmhal_judge_prompt.txt").read_text()


def judge_prompt(item: dict, answer: str) -> str:
    return prompt_template().format(
        image_content=", ".join(item["image_content"]),
        question=item["question"],
        gt_answer=item["gt_answer"],
        model_answer=answer,
    )


def parse_rating(text: str) -> int:
    """The single 'Rating: N' (0..6) in a judge reply; ValueError if none, several, or out of range."""
    found = {int(n) for n in _RATING.findall(text)}
    if len(found) != 1:
        raise ValueError(f"expected one 'Rating: N', found {sorted(found) or 'none'}")
    rating = found.pop()
    if not 0 <= rating <= 6:
        raise ValueError(f"rating {rating} outside 0..6")
    return rating


def summarize(ratings: Sequence[int | None], type_names: Sequence[str] | None = None) -> dict:
    """Aggregate ratings in question order; None marks an item the judge could not rate."""
    rated = [r for r in ratings if r is not None]
    names = list(type_names or [f"type_{k}" for k in range(N_TYPES)])
    per_type = {}
    for k, name in enumerate(names):
        group = [r for i, r in enumerate(ratings) if i % N_TYPES == k and r is not None]
        per_type[name] = mean(group) if group else None
    return {
        "score": mean(rated) if rated else None,
        "hallucination_rate": mean(r < 3 for r in rated) if rated else None,
        "informativeness": mean(r - 3 if r >= 3 else r for r in rated) / 3 * 100 if rated else None,
        "per_type": per_type,
        "n_items": len(ratings),
        "n_rated": len(rated),
        "failed": [i for i, r in enumerate(ratings) if r is None],
    }


def evaluate_mmhal(items: Sequence[dict], judge: JudgeClient, answers: Sequence[str] | None = None) -> dict:
    """Judge every answer (`answers`, else each item's `model_answer`) and summarise.

    Returns `{"summary": ..., "items": [...]}`; each item row carries its rating, the judge replies,
    the judge model and any error; the summary carries the judge usage.
    """
    if answers is None:
        answers = [item.get("model_answer", "") for item in items]
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers for {len(items)} MMHal-Bench items")
    pairs = zip(items, answers, strict=True)
    prompts = [[{"role": "user", "content": judge_prompt(item, ans)}] for item, ans in pairs]
    judged = judge.ask_many(prompts, parse_rating, RATING_NUDGE)
    rows = [
        {"index": i, "question_type": item["question_type"], "question": item["question"], "answer": ans,
         "rating": j.value, "judge_model": j.model, "judge_replies": list(j.replies), "error": j.error}
        for i, (item, ans, j) in enumerate(zip(items, answers, judged, strict=True))
    ]
    summary = summarize([j.value for j in judged], [item["question_type"] for item in items[:N_TYPES]])
    summary["judge"] = judge.usage()
    return {"summary": summary, "items": rows}
