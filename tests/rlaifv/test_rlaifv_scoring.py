"""Scores: minus the number of claims the labeler rejects, on hand-made answers and with a tiny local labeler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.data import encode_image
from rlhfv_nb.rlaifv.claims import WorldClaims
from rlhfv_nb.rlaifv.labeler import LocalLabeler
from rlhfv_nb.rlaifv.scoring import ClaimVerdict, score_answers
from rlhfv_nb.world import WorldConfig, make_fresh_scenes, render

CFG = WorldConfig()


class TableLabeler:
    """P(yes) looked up per (image, question); records what it is asked."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        self.asked += list(zip(images, questions))
        return [self.table[image, question] for image, question in zip(images, questions)]


TABLE = {
    ("img0", "Is there a red ball in the top left?"): 0.9,
    ("img0", "Is there a blue star in the bottom right?"): 0.2,
    ("img0", "Is there a green tent in the top right?"): 0.5,  # not below 0.5: accepted
    ("img1", "Is there a red ball in the top left?"): 0.1,
    ("img1", "Is there a blue star in the bottom right?"): 0.3,
    ("img1", "Is there a green tent in the top right?"): 0.49,
}
CANDIDATES = [
    ["A red ball is in the top left. There is a blue star in the bottom right.",
     "A red ball is in the top left. In the top right, there is a green tent.",
     "I see nothing."],
    ["There is a red ball in the top left.",
     "A blue star is in the bottom right, and a green tent is in the top right."],
]


def test_scores_are_minus_the_rejected_claims() -> None:
    labeler = TableLabeler(TABLE)
    scored = score_answers(["img0", "img1"], CANDIDATES, WorldClaims(CFG), labeler)
    assert [[answer.score for answer in answers] for answers in scored] == [[-1, 0, 0], [-1, -2]]
    assert [a.answer for a in scored[0]] == CANDIDATES[0]
    assert scored[0][0].claims == (
        ClaimVerdict("There is a red ball in the top left.", "Is there a red ball in the top left?", 0.9, False),
        ClaimVerdict("There is a blue star in the bottom right.", "Is there a blue star in the bottom right?", 0.2,
                     True),
    )
    assert scored[0][2].claims == ()  # no claim: nothing rejected
    assert len(labeler.asked) == len(set(labeler.asked)) == 6  # the red ball of img0 asked once for two answers
    assert scored[1][1].to_dict() == {
        "answer": CANDIDATES[1][1], "score": -2,
        "claims": [{"claim": "There is a blue star in the bottom right.",
                    "question": "Is there a blue star in the bottom right?", "p_yes": 0.3, "rejected": True},
                   {"claim": "There is a green tent in the top right.",
                    "question": "Is there a green tent in the top right?", "p_yes": 0.49, "rejected": True}]}


def test_reject_below_sets_the_bar() -> None:
    scored = score_answers(["img0"], CANDIDATES[:1], WorldClaims(CFG), TableLabeler(TABLE), reject_below=0.95)
    assert [answer.score for answer in scored[0]] == [-2, -2, 0]


def test_one_image_per_prompt() -> None:
    with pytest.raises(ValueError, match="1 images for 2 prompts"):
        score_answers(["img0"], CANDIDATES, WorldClaims(CFG), TableLabeler(TABLE))


def test_scores_with_a_tiny_local_labeler(tiny_vlm) -> None:
    labeler = LocalLabeler.load(tiny_vlm, ModelConfig(), batch_size=3)
    images = [encode_image(render(scene, CFG)) for scene in make_fresh_scenes(CFG, 2, seed=7)]
    p_yes = sorted(v.p_yes for answers in score_answers(images, CANDIDATES, WorldClaims(CFG), labeler)
                   for answer in answers for v in answer.claims)
    below, above = p_yes[len(p_yes) // 2 - 1], p_yes[len(p_yes) // 2]
    assert above - below > 1e-4
    bar = (below + above) / 2  # the random model's median P(yes): some claims fall below, some do not
    scored = score_answers(images, CANDIDATES, WorldClaims(CFG), labeler, reject_below=bar)
    for image, answers in zip(images, scored):
        for answer in answers:
            alone = labeler.p_yes([image] * len(answer.claims), [v.question for v in answer.claims])
            assert [v.p_yes for v in answer.claims] == pytest.approx(alone, abs=1e-5)
            assert answer.score == -sum(p < bar for p in alone)
    assert {v.rejected for answers in scored for answer in answers for v in answer.claims} == {True, False}
