"""Held-out evaluation on the synthetic world with the same CHAIR and POPE code as the real benchmarks.

Description prompts are scored by CHAIR against each scene's known objects (vocabulary and synonyms
from the world), and by an AMBER-like attribute check: for every mention of an object kind the scene has, is the
colour it states wrong, is the place it states wrong (`check_attributes` gives the matching rule). Existence
questions are scored by the POPE metrics; colour, count and "what is in the top left?" (cell) questions by exact
match.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rlhfv_nb.bootstrap import Counts
from rlhfv_nb.config import Config
from rlhfv_nb.data import read_parquet
from rlhfv_nb.evaluate.chair import ChairResult, ChairVocabulary, score_responses
from rlhfv_nb.evaluate.pope import score_answers
from rlhfv_nb.world import (
    _SENTENCE,
    Scene,
    WorldConfig,
    WorldObject,
    _patterns,
    cell_phrase,
    place_core,
    place_phrase,
    same_answer,
)

WORLD_VOCABULARY = "synthetic-world"  # the name of the world's CHAIR vocabulary
Span = tuple[int, int]


def world_vocabulary(cfg: Config) -> ChairVocabulary:
    """The world's CHAIR vocabulary, as written by stage 01."""
    text = cfg.layout.world_synonyms.read_text()
    return ChairVocabulary.from_synonyms_text(text, name=WORLD_VOCABULARY)


def eval_items(cfg: Config) -> list[dict[str, Any]]:
    """Held-out items (`<run>/data/eval.parquet`), optionally limited to the first `evaluation.limit` images."""
    rows = [dict(r, image=r["image"]["bytes"], id=r["uid"])
            for r in read_parquet(cfg.layout.eval_rows)]
    if cfg.evaluation.limit:
        images = set(list(dict.fromkeys(r["image_id"] for r in rows))[: cfg.evaluation.limit])
        rows = [r for r in rows if r["image_id"] in images]
    return rows


def descriptions(
    items: list[dict[str, Any]], answers: Mapping[str, str]
) -> tuple[dict[Hashable, str], dict[Hashable, Scene]]:
    """The answers to the description prompts and their scenes, both by image id."""
    describe = [i for i in items if i["qtype"] == "describe"]
    return ({i["image_id"]: answers[i["id"]] for i in describe},
            {i["image_id"]: Scene.from_dict(json.loads(i["scene"])) for i in describe})


def score_world(
    items: list[dict[str, Any]], answers: dict[str, str], vocab: ChairVocabulary
) -> tuple[dict, ChairResult]:
    """CHAIR on descriptions, POPE metrics on existence questions, accuracy on colour/count/cell questions."""
    responses, scenes = descriptions(items, answers)
    chair = score_responses(responses, {image: scene.kinds for image, scene in scenes.items()}, vocab)
    exists = [{"question_id": i["id"], "label": i["label"]} for i in items if i["qtype"] == "exists"]
    pope = score_answers(exists, answers)
    summary = {"chair": chair.summary, "pope": pope}
    for qtype in ("color", "count", "cell"):
        asked = [i for i in items if i["qtype"] == qtype]
        if asked:
            right = sum(same_answer(answers[i["id"]], i["answer"]) for i in asked)
            summary[f"{qtype}_accuracy"] = right / len(asked)
    return summary, chair


# ---------------------------------------------------------------- colours and places


@dataclass(frozen=True)
class StatedObject:
    """An object mention of a description, with the colour and place the description states for it.

    Spans are character offsets into the description; `color` is a colour name, `place` the core of a position
    phrase ("top left" of "in the top left"), both lower-cased, None where the sentence states none.
    """

    kind: str
    span: Span
    color: str | None = None
    color_span: Span | None = None
    place: str | None = None
    place_span: Span | None = None


def stated_objects(text: str, cfg: WorldConfig) -> list[StatedObject]:
    """Every object the text mentions (the world's mention regex: "a red ball", "two boxes"), sentence by sentence.

    A colour counts when it stands right before the noun. Places follow the world's templates, one object per
    sentence: a sentence's only position phrase belongs to every object of the sentence ("A red ball and a blue box
    are in the top left"), as many phrases as objects pair up in order ("A red ball is in the top left, a blue box
    at the bottom"); otherwise no object of the sentence gets a place.
    """
    mention_re, place_re = _patterns(cfg)
    found = []
    for sentence in _SENTENCE.finditer(text):
        start, piece = sentence.start(), sentence.group()
        mentions = list(mention_re.finditer(piece))
        places = list(place_re.finditer(piece))
        if len(places) == 1:
            places *= len(mentions)
        elif len(places) != len(mentions):
            places = [None] * len(mentions)
        for m, p in zip(mentions, places, strict=True):
            color = m["color"].lower() if m["color"] else None
            found.append(StatedObject(
                cfg.lexicon[m["noun"].lower()], _shift(m.span("noun"), start),
                color, _shift(m.span("color"), start) if color else None,
                p["core"].lower() if p else None, _shift(p.span(), start) if p else None))
    return found


def _shift(span: Span, offset: int) -> Span:
    return span[0] + offset, span[1] + offset


@dataclass(frozen=True)
class AttributeCheck:
    """One mention of an object kind that is in the scene, and whether its stated colour and place are wrong."""

    stated: StatedObject
    wrong_color: bool
    wrong_place: bool


def check_attributes(text: str, scene: Scene, cfg: WorldConfig) -> list[AttributeCheck]:
    """The colour and place of every mention (`stated_objects`) of a kind the scene has, checked against the scene.

    Mentions of kinds the scene lacks are CHAIR's hallucinations and not checked here. A mention refers to the
    scene's objects of its kind; its colour is wrong when none of them has that colour. Its place is checked
    against those of them that have the stated colour (all of them when it states no colour or a wrong one): it is
    wrong when none of them is at that place (`world.place_phrase` of its cell). So "a red box in the top left"
    in a scene with a red box in the bottom right and a blue box in the top left has the right colour and a wrong
    place (the red box is elsewhere), and a wrong colour is never also counted as a wrong place. A mention without
    a colour (or a place) cannot have a wrong one.
    """
    checks = []
    for stated in stated_objects(text, cfg):
        same_kind = [o for o in scene.objects if o.kind == stated.kind]
        if not same_kind:
            continue
        wrong_color = stated.color is not None and all(o.color != stated.color for o in same_kind)
        referents = [o for o in same_kind if o.color == stated.color] or same_kind
        wrong_place = stated.place is not None and all(place_core(place_phrase(o, cfg)) != stated.place
                                                       for o in referents)
        checks.append(AttributeCheck(stated, wrong_color, wrong_place))
    return checks


def wrong_spans(checks: list[AttributeCheck]) -> tuple[list[Span], list[Span]]:
    """The spans of the wrong colours and of the wrong places (a place shared by several mentions once)."""
    colors = sorted({c.stated.color_span for c in checks if c.wrong_color})
    places = sorted({c.stated.place_span for c in checks if c.wrong_place})
    return colors, places


@dataclass
class AttributeDetail:
    """One description's attribute checks."""

    id: Hashable
    text: str
    checks: list[AttributeCheck] = field(default_factory=list)

    @property
    def n_colors(self) -> int:
        return sum(c.stated.color is not None for c in self.checks)

    @property
    def n_places(self) -> int:
        return sum(c.stated.place is not None for c in self.checks)

    @property
    def n_wrong_colors(self) -> int:
        return sum(c.wrong_color for c in self.checks)

    @property
    def n_wrong_places(self) -> int:
        return sum(c.wrong_place for c in self.checks)

    @property
    def hallucinated(self) -> bool:
        """Whether some colour or place is wrong."""
        return any(c.wrong_color or c.wrong_place for c in self.checks)


@dataclass
class AttributeResult:
    """Attribute hallucination over descriptions: `summary` (fractions) and one `AttributeDetail` per description.

    `wrong_color`: wrong colours / colours stated for objects of kinds in the scene; `wrong_place` the same for
    places; `attribute_hallucination`: descriptions with at least one wrong colour or place / all descriptions.
    """

    summary: dict[str, Any]
    details: list[AttributeDetail]

    def counts(self) -> dict[str, Counts]:
        """Per description, the numerator and denominator of each summary fraction (for bootstrap intervals)."""
        return {
            "wrong_color": {d.id: (d.n_wrong_colors, d.n_colors) for d in self.details},
            "wrong_place": {d.id: (d.n_wrong_places, d.n_places) for d in self.details},
            "attribute_hallucination": {d.id: (int(d.hallucinated), 1) for d in self.details},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"summary": self.summary, "details": [asdict(d) for d in self.details]}


def score_attributes(texts: Mapping[Hashable, str], scenes: Mapping[Hashable, Scene],
                     cfg: WorldConfig) -> AttributeResult:
    """`check_attributes` on every text against the scene of its id; KeyError naming an id without a scene."""
    missing = [image for image in texts if image not in scenes]
    if missing:
        raise KeyError(f"no scene for image id(s) {missing}")
    details = [AttributeDetail(image, text, check_attributes(text, scenes[image], cfg))
               for image, text in texts.items()]
    sums = {key: sum(getattr(d, key) for d in details)
            for key in ("n_colors", "n_wrong_colors", "n_places", "n_wrong_places")}
    n_hallucinated = sum(d.hallucinated for d in details)
    summary = {
        "wrong_color": _ratio(sums["n_wrong_colors"], sums["n_colors"]),
        "wrong_place": _ratio(sums["n_wrong_places"], sums["n_places"]),
        "attribute_hallucination": _ratio(n_hallucinated, len(details)),
        "n_descriptions": len(details),
        "n_checked_mentions": sum(len(d.checks) for d in details),
        **sums,
        "n_attribute_hallucinated": n_hallucinated,
    }
    return AttributeResult(summary, details)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def scene_text(scene: Scene, cfg: WorldConfig) -> str:
    """The scene as a comma-separated list of objects with colour and place: "red ball in the top left, ..."."""
    return ", ".join(f"{o.color} {o.kind} {place_phrase(o, cfg)}" for o in scene.objects)


def scene_from_text(text: str, cfg: WorldConfig) -> Scene | None:
    """The scene a `scene_text`-like list describes; None unless every item names one object, its colour and place.

    ValueError for a place that is no cell's of the world's grid ("in the center" on a 2x2 grid).
    """
    cells: dict[str, tuple[int, int]] = {}
    for row in range(cfg.grid):
        for col in range(cfg.grid):
            cells.setdefault(place_core(cell_phrase(row, col, cfg)), (row, col))
    objects = []
    for item in (part for part in text.split(",") if part.strip()):
        stated = stated_objects(item, cfg)
        if len(stated) != 1 or stated[0].color is None or stated[0].place is None:
            return None
        if stated[0].place not in cells:
            raise ValueError(f"{item.strip()!r}: {stated[0].place!r} is no place of the {cfg.grid}x{cfg.grid} grid "
                             f"(places: {', '.join(cells)})")
        objects.append(WorldObject(stated[0].kind, stated[0].color, *cells[stated[0].place]))
    return Scene(tuple(objects)) if objects else None


@dataclass
class WorldScores:
    """One model on the held-out world: `score_world`'s summary, the CHAIR and attribute details of its descriptions."""

    summary: dict[str, Any]
    chair: ChairResult
    attributes: AttributeResult

    def counts(self) -> dict[str, Counts]:
        """Per image, numerator and denominator of CHAIR's and the attribute check's summary fractions."""
        return {**self.chair.counts(), **self.attributes.counts()}


def world_scores(items: list[dict[str, Any]], answers: Mapping[str, str], vocab: ChairVocabulary,
                 cfg: WorldConfig) -> WorldScores:
    """`score_world` and the attribute check of the descriptions among `items`."""
    summary, chair = score_world(items, dict(answers), vocab)
    return WorldScores(summary, chair, score_attributes(*descriptions(items, answers), cfg))
