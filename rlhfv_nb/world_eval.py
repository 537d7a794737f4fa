"""Held-out evaluation on the synthetic world with the same CHAIR and POPE code as the real benchmarks.

Description prompts are scored by CHAIR against each scene's known objects (vocabulary and synonyms
from the world); existence questions by the POPE metrics; colour, count and "what is in the top left?"
(cell) questions by exact match.
"""

from __future__ import annotations

import json
from typing import Any

from rlhfv_nb.config import Config
from rlhfv_nb.data import read_parquet
from rlhfv_nb.evaluate.chair import ChairResult, ChairVocabulary, score_responses
from rlhfv_nb.evaluate.pope import score_answers
from rlhfv_nb.world import Scene, same_answer


def world_vocabulary(cfg: Config) -> ChairVocabulary:
    """The world's CHAIR vocabulary, as written by stage 01."""
    text = cfg.layout.world_synonyms.read_text()
    return ChairVocabulary.from_synonyms_text(text, name="synthetic-world")


def eval_items(cfg: Config) -> list[dict[str, Any]]:
    """Held-out items (`<run>/data/eval.parquet`), optionally limited to the first `evaluation.limit` images."""
    rows = [dict(r, image=r["image"]["bytes"], id=r["uid"])
            for r in read_parquet(cfg.layout.eval_rows)]
    if cfg.evaluation.limit:
        images = set(list(dict.fromkeys(r["image_id"] for r in rows))[: cfg.evaluation.limit])
        rows = [r for r in rows if r["image_id"] in images]
    return rows


def score_world(
    items: list[dict[str, Any]], answers: dict[str, str], vocab: ChairVocabulary
) -> tuple[dict, ChairResult]:
    """CHAIR on descriptions, POPE metrics on existence questions, accuracy on colour/count/cell questions."""
    describe = [i for i in items if i["qtype"] == "describe"]
    chair = score_responses(
        {i["image_id"]: answers[i["id"]] for i in describe},
        {i["image_id"]: Scene.from_dict(json.loads(i["scene"])).kinds for i in describe},
        vocab,
    )
    exists = [{"question_id": i["id"], "label": i["label"]} for i in items if i["qtype"] == "exists"]
    pope = score_answers(exists, answers)
    summary = {"chair": chair.summary, "pope": pope}
    for qtype in ("color", "count", "cell"):
        asked = [i for i in items if i["qtype"] == qtype]
        if asked:
            right = sum(same_answer(answers[i["id"]], i["answer"]) for i in asked)
            summary[f"{qtype}_accuracy"] = right / len(asked)
    return summary, chair

