"""POPE (Li et al., 2023): yes/no object probing with random, popular and adversarial negatives."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlhfv_nb.evaluate import benchmarks

STRATEGIES = ("random", "popular", "adversarial")
QUESTION_TEMPLATE = "Is there a {} in the image?"
Answers = Mapping[int | str, str | None]  # question_id -> model's free-text answer


def question_text(obj: str, template: str = QUESTION_TEMPLATE) -> str:
    """The probe for `obj`, with "an" before a vowel as in POPE."""
    if obj[:1].lower() in "aeiou":
        template = template.replace(" a ", " an ", 1)
    return template.format(obj)


def _ranked(counts: Counter) -> list[str]:
    """Keys by count, highest first; ties in first-seen order (Counter keeps insertion order)."""
    return [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])]


def build_questions(
    images: Mapping[str, Sequence[str]],
    strategy: str,
    sample_num: int = 3,
    seed: int = 0,
    template: str = QUESTION_TEMPLATE,
) -> list[dict]:
    """POPE questions: per image, its first `sample_num` objects ("yes") each paired with one negative ("no").

    Negatives never occur in the image and never repeat within it. `random`: uniform over all
    objects; `popular`: the most frequent objects of the whole set; `adversarial`: the objects that
    co-occur most often with the paired positive. `popular` and `adversarial` fall back to random
    when their ranking is used up. Images with fewer than `sample_num` objects are skipped.
    Rows: question_id, image, object, text, label.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown POPE strategy {strategy!r}; choose one of {STRATEGIES}")
    rng = random.Random(seed)
    frequency: Counter = Counter()
    co_occur: dict[str, Counter] = defaultdict(Counter)
    for objects in images.values():
        unique = list(dict.fromkeys(objects))
        frequency.update(unique)
        for a in unique:
            co_occur[a].update(b for b in unique if b != a)
    vocabulary = list(frequency)
    popular = _ranked(frequency)
    questions: list[dict] = []

    def add(image: str, obj: str, label: str) -> None:
        questions.append({"question_id": len(questions) + 1, "image": image, "object": obj,
                          "text": question_text(obj, template), "label": label})

    for image, objects in images.items():
        objects = list(dict.fromkeys(objects))
        if len(objects) < sample_num:
            continue
        used = set(objects)
        if len(vocabulary) - len(used) < sample_num:
            raise ValueError(f"image {image!r}: fewer than {sample_num} objects left to use as negatives")
        for positive in objects[:sample_num]:
            add(image, positive, "yes")
            ranking = {"random": [], "popular": popular, "adversarial": _ranked(co_occur[positive])}[strategy]
            negative = next((o for o in ranking if o not in used), None)
            while negative is None or negative in used:
                negative = rng.choice(vocabulary)
            used.add(negative)
            add(image, negative, "no")
    return questions


def images_from_coco(coco_dir: str | Path) -> dict[str, list[str]]:
    """`{file_name: [category, ...]}` from COCO val2014 instances, objects in annotation order."""
    path = benchmarks.coco_annotation_path(coco_dir, "instances_val2014.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {img["id"]: img["file_name"] for img in data["images"]}
    images: dict[str, list[str]] = {files[i]: [] for i in files}
    for ann in data["annotations"]:
        objs = images[files[ann["image_id"]]]
        if names[ann["category_id"]] not in objs:
            objs.append(names[ann["category_id"]])
    return images


def parse_answer(text: str | None) -> tuple[str, bool]:
    """(yes/no, parsed) as POPE's script: first sentence, commas dropped, "No"/"no"/"not" -> no, else yes.

    `parsed` is False when the first sentence has neither a negation nor a "yes": POPE still scores
    it "yes", and it is counted as unparseable.
    """
    first = (text or "").split(".")[0].replace(",", "")
    words = first.split(" ")
    if {"No", "no", "not"} & set(words):
        return "no", True
    return "yes", any(w.lower() == "yes" for w in words)


def score_answers(questions: Sequence[dict], answers: Answers) -> dict:
    """Accuracy, precision, recall, F1 ("yes" is positive), yes-ratio, confusion counts, unparseable count.

    `answers` maps question_id to the model's free text; a missing answer counts as unparseable.
    """
    tp = fp = tn = fn = unparseable = 0
    for i, q in enumerate(questions):
        if q.get("label") not in ("yes", "no"):
            raise ValueError(f"question {i}: field 'label' must be 'yes' or 'no', got {q.get('label')!r}")
        pred, ok = parse_answer(answers.get(q["question_id"]))
        unparseable += not ok
        if pred == "yes":
            tp, fp = (tp + 1, fp) if q["label"] == "yes" else (tp, fp + 1)
        else:
            tn, fn = (tn + 1, fn) if q["label"] == "no" else (tn, fn + 1)
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else None,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n": n,
        "n_unparseable": unparseable,
    }


def evaluate_pope(splits: Mapping[str, tuple[Sequence[dict], Answers]]) -> dict[str, dict]:
    """`score_answers` per split, e.g. `{"random": (questions, answers), "popular": ..., ...}`."""
    return {name: score_answers(qs, ans) for name, (qs, ans) in splits.items()}
