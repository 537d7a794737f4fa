"""The AI feedback of a world round measured against the truth the world knows: how often the labeler's verdict on
a claim is right, and how often a pair's chosen answer is in truth no better than its rejected one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfv_nb.rlaifv.claims import WorldClaims
from rlhfv_nb.rlaifv.scoring import ScoredAnswer
from rlhfv_nb.world import Scene


def true_score(answer: ScoredAnswer, scene: Scene, claims: WorldClaims) -> int:
    """Minus the answer's claims that are false of the scene: its score under a labeler that knows the truth."""
    return -sum(not claims.parse(verdict.claim).holds(scene, claims.cfg) for verdict in answer.claims)


def audit_feedback(scenes: Sequence[Scene], scored: Sequence[Sequence[ScoredAnswer]],
                   pairs: Sequence[Sequence[tuple[int, int]]], claims: WorldClaims) -> dict[str, Any]:
    """The labeler and the pairs of one round against the truth of its `scenes` (prompt i shows scenes[i]).

    - `labeler_accuracy`: the share of distinct (prompt, question) asked whose verdict (rejected or not) matches
      `WorldClaim.holds`; `false_claims` is how many of them are in truth false.
    - `wrongly_ordered`: the share of pairs whose chosen answer has a lower true score than the rejected one;
      `tied_in_truth` the share whose true scores are equal (a preference the truth does not support).
    - `true_score_mean`: the candidates' mean true score (minus false claims per answer), the policy's quality.
    """
    verdicts: dict[tuple[int, str], bool] = {}
    right = false = 0
    for prompt, answers in enumerate(scored):
        for answer in answers:
            for verdict in answer.claims:
                if (prompt, verdict.question) in verdicts:
                    continue
                holds = claims.parse(verdict.claim).holds(scenes[prompt], claims.cfg)
                verdicts[prompt, verdict.question] = holds
                right += holds != verdict.rejected
                false += not holds
    truth = [[true_score(answer, scene, claims) for answer in answers] for scene, answers in zip(scenes, scored)]
    ordered = [truth[prompt][chosen] - truth[prompt][rejected]
               for prompt, chosen_rejected in enumerate(pairs) for chosen, rejected in chosen_rejected]
    candidates = [score for scores in truth for score in scores]
    return {
        "questions": len(verdicts),
        "false_claims": false,
        "labeler_accuracy": right / len(verdicts) if verdicts else None,
        "pairs": len(ordered),
        "wrongly_ordered": sum(gap < 0 for gap in ordered) / len(ordered) if ordered else None,
        "tied_in_truth": sum(gap == 0 for gap in ordered) / len(ordered) if ordered else None,
        "true_score_mean": sum(candidates) / len(candidates) if candidates else None,
    }
