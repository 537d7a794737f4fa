"""MMHal-Bench (Sun et al., 2023): an LLM judge rates each answer 0..6 against image contents and a reference.

Summary (as RLHF-V's scripts): `score` = mean rating; `hallucination_rate` = share of ratings < 3
(a fraction); `informativeness` = mean of (s - 3 if s >= 3 else s) / 3 * 100 (percent); `per_type`
= mean rating per question type, grouped by question order `i % 8`. Items whose judge reply cannot
be parsed (after one nudged retry) are reported in `failed` and left out, never scored 0.

The judge runs at temperature 0.0, as upstream: RLHF-V's eval/eval_gpt_mmhal.py and the MMHal-Bench
authors' LLaVA-RLHF Eval/eval_gpt_mmhal.py both call GPT-4 with `temperature=0.0`.
With `repeats` N > 1 every item is judged N times (RLAIF-V averages 3+ GPT-4 runs): each metric is
the mean over the N runs, `<metric>_std` the sample std over them (None for one run), and `runs`
holds each run's own summary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from statistics import mean

from rlhfv_nb.evaluate.judge import JudgeClient, Judged, mean_std

N_TYPES = 8
TEMPERATURE = 0.0  # upstream eval_gpt_mmhal.py (RLHF-V, LLaVA-RLHF)
METRICS = ("score", "hallucination_rate", "informativeness")
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


def summarize_runs(runs: Sequence[Sequence[int | None]], type_names: Sequence[str] | None = None) -> dict:
    """`summarize` over N repeated judge runs (ratings in question order, one list per run).

    Each metric and `per_type` entry: mean over the runs that rated anything; `<metric>_std` and
    `per_type_std`: sample std over them (None with one run). `n_rated`: the fewest any run rated;
    `failed`: items some run could not rate; `runs`: every run's own `summarize`.
    """
    if not runs:
        raise ValueError("no judge runs to summarise")
    per_run = [summarize(ratings, type_names) for ratings in runs]
    out: dict = {}
    for metric in METRICS:
        out[metric], out[f"{metric}_std"] = mean_std([s[metric] for s in per_run])
    names = list(per_run[0]["per_type"])
    stats = {name: mean_std([s["per_type"][name] for s in per_run]) for name in names}
    failed = sorted(set().union(*(s["failed"] for s in per_run)))
    out.update(
        per_type={name: m for name, (m, _) in stats.items()},
        per_type_std={name: sd for name, (_, sd) in stats.items()},
        n_items=per_run[0]["n_items"],
        n_rated=min(s["n_rated"] for s in per_run),
        failed=failed,
        n_failed=len(failed),
        repeats=len(per_run),
        runs=per_run,
    )
    return out


def evaluate_mmhal(
    items: Sequence[dict],
    judge: JudgeClient,
    answers: Sequence[str] | None = None,
    repeats: int = 1,
    temperature: float | None = TEMPERATURE,
) -> dict:
    """Judge every answer (`answers`, else each item's `model_answer`) `repeats` times and summarise.

    `temperature`: upstream's 0.0 (None: the client's). Returns `{"summary": ..., "items": [...]}`;
    each item row carries its mean `rating`, the per-run `ratings`, the first `error` and every
    run's judgment (rating, judge model, replies, error); the summary (`summarize_runs`) also counts
    failed judgments (`n_failed_judgments`, of which `n_unparsed` had replies that never parsed) and
    carries the judge usage.
    """
    if answers is None:
        answers = [item.get("model_answer", "") for item in items]
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers for {len(items)} MMHal-Bench items")
    pairs = zip(items, answers, strict=True)
    prompts = [[{"role": "user", "content": judge_prompt(item, ans)}] for item, ans in pairs]
    runs = judge.ask_runs(prompts, parse_rating, RATING_NUDGE, repeats, temperature=temperature)
    rows = [
        {"index": i, "question_type": item["question_type"], "question": item["question"], "answer": ans,
         **_item_outcome([run[i] for run in runs])}
        for i, (item, ans) in enumerate(zip(items, answers, strict=True))
    ]
    summary = summarize_runs([[j.value for j in run] for run in runs],
                             [item["question_type"] for item in items[:N_TYPES]])
    judgments = [j for run in runs for j in run]
    summary["n_failed_judgments"] = sum(not j.ok for j in judgments)
    summary["n_unparsed"] = sum(j.unparsed for j in judgments)
    summary["judge"] = judge.usage()
    return {"summary": summary, "items": rows}


def _item_outcome(judged: Sequence[Judged[int]]) -> dict:
    """One item's ratings over the runs: mean rating, per-run ratings, first error, every judgment."""
    rating, _ = mean_std([j.value for j in judged])
    errors = [j.error if len(judged) == 1 else f"repeat {r}: {j.error}" for r, j in enumerate(judged) if j.error]
    return {
        "rating": rating,
        "ratings": [j.value for j in judged],
        "judge_model": judged[0].model,
        "error": errors[0] if errors else None,
        "judgments": [{"repeat": r, "rating": j.value, "judge_model": j.model, "judge_replies": list(j.replies),
                       "error": j.error} for r, j in enumerate(judged)],
    }
