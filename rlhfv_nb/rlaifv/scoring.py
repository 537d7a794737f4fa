"""An answer's score, as RLAIF-V counts it: minus the number of its claims the labeler rejects.

A claim is rejected when the labeler's P(yes) for its question is below `reject_below` (0.5: the labeler leans to
"no"). An answer without claims scores 0, like one whose claims all hold. Each (image, question) is labelled once
per call, however many candidates of that prompt make the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rlhfv_nb.rlaifv.claims import ClaimExtractor
from rlhfv_nb.rlaifv.labeler import Labeler

REJECT_BELOW = 0.5


@dataclass(frozen=True)
class ClaimVerdict:
    """One claim of an answer, its question, and the labeler's P(yes)."""

    claim: str
    question: str
    p_yes: float
    rejected: bool


@dataclass(frozen=True)
class ScoredAnswer:
    """An answer with the verdict on each of its claims."""

    answer: str
    claims: tuple[ClaimVerdict, ...]

    @property
    def score(self) -> int:
        """Minus the number of rejected claims (0 at best)."""
        return -sum(verdict.rejected for verdict in self.claims)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: answer, score and the per-claim details."""
        return {"answer": self.answer, "score": self.score, "claims": [asdict(v) for v in self.claims]}


def score_answers(
    images: Sequence[Any],
    candidates: Sequence[Sequence[str]],
    extractor: ClaimExtractor,
    labeler: Labeler,
    reject_below: float = REJECT_BELOW,
) -> list[list[ScoredAnswer]]:
    """Every candidate answer of every prompt scored: `candidates[i]` are prompt i's answers about `images[i]`.

    Answers are split into claims in one batch, each distinct claim is turned into a question once, and each
    distinct (prompt, question) is labelled once, all prompts in one labeler call.
    """
    if len(images) != len(candidates):
        raise ValueError(f"{len(images)} images for {len(candidates)} prompts' candidates: need one image per prompt")
    answers = [(prompt, answer) for prompt, answers in enumerate(candidates) for answer in answers]
    claims = extractor.split([answer for _, answer in answers])
    distinct = list(dict.fromkeys(claim for found in claims for claim in found))
    question_of = dict(zip(distinct, extractor.questions(distinct)))
    asked = list(dict.fromkeys((prompt, question_of[claim])
                               for (prompt, _), found in zip(answers, claims) for claim in found))
    p_yes = labeler.p_yes([images[prompt] for prompt, _ in asked], [question for _, question in asked])
    label = dict(zip(asked, p_yes))
    scored: list[list[ScoredAnswer]] = [[] for _ in candidates]
    for (prompt, answer), found in zip(answers, claims):
        verdicts = []
        for claim in found:
            p = label[prompt, question_of[claim]]
            verdicts.append(ClaimVerdict(claim, question_of[claim], p, p < reject_below))
        scored[prompt].append(ScoredAnswer(answer, tuple(verdicts)))
    return scored
