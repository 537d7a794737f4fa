"""LLaVA-Bench (COCO qa90): an LLM judge scores the model against GPT-4 reference answers.

Assistant 1 is the reference, assistant 2 the model (as upstream). Relative score per category and
overall = 100 * mean(model score) / mean(reference score). Reviews whose first line does not hold
two scores (after one nudged retry) are reported in `failed` and left out.

The judge runs at temperature 0.2 with upstream's system prompt, as upstream (LLaVA's
llava/eval/eval_gpt_review_bench.py and RLHF-V's eval/gpt4_grpc.py `get_eval`: `temperature=0.2`).
With `repeats` N > 1 every question is reviewed N times: each category's `relative` is the mean of
the N runs' relative scores, `relative_std` their sample std (None for one run), and `runs` holds
each run's own summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from statistics import mean

from rlhfv_nb.evaluate.judge import JudgeClient, Judged, mean_std

CATEGORIES = ("conv", "detail", "complex")
TEMPERATURE = 0.2  # upstream eval_gpt_review_bench.py
SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
SCORES_NUDGE = (
    "Your first line must contain only the two scores, for Assistant 1 and Assistant 2, "
    "separated by a space. Please answer again in that format."
)


@cache
def load_rules() -> dict[str, dict[str, str]]:
    """The review prompts of rule.json: category -> {"role", "prompt"}."""
    return json.loads(resources.files("rlhfv_nb.evaluate").joinpath("resources/rule.json").read_text())


def review_prompt(context: dict, question: dict, reference: str, answer: str, rule: dict[str, str]) -> str:
    """Judge input: captions and boxes, the question, both answers, then the rule's instructions."""
    captions = "\n".join(context["captions"])
    boxes = "\n".join(f"{inst['category']}: {inst['bbox']}" for inst in context["instances"])
    role = rule["role"]
    return (
        f"[Context]\n{captions}\n\n{boxes}\n\n"
        f"[Question]\n{question['text']}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n"
    )


def parse_scores(text: str) -> tuple[float, float]:
    """The two scores on the first line ("8 9" or "8, 9"); ValueError otherwise."""
    first = text.strip().split("\n")[0].replace(",", " ").split()
    if len(first) != 2:
        raise ValueError(f"first line {first!r} does not hold exactly two scores")
    try:
        return float(first[0]), float(first[1])
    except ValueError as err:
        raise ValueError(f"first line {first!r} is not two numbers") from err


def summarize(categories: Sequence[str], scores: Sequence[tuple[float, float] | None]) -> dict:
    """Per category and `all`: mean reference and model scores, relative score (percent), counts."""
    groups: dict[str, list[tuple[float, float]]] = {c: [] for c in dict.fromkeys([*CATEGORIES, *categories])}
    groups["all"] = []
    for cat, pair in zip(categories, scores, strict=True):
        if pair is not None:
            groups[cat].append(pair)
            groups["all"].append(pair)
    out: dict = {}
    for name, pairs in groups.items():
        if not pairs:
            out[name] = {"reference": None, "model": None, "relative": None, "n": 0}
            continue
        ref, model = mean(p[0] for p in pairs), mean(p[1] for p in pairs)
        out[name] = {"reference": ref, "model": model, "relative": 100 * model / ref if ref else None,
                     "n": len(pairs)}
    out["failed"] = [i for i, pair in enumerate(scores) if pair is None]
    return out


def summarize_runs(categories: Sequence[str], runs: Sequence[Sequence[tuple[float, float] | None]]) -> dict:
    """`summarize` over N repeated review runs (one list of score pairs per run, in question order).

    Per category and `all`: `reference`, `model` and `relative` are means over the runs (a run with no
    scores in a category is left out), `relative_std` the sample std of the relative scores (None with
    one run), `n` the fewest reviews any run scored. `failed`: questions some run could not score;
    `runs`: every run's own `summarize`.
    """
    if not runs:
        raise ValueError("no judge runs to summarise")
    per_run = [summarize(categories, scores) for scores in runs]
    out: dict = {}
    for name in (key for key in per_run[0] if key != "failed"):
        cells = [s[name] for s in per_run]
        relative, relative_std = mean_std([c["relative"] for c in cells])
        out[name] = {"reference": mean_std([c["reference"] for c in cells])[0],
                     "model": mean_std([c["model"] for c in cells])[0],
                     "relative": relative, "relative_std": relative_std, "n": min(c["n"] for c in cells)}
    failed = sorted(set().union(*(s["failed"] for s in per_run)))
    out.update(failed=failed, n_failed=len(failed), n_items=len(categories), repeats=len(per_run), runs=per_run)
    return out


def evaluate_llava_bench(
    questions: Sequence[dict],
    references: Sequence[dict],
    contexts: Sequence[dict],
    answers: Mapping[int, str],
    judge: JudgeClient,
    repeats: int = 1,
    temperature: float | None = TEMPERATURE,
) -> dict:
    """Review each question's model answer (`answers[question_id]`) against the reference, `repeats` times.

    `questions`/`references`/`contexts` are the qa90 files' rows (see `benchmarks.fetch_llava_bench`).
    `temperature`: upstream's 0.2 (None: the client's). Returns `{"summary": ..., "reviews": [...]}`;
    each review carries the mean score pair over the runs, the first error and every run's judgment;
    the summary (`summarize_runs`) also counts failed judgments (`n_failed_judgments`, of which
    `n_unparsed` had replies that never parsed) and carries the judge usage.
    """
    rules = load_rules()
    by_image = {c["image"]: c for c in contexts}
    ref_by_id = {r["question_id"]: r["text"] for r in references}
    prompts = []
    for i, q in enumerate(questions):
        where = f"question row {i} (question_id {q['question_id']})"
        for what, field, table in (("reference answer", "question_id", ref_by_id),
                                   ("model answer", "question_id", answers), ("context", "image", by_image)):
            if q[field] not in table:
                raise ValueError(f"{where}: no {what} for field {field!r} = {q[field]!r}")
        if q["category"] not in rules:
            raise ValueError(f"{where}: field 'category' = {q['category']!r} has no rule in rule.json")
        qid = q["question_id"]
        content = review_prompt(by_image[q["image"]], q, ref_by_id[qid], answers[qid], rules[q["category"]])
        prompts.append([{"role": "user", "content": content}])
    runs = judge.ask_runs(prompts, parse_scores, SCORES_NUDGE, repeats, temperature=temperature,
                          system=SYSTEM_PROMPT)
    reviews = [
        {"question_id": q["question_id"], "category": q["category"], **_review_outcome([run[i] for run in runs])}
        for i, q in enumerate(questions)
    ]
    summary = summarize_runs([q["category"] for q in questions], [[j.value for j in run] for run in runs])
    judgments = [j for run in runs for j in run]
    summary["n_failed_judgments"] = sum(not j.ok for j in judgments)
    summary["n_unparsed"] = sum(j.unparsed for j in judgments)
    summary["judge"] = judge.usage()
    return {"summary": summary, "reviews": reviews}


def _review_outcome(judged: Sequence[Judged[tuple[float, float]]]) -> dict:
    """One question's reviews over the runs: mean score pair, first error, every judgment."""
    pairs = [j.value for j in judged if j.value is not None]
    scores = (mean(p[0] for p in pairs), mean(p[1] for p in pairs)) if pairs else None
    errors = [j.error if len(judged) == 1 else f"repeat {r}: {j.error}" for r, j in enumerate(judged) if j.error]
    return {
        "scores": scores,
        "judge_model": judged[0].model,
        "error": errors[0] if errors else None,
        "judgments": [{"repeat": r, "scores": j.value, "judge_model": j.model, "judge_replies": list(j.replies),
                       "error": j.error} for r, j in enumerate(judged)],
    }
