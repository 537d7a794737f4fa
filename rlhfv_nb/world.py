"""Synthetic image world for the cpu-tiny experiment.

Scenes are a few coloured objects on a grid; everything about them is known, so the world can
render images, describe them (SFT answers), ask short questions, correct a model's description
against the truth (the simulated RLHF-V annotator) and export its CHAIR vocabulary.
Objects that co-occur in the SFT split ("companions") co-occur much less in fresh splits, and most SFT
captions name the companion even when it is absent (captions written from expectation): a model trained
on the SFT split learns the co-occurrence prior and hallucinates the companion.
Pure Python + PIL + numpy; every random choice comes from an explicit seed or `random.Random`.
"""

from __future__ import annotations

import json
import math
import random
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

DESCRIBE_PROMPTS = (
    "Describe the image in detail.",
    "What do you see in this image?",
    "Provide a detailed description of the given image.",
)

Color = tuple[int, int, int]


def _pairs(value: Mapping | Iterable) -> tuple:
    """Normalise a mapping or a list of [key, value] pairs (e.g. from YAML) into nested tuples."""
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in items)


@dataclass(frozen=True)
class WorldConfig:
    """All knobs of the world; `WorldConfig()` is the cpu-tiny world."""

    image_size: int = 48
    grid: int = 2  # grid x grid cells, at most one object per cell (one vision patch each)
    kinds: tuple[tuple[str, str], ...] = (  # (category name, shape drawn)
        ("ball", "circle"),
        ("box", "square"),
        ("tent", "triangle"),
        ("star", "star"),
        ("cross", "cross"),
        ("kite", "diamond"),
        ("ring", "ring"),
        ("stick", "bar"),
    )
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("ball", ("sphere",)),
        ("box", ("crate", "cube")),
        ("kite", ("diamond",)),
        ("ring", ("hoop",)),
        ("stick", ("rod", "pole")),
    )
    colors: tuple[tuple[str, Color], ...] = (
        ("red", (210, 40, 40)),
        ("green", (30, 150, 60)),
        ("blue", (40, 80, 215)),
        ("yellow", (220, 175, 0)),
        ("purple", (140, 55, 175)),
    )
    companions: tuple[tuple[str, str], ...] = (("tent", "star"), ("kite", "stick"), ("box", "ball"))
    companion_rate_sft: float = 0.5
    companion_rate_fresh: float = 0.2
    min_objects: int = 1
    max_objects: int = 4
    background: Color = (236, 236, 228)
    noise: int = 6  # background noise amplitude, +-noise per pixel
    synonym_rate: float = 0.2  # how often a description names an object by a synonym
    # How often an SFT caption also names the usual companion of a present object when it is absent (in an
    # empty cell): captions written from expectation, as LLM-written instruction data does.
    caption_companion_rate: float = 0.8
    # How many of an image's two existence questions (one "yes", one "no") every SFT image comes with; 1-2 other
    # short questions are drawn on top. Answering "is there a tent?" needs the model to compare the asked kind with
    # every patch at once, which the tiny model only learns from many examples (measured: POPE at chance with 1-2
    # short questions drawn from all types, 79% with both existence questions on every image).
    sft_exists_questions: int = 2

    def __post_init__(self) -> None:
        for name in ("kinds", "synonyms", "colors", "companions"):
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        object.__setattr__(self, "background", tuple(self.background))
        self._validate()

    def _validate(self) -> None:
        kinds = set(self.kind_names)
        unknown_shapes = {s for _, s in self.kinds} - set(SHAPES)
        if unknown_shapes:
            raise ValueError(f"unknown shapes {sorted(unknown_shapes)}; choose from {sorted(SHAPES)}")
        bad = {k for pair in self.companions for k in pair} - kinds
        bad |= {k for k, _ in self.synonyms} - kinds
        if bad:
            raise ValueError(f"companions/synonyms name unknown kinds {sorted(bad)}")
        leaders, followers = [k for k, _ in self.companions], [c for _, c in self.companions]
        if len(set(leaders + followers)) != 2 * len(self.companions):
            raise ValueError("companion pairs must be disjoint (each kind in at most one pair)")
        words = [*self.kind_names, *(s for _, syns in self.synonyms for s in syns), *self.color_names]
        if len(set(words)) != len(words):
            raise ValueError("kind names, synonyms and colour names must all be distinct")
        if not 0 <= self.sft_exists_questions <= 2:
            raise ValueError(f"sft_exists_questions must be 0, 1 or 2, got {self.sft_exists_questions}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError("need 1 <= min_objects <= max_objects <= grid**2")

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.kinds)

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.colors)

    @property
    def lexicon(self) -> dict[str, str]:
        """Every object word (category names and synonyms) -> its category."""
        words = {k: k for k in self.kind_names}
        words.update({s: k for k, syns in self.synonyms for s in syns})
        return words


@dataclass(frozen=True)
class WorldObject:
    kind: str
    color: str
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image; objects are kept in reading order (row, then column)."""

    objects: tuple[WorldObject, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: (o.row, o.col))))

    @property
    def kinds(self) -> set[str]:
        return {o.kind for o in self.objects}

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: Mapping) -> Scene:
        return cls(tuple(WorldObject(**o) for o in d["objects"]))


@dataclass(frozen=True)
class ShortQA:
    """A short question with its answer; `kind`/`label`/`probe` are set for "exists" questions."""

    question: str
    answer: str
    type: str  # "exists" | "color" | "count"
    kind: str | None = None
    label: str | None = None  # "yes" | "no"
    probe: str | None = None  # "present" | "random" | "adversarial" (companion of a present kind)


# ---------------------------------------------------------------- sampling


_LEADER_WEIGHT = 2.0  # leaders lose draws (no room, companion already there): draw them more often


def _sample_kinds(rng: random.Random, cfg: WorldConfig, n: int, rate: float) -> list[str]:
    """Pick up to `n` distinct kinds so that P(companion present | leader present) == rate exactly.

    A leader is only placed when there is room for its companion too, and flips its coin then;
    a companion drawn on its own bars its leader, so companions never co-occur by chance.
    Leaders are drawn with extra weight so that all kinds are about equally common.
    """
    companion_of = dict(cfg.companions)
    leader_of = {c: k for k, c in cfg.companions}
    chosen: list[str] = []
    barred: set[str] = set()
    while len(chosen) < n:
        pool = [k for k in cfg.kind_names if k not in chosen and k not in barred]
        if not pool:
            break
        kind = rng.choices(pool, [_LEADER_WEIGHT if k in companion_of else 1.0 for k in pool])[0]
        if kind in companion_of:
            if len(chosen) + 2 > n:
                barred.add(kind)
                continue
            if rng.random() < rate:
                chosen.append(companion_of[kind])
            else:
                barred.add(companion_of[kind])
        elif kind in leader_of:
            barred.add(leader_of[kind])
        chosen.append(kind)
    return chosen


def sample_scene(rng: random.Random, cfg: WorldConfig, split: str) -> Scene:
    """Draw a scene; split "sft" uses `companion_rate_sft`, "fresh" uses `companion_rate_fresh`."""
    rates = {"sft": cfg.companion_rate_sft, "fresh": cfg.companion_rate_fresh}
    if split not in rates:
        raise ValueError(f"split must be one of {sorted(rates)}, got {split!r}")
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    kinds = _sample_kinds(rng, cfg, n, rates[split])
    cells = rng.sample(range(cfg.grid**2), len(kinds))
    return Scene(
        tuple(
            WorldObject(kind, rng.choice(cfg.color_names), cell // cfg.grid, cell % cfg.grid)
            for kind, cell in zip(kinds, cells, strict=True)
        )
    )


# ---------------------------------------------------------------- rendering

_SUPERSAMPLE = 4
Drawer = Callable[[ImageDraw.ImageDraw, float, float, float, Color], None]


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, h: float, fill: Color) -> None:
    pts = [
        (x + r * math.sin(i * math.pi / 5), y - r * math.cos(i * math.pi / 5))
        for i, r in enumerate([h, h * 0.45] * 5)
    ]
    draw.polygon(pts, fill=fill)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, h: float, fill: Color) -> None:
    t = h * 0.33
    draw.rectangle([x - h, y - t, x + h, y + t], fill=fill)
    draw.rectangle([x - t, y - h, x + t, y + h], fill=fill)


def _polygon(*points: tuple[float, float]) -> Drawer:
    """A filled polygon given by points relative to the centre, in units of the half-size."""
    return lambda d, x, y, h, c: d.polygon([(x + px * h, y + py * h) for px, py in points], fill=c)


SHAPES: dict[str, Drawer] = {
    "circle": lambda d, x, y, h, c: d.ellipse([x - h, y - h, x + h, y + h], fill=c),
    "square": _polygon((-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)),
    "triangle": _polygon((0, -1), (1, 0.8), (-1, 0.8)),
    "star": _star,
    "cross": _cross,
    "diamond": _polygon((0, -1), (0.78, 0), (0, 1), (-0.78, 0)),
    "ring": lambda d, x, y, h, c: d.ellipse([x - h, y - h, x + h, y + h], outline=c, width=round(0.4 * h)),
    "bar": _polygon((-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)),
}


def _scene_seed(scene: Scene) -> int:
    return zlib.crc32(json.dumps(scene.to_dict(), sort_keys=True).encode())


def render(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """Draw the scene (RGB, image_size square); size/position jitter and noise are seeded by the scene."""
    size = cfg.image_size * _SUPERSAMPLE
    cell = size / cfg.grid
    image = Image.new("RGB", (size, size), cfg.background)
    draw = ImageDraw.Draw(image)
    rng = random.Random(_scene_seed(scene))
    shapes, colors = dict(cfg.kinds), dict(cfg.colors)
    for obj in scene.objects:
        half = cell * rng.uniform(0.34, 0.42)
        slack = cell / 2 - half
        x = (obj.col + 0.5) * cell + rng.uniform(-slack, slack)
        y = (obj.row + 0.5) * cell + rng.uniform(-slack, slack)
        SHAPES[shapes[obj.kind]](draw, x, y, half, colors[obj.color])
    small = np.asarray(image.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX), dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-cfg.noise, cfg.noise + 1, small.shape[:2])
    return Image.fromarray(np.clip(small + noise[..., None], 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- language

_PLACES = {  # (vertical, horizontal) region -> phrase; regions are 0/1/2 = top|left, middle, bottom|right
    (0, 0): "in the top left",
    (0, 1): "at the top",
    (0, 2): "in the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right",
}
_TEMPLATES = ("There is {obj} {place}.", "{Obj} is {place}.", "{Place}, there is {obj}.")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_SENTENCE = re.compile(r"[^.!?]*[.!?]+\s*|[^.!?]+")
_JOINER = re.compile(r"(?:\s*,)?(?:\s+and)?\s*$")  # what joins a removed phrase to the one before


def _region(i: int, grid: int) -> int:
    return 1 if grid == 1 else round(2 * i / (grid - 1))


def cell_phrase(row: int, col: int, cfg: WorldConfig) -> str:
    """Position phrase of a grid cell, e.g. "in the top left" or "at the bottom"."""
    return _PLACES[_region(row, cfg.grid), _region(col, cfg.grid)]


def place_phrase(obj: WorldObject, cfg: WorldConfig) -> str:
    """Position phrase of an object's cell."""
    return cell_phrase(obj.row, obj.col, cfg)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe(scene: Scene, rng: random.Random, cfg: WorldConfig | None = None) -> str:
    """The SFT answer: one templated sentence per object, in reading order."""
    cfg = cfg or WorldConfig()
    synonyms = dict(cfg.synonyms)
    sentences = []
    for obj in scene.objects:
        noun = obj.kind
        if synonyms.get(obj.kind) and rng.random() < cfg.synonym_rate:
            noun = rng.choice(synonyms[obj.kind])
        phrase = f"{_article(obj.color)} {obj.color} {noun}"
        place = place_phrase(obj, cfg)
        template = rng.choice(_TEMPLATES)
        sentences.append(
            template.format(obj=phrase, Obj=_capitalise(phrase), place=place, Place=_capitalise(place))
        )
    return " ".join(sentences)


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def short_questions(scene: Scene, rng: random.Random, cfg: WorldConfig) -> list[ShortQA]:
    """POPE-style exists questions (one yes, one no), a colour and a count question, and "what is <place>?" per cell.

    The negative probes the absent companion of a present kind half of the time when there is
    one (adversarial), else a random absent kind.
    """
    present = [o.kind for o in scene.objects]
    absent = [k for k in cfg.kind_names if k not in present]
    companions = dict(cfg.companions)
    traps = [companions[k] for k in present if companions.get(k) in absent]
    ask = rng.choice(("Is there {a} {k} in the image?", "Is there {a} {k} in this picture?"))
    qas = []
    kind = rng.choice(present)
    qas.append(ShortQA(ask.format(a=_article(kind), k=kind), "Yes.", "exists", kind, "yes", "present"))
    if absent:
        probe = "adversarial" if traps and rng.random() < 0.5 else "random"
        kind = rng.choice(traps if probe == "adversarial" else absent)
        qas.append(ShortQA(ask.format(a=_article(kind), k=kind), "No.", "exists", kind, "no", probe))
    obj = rng.choice(scene.objects)
    qas.append(ShortQA(f"What color is the {obj.kind}?", f"{_capitalise(obj.color)}.", "color"))
    count = _capitalise(_number(len(scene.objects)))
    qas.append(ShortQA("How many objects are there in the image?", f"{count}.", "count"))
    by_cell = {(o.row, o.col): o for o in scene.objects}
    for row in range(cfg.grid):
        for col in range(cfg.grid):
            obj = by_cell.get((row, col))
            answer = f"{_capitalise(_article(obj.color))} {obj.color} {obj.kind}." if obj else "Nothing."
            qas.append(ShortQA(f"What is {cell_phrase(row, col, cfg)}?", answer, "cell"))
    return qas


def pick_questions(qas: list[ShortQA], rng: random.Random, n_exists: int, n_others: int) -> list[ShortQA]:
    """`n_exists` of the existence questions (all of them when there are no more), then `n_others` of the rest."""
    exists, others = [q for q in qas if q.type == "exists"], [q for q in qas if q.type != "exists"]
    picked = exists if n_exists >= len(exists) else rng.sample(exists, n_exists)
    return picked + rng.sample(others, min(len(others), n_others))


def num_cell_classes(cfg: WorldConfig) -> int:
    """Classes of `cell_classes`: every (kind, colour) pair, plus "empty"."""
    return len(cfg.kinds) * len(cfg.colors) + 1


def cell_classes(scene: Scene, cfg: WorldConfig) -> list[list[int]]:
    """The scene as a `grid x grid` table of class ids: one per (kind, colour) pair, the last one for "empty"."""
    empty = num_cell_classes(cfg) - 1
    table = [[empty] * cfg.grid for _ in range(cfg.grid)]
    for obj in scene.objects:
        table[obj.row][obj.col] = cfg.kind_names.index(obj.kind) * len(cfg.colors) + cfg.color_names.index(obj.color)
    return table


def synonyms_text(cfg: WorldConfig) -> str:
    """The CHAIR vocabulary in the `synonyms_refine.txt` format: "category, synonym, ..." per line."""
    synonyms = dict(cfg.synonyms)
    return "\n".join(", ".join((k, *synonyms.get(k, ()))) for k in cfg.kind_names) + "\n"


# ---------------------------------------------------------------- the simulated annotator


@lru_cache(maxsize=16)
def _patterns(cfg: WorldConfig) -> tuple[re.Pattern, re.Pattern]:
    """Regexes for an object mention ("a red ball") and a position phrase ("in the top left")."""

    def alt(words: Iterable[str]) -> str:
        return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))

    mention = re.compile(
        rf"\b(?:(?P<art>an?)\s+)?(?:(?P<color>{alt(cfg.color_names)})\s+)?(?P<noun>{alt(cfg.lexicon)})(?:e?s)?\b",
        re.IGNORECASE,
    )
    cores = {place_core(p) for p in _PLACES.values()}
    place = re.compile(rf"\b(?:in|at|on) the (?P<core>{alt(cores)})\b", re.IGNORECASE)
    return mention, place


def place_core(place: str) -> str:
    """The part of a position phrase after "the" ("in the top left" -> "top left"): what the place regex captures
    as `core`."""
    return place.split(" the ", 1)[1]


def _match_case(old: str, new: str) -> str:
    return _capitalise(new) if old[:1].isupper() else new


def _edit(text: str, edits: list[tuple[tuple[int, int], str]]) -> str:
    for (start, end), new in sorted(edits, reverse=True):
        text = text[:start] + _match_case(text[start:end], new) + text[end:]
    return text


def correct_description(answer: str, scene: Scene, cfg: WorldConfig) -> str:
    """Minimally edit a description so that it agrees with the scene (the RLHF-V `chosen`).

    A one-object sentence with a place ("A red ball is in the top left.") is about the object at that place:
    naming another one, it is renamed to it (kind and colour). Such a sentence at an empty place that names an
    object another sentence already places right is removed. Otherwise a mentioned object whose category is
    absent is replaced by a scene object the answer neither mentions nor describes at its place (with its
    colour and, in a one-object sentence, its position); when there is none, the hallucinated phrase is
    removed (its whole sentence if it was the only object there). Wrong colours (and positions) of present
    objects are fixed. Everything else is kept word for word; a correct answer comes back unchanged.
    """
    mention_re, place_re = _patterns(cfg)
    lexicon = cfg.lexicon
    truth = {o.kind: o for o in scene.objects}
    pieces = _SENTENCE.findall(answer)
    mentions = [list(mention_re.finditer(p)) for p in pieces]
    stated = []  # per sentence: the objects at the cell it names, if it names one object at one place
    for piece, ms in zip(pieces, mentions, strict=True):
        places = list(place_re.finditer(piece))
        core = places[0]["core"].lower() if len(ms) == 1 and len(places) == 1 else None
        stated.append((places, [o for o in scene.objects if core and place_core(place_phrase(o, cfg)) == core]))
    # an object at a place some sentence names is that sentence's: it is never moved into another sentence
    claimed = {o for _, here in stated for o in here}
    said = {lexicon[m["noun"].lower()] for ms in mentions for m in ms}
    missed = [o for o in scene.objects if o.kind not in said and o not in claimed]
    kept = []
    for piece, ms, (places, here) in zip(pieces, mentions, stated, strict=True):
        anchored = len(ms) == 1 and len(places) == 1  # "A red ball is in the top left.": the place names a cell
        edits: list[tuple[tuple[int, int], str]] = []
        dropped = 0
        for m in ms:
            kind = lexicon[m["noun"].lower()]
            obj = truth.get(kind)
            if here:  # the place holds an object: the sentence is about it, whatever it named
                obj = next((o for o in here if o.kind == kind), here[0])
            # a real object said at an empty place while another sentence names its place is a duplicate
            duplicate = not here and anchored and obj in claimed
            if duplicate or (obj is None and not missed):
                dropped += 1
                edits.append(((_JOINER.search(piece, 0, m.start()).start(), m.end()), ""))
                continue
            if obj is None:
                obj = missed.pop(0)
            if obj.kind != kind:
                edits.append((m.span("noun"), obj.kind))
            if m["color"] and m["color"].lower() != obj.color:
                edits.append((m.span("color"), obj.color))
            if m["art"] and m["art"].lower() != _article(obj.color if m["color"] else obj.kind):
                edits.append((m.span("art"), _article(obj.color if m["color"] else obj.kind)))
            if anchored:
                right = place_phrase(obj, cfg)
                if places[0]["core"].lower() != place_core(right):
                    edits.append((places[0].span(), right))
        if not ms or dropped < len(ms):
            kept.append(_edit(piece, edits))
    corrected = "".join(kept)
    return corrected if answer[-1:].isspace() else corrected.rstrip()


def same_answer(answer: str, reference: str) -> bool:
    """Short answers compared as the world scores them: case, surrounding space and a final period ignored."""
    return answer.strip().lower().rstrip(".") == reference.strip().lower().rstrip(".")


def correct_short_answer(answer: str, qa: ShortQA) -> str:
    """The annotator on a short question: a wrong answer is replaced by the right one, a right one kept."""
    return answer if same_answer(answer, qa.answer) else qa.answer


def short_answers(qtype: str, cfg: WorldConfig) -> list[str]:
    """Every answer a short question of this type can have in the world (colours, counts, things in a cell)."""
    if qtype == "exists":
        return ["Yes.", "No."]
    if qtype == "color":
        return [f"{_capitalise(c)}." for c in cfg.color_names]
    if qtype == "count":
        return [f"{_capitalise(_number(n))}." for n in range(cfg.min_objects, cfg.max_objects + 1)]
    if qtype == "cell":
        things = [f"{_capitalise(_article(c))} {c} {k}." for k in cfg.kind_names for c in cfg.color_names]
        return ["Nothing.", *things]
    raise ValueError(f"unknown short question type {qtype!r}")


def wrong_short_answer(qa: ShortQA, rng: random.Random, cfg: WorldConfig) -> str:
    """A wrong answer to a short question, drawn from the answers its type can have: what the annotator rejects
    when the model answered right (a cell that holds something is said to be empty half of the time)."""
    if qa.type == "cell" and not same_answer(qa.answer, "Nothing.") and rng.random() < 0.5:
        return "Nothing."
    return rng.choice([a for a in short_answers(qa.type, cfg) if not same_answer(a, qa.answer)])


# ---------------------------------------------------------------- datasets


def expected_scene(scene: Scene, rng: random.Random, cfg: WorldConfig) -> Scene:
    """The scene as a caption writer who expects companions sees it: each absent companion of a present kind
    is added in a free cell with probability `caption_companion_rate` (the SFT captions' hallucinations)."""
    companion_of = dict(cfg.companions)
    kinds = scene.kinds
    taken = {(o.row, o.col) for o in scene.objects}
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in taken]
    added = []
    for obj in scene.objects:
        companion = companion_of.get(obj.kind)
        if companion and companion not in kinds and free and rng.random() < cfg.caption_companion_rate:
            row, col = free.pop(rng.randrange(len(free)))
            added.append(WorldObject(companion, rng.choice(cfg.color_names), row, col))
    return Scene(scene.objects + tuple(added))


def make_sft_rows(
    cfg: WorldConfig, n_images: int, seed: int, short_per_image: tuple[int, int] = (1, 2)
) -> list[dict]:
    """SFT rows: per image one description row, `cfg.sft_exists_questions` existence questions, and 1-2 other
    short-question rows (colour, count, "what is in the top left?").

    Keys: image (PIL), question, answer, scene (dict), qtype ("describe" | "exists" | "color" | "count").
    """
    rng = random.Random(f"sft-rows-{seed}")
    rows = []
    for _ in range(n_images):
        scene = sample_scene(rng, cfg, "sft")
        image, info = render(scene, cfg), scene.to_dict()
        picked = pick_questions(short_questions(scene, rng, cfg), rng, cfg.sft_exists_questions,
                                rng.randint(*short_per_image))
        rows.append(
            {
                "image": image,
                "question": rng.choice(DESCRIBE_PROMPTS),
                "answer": describe(expected_scene(scene, rng, cfg), rng, cfg),
                "scene": info,
                "qtype": "describe",
            }
        )
        rows += [
            {"image": image, "question": q.question, "answer": q.answer, "scene": info, "qtype": q.type}
            for q in picked
        ]
    return rows


def make_fresh_scenes(cfg: WorldConfig, n: int, seed: int, split: str = "fresh") -> list[Scene]:
    """Scenes for feedback collection or held-out evaluation (different seeds, different streams)."""
    rng = random.Random(f"{split}-{seed}")
    return [sample_scene(rng, cfg, split) for _ in range(n)]
