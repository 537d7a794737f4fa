"""Divide: split an answer into atomic claims, and turn each claim into a yes/no question about the image.

RLAIF-V does this with two fine-tuned Llama-3-8B models (a "split" model and a "question transformation" model).
Two `ClaimExtractor`s stand in for them here:

- `WorldClaims`: rules that follow the synthetic world's sentence structure (`rlhfv_nb.world`), its vocabulary
  and regexes. One claim per mentioned object, with its colour and its place when the sentence says them:
  "A red sphere is in the top left." -> "There is a red ball in the top left." -> "Is there a red ball in the
  top left?". Objects are named by their category (synonyms mapped), counts ("two balls") are read as one
  object, and negations are not understood: the world's descriptions have none.
- `LLMClaims`: any chat model behind an OpenAI-compatible endpoint, through `JudgeClient` (cached, retried,
  cost counted), with this module's prompts (`SPLIT_PROMPT`, `QUESTION_PROMPT`). A local model is used the
  same way once served (vLLM, llama.cpp and the like speak the same API).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rlhfv_nb import world
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.rlaifv.llm import ask_values, user
from rlhfv_nb.world import Scene, WorldConfig
from rlhfv_nb.world_eval import StatedObject, stated_objects

IN_THE_IMAGE = "in the image"  # the place of a claim whose sentence gives none


class ClaimExtractor(Protocol):
    """Splits answers into atomic claims and turns claims into yes/no questions (whose "yes" means true)."""

    def split(self, answers: Sequence[str]) -> list[list[str]]:
        """The atomic claims of every answer, in the answer's order (none for an answer that claims nothing)."""
        ...

    def questions(self, claims: Sequence[str]) -> list[str]:
        """One yes/no question per claim, answered "yes" exactly when the claim is true."""
        ...


# ---------------------------------------------------------------- the synthetic world's rules


@dataclass(frozen=True)
class WorldClaim:
    """One object of the world, as a description claims it: its category, and its colour and place if said."""

    kind: str
    color: str | None = None
    place: str | None = None  # a position phrase of `world.cell_phrase`, e.g. "in the top left"

    @property
    def _phrase(self) -> str:
        noun = f"{self.color} {self.kind}" if self.color else self.kind
        return f"{world._article(noun)} {noun} {self.place or IN_THE_IMAGE}"

    @property
    def text(self) -> str:
        """The claim as a sentence: "There is a red ball in the top left."."""
        return f"There is {self._phrase}."

    @property
    def question(self) -> str:
        """The claim's yes/no question: "Is there a red ball in the top left?"."""
        return f"Is there {self._phrase}?"

    def holds(self, scene: Scene, cfg: WorldConfig) -> bool:
        """Whether the scene has such an object (the truth the labeler is measured against)."""
        return any(
            obj.kind == self.kind
            and self.color in (None, obj.color)
            and self.place in (None, world.place_phrase(obj, cfg))
            for obj in scene.objects
        )


_PLACE_OF_CORE = {phrase.split(" the ", 1)[1]: phrase for phrase in world._PLACES.values()}


def _claim(stated: StatedObject) -> WorldClaim:
    """A mention read by `world_eval.stated_objects` (its place rules) as a claim."""
    return WorldClaim(stated.kind, stated.color, _PLACE_OF_CORE[stated.place] if stated.place else None)


class WorldClaims:
    """The rule-based `ClaimExtractor` of the synthetic world: one claim per mentioned object."""

    def __init__(self, cfg: WorldConfig | None = None) -> None:
        self.cfg = cfg or WorldConfig()

    def claims(self, answer: str) -> list[WorldClaim]:
        """The objects an answer claims, sentence by sentence, each with the colour and place its sentence states
        (`rlhfv_nb.world_eval.stated_objects`, the same reading the attribute-hallucination check uses)."""
        return [_claim(stated) for stated in stated_objects(answer, self.cfg)]

    def parse(self, claim: str) -> WorldClaim:
        """A claim sentence read back; ValueError, naming it, unless it names one object and at most one place."""
        found, n_places = self.claims(claim), len(world._patterns(self.cfg)[1].findall(claim))
        if len(found) != 1 or n_places > 1:
            raise ValueError(f"claim {claim!r} names {len(found)} world objects and {n_places} places; a world "
                             "claim names exactly one object and at most one place")
        return found[0]

    def split(self, answers: Sequence[str]) -> list[list[str]]:
        """Every answer's claims as sentences (`WorldClaim.text`)."""
        return [[claim.text for claim in self.claims(answer)] for answer in answers]

    def questions(self, claims: Sequence[str]) -> list[str]:
        """Every claim's yes/no question (`WorldClaim.question`)."""
        return [self.parse(claim).question for claim in claims]


# ---------------------------------------------------------------- any chat model

SPLIT_SYSTEM = (
    "You split a description of an image into atomic claims. An atomic claim states one checkable fact about "
    "the image (one object, attribute, count, position, action or relation) as a short, self-contained sentence "
    "that names its subject instead of using a pronoun."
)
SPLIT_PROMPT = (
    "Description:\n{answer}\n\nWrite every claim the description makes about the image, one per line, and nothing "
    "else. Write NONE if it makes no claim about the image."
)
SPLIT_NUDGE = "Reply with the claims only, one per line, or NONE."
QUESTION_SYSTEM = "You turn a claim about an image into a yes/no question about the image."
QUESTION_PROMPT = (
    "Claim: {claim}\n\nWrite the yes/no question whose answer is yes exactly when the claim is true of the image. "
    "Reply with the question only."
)
QUESTION_NUDGE = "Reply with one yes/no question on one line, ending with a question mark."
SPLIT_MAX_TOKENS = 512
QUESTION_MAX_TOKENS = 64

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_QUESTION_LABEL = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE)
_NONE = "NONE"


def parse_claims(reply: str) -> list[str]:
    """Claims from a split model's reply: one per line, list bullets and numbers removed, lines that end in ":"
    (a heading such as "Claims:") skipped; "NONE" alone means no claims. ValueError for a reply with no claim
    line, or NONE next to claims."""
    lines = [_BULLET.sub("", line).strip() for line in reply.splitlines()]
    lines = [line for line in lines if line and not line.endswith(":")]
    nones = [line for line in lines if line.rstrip(".").upper() == _NONE]
    if nones and len(nones) == len(lines):
        return []
    if nones:
        raise ValueError(f"reply lists claims and says {_NONE}: {reply!r}")
    if not lines:
        raise ValueError(f"reply holds no claim line: {reply!r}")
    return lines


def parse_question(reply: str) -> str:
    """The question of a question model's reply: its one non-empty line, quotes and a "Question:" label removed.
    ValueError unless that is one line ending with "?"."""
    lines = [_QUESTION_LABEL.sub("", line).strip().strip("\"'").strip() for line in reply.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) != 1 or not lines[0].endswith("?"):
        raise ValueError(f"reply is not one question line ending with '?': {reply!r}")
    return lines[0]


class LLMClaims:
    """A `ClaimExtractor` on chat models: one to split answers, one (by default the same) to write questions."""

    def __init__(self, split_client: JudgeClient, question_client: JudgeClient | None = None) -> None:
        self.split_client = split_client
        self.question_client = question_client or split_client

    def split(self, answers: Sequence[str]) -> list[list[str]]:
        """Every answer's claims from the split model (`SPLIT_PROMPT`); an empty answer has none and costs no call.

        Raises `FeedbackError` naming the answers that got no parseable reply.
        """
        asked = [index for index, answer in enumerate(answers) if answer.strip()]
        prompts = [[user(SPLIT_PROMPT.format(answer=answers[i].strip()))] for i in asked]
        names = [f"answer {answers[i]!r}" for i in asked]
        values = ask_values(self.split_client, prompts, names, parse_claims, SPLIT_NUDGE, "claim splitting",
                            system=SPLIT_SYSTEM, max_tokens=SPLIT_MAX_TOKENS)
        claims: list[list[str]] = [[] for _ in answers]
        for index, value in zip(asked, values):
            claims[index] = value
        return claims

    def questions(self, claims: Sequence[str]) -> list[str]:
        """Every claim's yes/no question from the question model (`QUESTION_PROMPT`).

        Raises ValueError naming an empty claim, `FeedbackError` naming the claims that got no parseable reply.
        """
        empty = [index for index, claim in enumerate(claims) if not claim.strip()]
        if empty:
            raise ValueError(f"claim {empty[0]} of {len(claims)} is empty: there is nothing to ask about")
        prompts = [[user(QUESTION_PROMPT.format(claim=claim.strip()))] for claim in claims]
        return ask_values(self.question_client, prompts, [f"claim {c!r}" for c in claims], parse_question,
                          QUESTION_NUDGE, "question transformation", system=QUESTION_SYSTEM,
                          max_tokens=QUESTION_MAX_TOKENS)
