"""LLaVA-Bench (COCO qa90): an LLM judge scores the model against GPT-4 reference answers.

Assistant 1 is the reference, assistant 2 the model (as upstream). Relative score per category and
overall = 100 * mean(model score) / mean(reference score). Reviews whose first line does not hold
two scores (after one nudged retry) are reported in `failed` and left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from statistics import mean

from rlhfv_nb.evaluate.judge import JudgeClient

CATEGORIES = ("conv", "detail", "complex")
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


def evaluate_llava_bench(
    questions: Sequence[dict],
    references: Sequence[dict],
    contexts: Sequence[dict],
    answers: Mapping[int, str],
    judge: JudgeClient,
) -> dict:
    """Review each question's model answer (`answers[question_id]`) against the reference answer.

    `questions`/`references`/`contexts` are the qa90 files' rows (see `benchmarks.fetch_llava_bench`).
    Upstream judged at temperature 0.2 (set it on the client). Returns `{"summary": ..., "reviews": [...]}`;
    the summary carries the judge usage.
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
        prompts.append([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}])
    judged = judge.ask_many(prompts, parse_scores, SCORES_NUDGE)
    reviews = [
        {"question_id": q["question_id"], "category": q["category"], "scores": j.value,
         "judge_model": j.model, "judge_replies": list(j.replies), "error": j.error}
        for q, j in zip(questions, judged, strict=True)
    ]
    summary = summarize([q["category"] for q in questions], [j.value for j in judged])
    summary["judge"] = judge.usage()
    return {"summary": summary, "reviews": reviews}
