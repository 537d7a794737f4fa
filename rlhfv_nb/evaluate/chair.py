"""CHAIR object hallucination (Rohrbach et al., 2018) as used by RLHF-V's Object HalBench.

Words are lower-cased, tokenised, singularised, merged into two-word phrases, then mapped through a
synonym table to categories. A mention whose category is not in the image's ground truth is a
hallucination. Summary metrics (fractions, not percent):

- `CHAIRs`: responses with >= 1 hallucinated object / all scored responses (classic CHAIR_s).
- `CHAIRs_refine`: responses with >= 1 hallucinated object / responses mentioning >= 1 vocabulary
  object. This is RLHF-V's Object HalBench "Resp." column.
- `CHAIRi`: hallucinated mentions / all mentions (RLHF-V's "Mention" column).
- `recall`: ground-truth categories mentioned / ground-truth categories, summed over responses.

Deviations from upstream, all documented: singularisation uses `inflect` (no NLTK/WordNet data),
with words of the vocabulary itself kept as they are (so "bus", "scissors", "tennis" are not
mangled); vocabulary entries are lower-cased ("iPhone" can match); `avg_len` counts whitespace words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from rlhfv_nb.evaluate import benchmarks

_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*")

# COCO-specific rules of the reference implementation.
_COCO_EXTRA_PHRASES = ("home plate", "train track")  # counted as themselves, so "train track" is no train
_COCO_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
                 "animal", "cub")  # "baby cat" is a cat, not a person ("baby")
_COCO_PASSENGER_VEHICLES = ("jet", "train")  # "passenger train" is a train, not a person ("passenger")


class Mention(NamedTuple):
    """A vocabulary object found in a text: normalised term, its category, character span in the text."""

    word: str
    category: str
    start: int | None
    end: int | None


@dataclass(frozen=True)
class ChairVocabulary:
    """Categories, synonyms and phrase rules: COCO's, or a synthetic world's in the same text format."""

    synonyms: Mapping[str, str]
    phrases: Mapping[str, str]
    drop_if_present: Mapping[str, str] = field(default_factory=dict)
    name: str = "custom"
    protected: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # words of the vocabulary are never singularised ("bus", "scissors", "tennis racket")
        words = frozenset(w for term in [*self.synonyms, *self.phrases] for w in term.split())
        object.__setattr__(self, "protected", words)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.synonyms.values()))

    @classmethod
    def from_synonyms_text(
        cls,
        text: str,
        *,
        name: str = "custom",
        extra_phrases: Mapping[str, str] | None = None,
        drop_if_present: Mapping[str, str] | None = None,
    ) -> ChairVocabulary:
        """Parse one category per line, `category, synonym, synonym, ...`.

        Every multi-word term becomes a phrase matched as one unit; `extra_phrases` maps further
        two-word phrases to the term they count as; `drop_if_present` drops a word when another
        word occurs in the same text.
        """
        synonyms: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            terms = [t.strip().lower() for t in line.split(",")]
            if "" in terms:
                raise ValueError(f"{name}: line {lineno}: empty synonym in {line!r}")
            for term in terms:
                if synonyms.setdefault(term, terms[0]) != terms[0]:
                    raise ValueError(
                        f"{name}: line {lineno}: {term!r} already belongs to category {synonyms[term]!r}"
                    )
        if not synonyms:
            raise ValueError(f"{name}: no categories")
        phrases = {term: term for term in synonyms if " " in term}
        phrases.update(extra_phrases or {})
        return cls(synonyms, phrases, dict(drop_if_present or {}), name)

    @classmethod
    def coco(cls) -> ChairVocabulary:
        """The 80 COCO categories with RLHF-V's refined synonyms and the reference special rules."""
        text = resources.files("rlhfv_nb.evaluate").joinpath("resources/synonyms_refine.txt").read_text()
        extra = {p: p for p in _COCO_EXTRA_PHRASES}
        for animal in _COCO_ANIMALS:
            extra[f"baby {animal}"] = animal
            extra[f"adult {animal}"] = animal
        for vehicle in _COCO_PASSENGER_VEHICLES:
            extra[f"passenger {vehicle}"] = vehicle
        extra.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
        # "the seat of the toilet" must not fire for chair
        drop = {"seat": "toilet"}
        return cls.from_synonyms_text(text, name="coco", extra_phrases=extra, drop_if_present=drop)

    def category_of(self, label: str) -> str:
        """Category of a ground-truth label such as a COCO category name; KeyError if unknown."""
        return self.synonyms[label.strip().lower()]



@cache
def _inflect_engine():  # imported lazily: `import inflect` takes seconds
    import inflect

    return inflect.engine()


@cache
def _singular(word: str) -> str:
    return _inflect_engine().singular_noun(word) or word


def singularize(word: str, keep: Iterable[str] = ()) -> str:
    """Singular form of a lower-case word; words in `keep` are returned unchanged."""
    return word if word in keep else _singular(word)


def extract_mentions(text: str, vocab: ChairVocabulary) -> list[Mention]:
    """All vocabulary objects mentioned in `text`, in order, with character offsets into `text`."""
    keep = vocab.protected
    tokens = [(singularize(m.group().lower(), keep), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    merged: list[tuple[str, int, int]] = []
    i = 0
    while i < len(tokens):
        word, start, end = tokens[i]
        if i + 1 < len(tokens) and f"{word} {tokens[i + 1][0]}" in vocab.phrases:
            merged.append((vocab.phrases[f"{word} {tokens[i + 1][0]}"], start, tokens[i + 1][2]))
            i += 2
        else:
            merged.append((word, start, end))
            i += 1
    present = {w for w, _, _ in merged}
    return [
        Mention(w, vocab.synonyms[w], s, e)
        for w, s, e in merged
        if w in vocab.synonyms and vocab.drop_if_present.get(w) not in present
    ]


# -- scoring ---------------------------------------------------------------------------------------
@dataclass
class ResponseDetail:
    """Per-response CHAIR outcome. `status`: ok, empty, missing_gt or extraction_failed."""

    id: Hashable
    text: str
    status: str
    mentions: list[Mention] = field(default_factory=list)
    hallucinated: list[Mention] = field(default_factory=list)
    gt_objects: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def objects(self) -> list[str]:
        return [m.category for m in self.mentions]


@dataclass
class ChairResult:
    summary: dict
    details: list[ResponseDetail]

    def to_dict(self) -> dict:
        """JSON-ready form (mentions as dicts)."""
        rows = []
        for d in self.details:
            row = asdict(d)
            row["mentions"] = [m._asdict() for m in d.mentions]
            row["hallucinated"] = [m._asdict() for m in d.hallucinated]
            row["objects"] = d.objects
            rows.append(row)
        return {"summary": self.summary, "details": rows}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def score_responses(
    responses: Mapping[Hashable, str | None],
    ground_truth: Mapping[Hashable, set[str]],
    vocab: ChairVocabulary,
    mentions: Mapping[Hashable, list[Mention] | None] | None = None,
    extraction_errors: Mapping[Hashable, str] | None = None,
) -> ChairResult:
    """CHAIR over `responses` against per-id ground-truth categories.

    `mentions` (optional) supplies already extracted mentions per id (LLM mode); None for an id
    means extraction failed: that response is reported and left out of the metrics. Ids missing
    from `ground_truth` are reported and left out; empty answers are scored (no mentions).
    """
    extraction_errors = extraction_errors or {}
    details: list[ResponseDetail] = []
    n_scored = n_hall_resp = n_with_mentions = n_mentions = n_hall = n_empty = 0
    n_missing = n_failed = gt_total = gt_found = words = 0
    for rid, raw in responses.items():
        text = raw or ""
        if rid not in ground_truth:
            n_missing += 1
            error = f"image id {rid!r} has no ground truth"
            details.append(ResponseDetail(rid, text, "missing_gt", error=error))
            continue
        gt = ground_truth[rid]
        found = extract_mentions(text, vocab) if mentions is None else mentions.get(rid)
        if found is None:
            n_failed += 1
            error = extraction_errors.get(rid, "object extraction failed")
            details.append(ResponseDetail(rid, text, "extraction_failed", gt_objects=sorted(gt), error=error))
            continue
        empty = not text.strip()
        n_empty += empty
        hallucinated = [m for m in found if m.category not in gt]
        n_scored += 1
        n_hall_resp += bool(hallucinated)
        n_with_mentions += bool(found)
        n_mentions += len(found)
        n_hall += len(hallucinated)
        gt_total += len(gt)
        gt_found += len({m.category for m in found} & gt)
        words += len(text.split())
        status = "empty" if empty else "ok"
        details.append(ResponseDetail(rid, text, status, list(found), hallucinated, sorted(gt)))
    summary = {
        "vocabulary": vocab.name,
        "CHAIRs": _ratio(n_hall_resp, n_scored),
        "CHAIRs_refine": _ratio(n_hall_resp, n_with_mentions),
        "CHAIRi": _ratio(n_hall, n_mentions),
        "recall": _ratio(gt_found, gt_total),
        "avg_len": _ratio(words, n_scored),
        "n_responses": len(responses),
        "n_scored": n_scored,
        "n_with_mentions": n_with_mentions,
        "n_hallucinated_responses": n_hall_resp,
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hall,
        "n_empty": n_empty,
        "n_missing_gt": n_missing,
        "n_extraction_failed": n_failed,
    }
    return ChairResult(summary, details)


# -- COCO ground truth -----------------------------------------------------------------------------
def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def coco_image_id(key: Hashable) -> Hashable:
    """COCO image ids are ints; accept '000000296284' or 296284 alike, leave anything else as is."""
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return key


def load_coco_ground_truth(
    coco_dir: str | Path, vocab: ChairVocabulary | None = None, image_ids: Iterable[Hashable] | None = None
) -> dict[int, set[str]]:
    """Per-image categories: instance labels plus objects named in the captions (val2014)."""
    vocab = vocab or ChairVocabulary.coco()
    wanted = None if image_ids is None else {coco_image_id(i) for i in image_ids}
    inst_path = benchmarks.coco_annotation_path(coco_dir, "instances_val2014.json")
    caps_path = benchmarks.coco_annotation_path(coco_dir, "captions_val2014.json")
    instances = _load_json(inst_path)
    captions = _load_json(caps_path)
    truth: dict[int, set[str]] = {}
    for source in (instances, captions):
        for img in source.get("images", []):
            if wanted is None or img["id"] in wanted:
                truth.setdefault(img["id"], set())
    names: dict[int, str] = {}
    for i, cat in enumerate(instances.get("categories", [])):
        try:
            names[cat["id"]] = vocab.category_of(cat["name"])
        except KeyError as err:
            where = f"{inst_path}: categories[{i}] field 'name'"
            raise ValueError(f"{where}: {err} not in the {vocab.name} vocabulary") from err
    for i, ann in enumerate(instances.get("annotations", [])):
        if ann["image_id"] in truth:
            if ann["category_id"] not in names:
                where = f"{inst_path}: annotations[{i}] field 'category_id'"
                raise ValueError(f"{where}: unknown category {ann['category_id']}")
            truth[ann["image_id"]].add(names[ann["category_id"]])
    for ann in captions.get("annotations", []):
        if ann["image_id"] in truth:
            truth[ann["image_id"]].update(m.category for m in extract_mentions(ann["caption"], vocab))
    return truth


# -- optional LLM object extraction ----------------------------------------------------------------
EXTRACTION_PROMPT = """You extract the objects named in an answer about an image.

[Question]
{question}

[Answer]
{answer}

List every physical object that the answer says is visible in the image. Give object names only,
without colours, materials or other attributes, and only objects the answer itself mentions.
Reply with a JSON list of strings, e.g. ["dog", "frisbee"], or [] if there are none."""

EXTRACTION_NUDGE = 'Reply with only a JSON list of object names, e.g. ["dog", "frisbee"].'


def parse_object_list(text: str) -> list[str]:
    """The last JSON list of strings in a reply; ValueError if there is none."""
    for match in reversed(list(re.finditer(r"\[[^\[\]]*\]", text, flags=re.S))):
        try:
            value = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    raise ValueError(f"no JSON list of strings in reply {text[:200]!r}")


def llm_mentions(
    responses: Mapping[Hashable, str | None],
    vocab: ChairVocabulary,
    judge,
    questions: Mapping[Hashable, str] | None = None,
) -> tuple[dict[Hashable, list[Mention] | None], dict[Hashable, str]]:
    """Mentions found by asking `judge` for the object list, each item mapped through `vocab`.

    Returns (mentions per id, None where extraction failed; error per failed id). Offsets are None:
    the LLM names objects, it does not point at them.
    """
    ids = [rid for rid, text in responses.items() if (text or "").strip()]
    prompts = [
        [{"role": "user", "content": EXTRACTION_PROMPT.format(
            question=(questions or {}).get(rid, "Describe this image in detail."), answer=responses[rid])}]
        for rid in ids
    ]
    judged = judge.ask_many(prompts, parse_object_list, EXTRACTION_NUDGE)
    found: dict[Hashable, list[Mention] | None] = {rid: [] for rid in responses}
    errors: dict[Hashable, str] = {}
    for rid, result in zip(ids, judged, strict=True):
        if not result.ok:
            found[rid], errors[rid] = None, result.error
            continue
        found[rid] = [Mention(m.word, m.category, None, None)
                      for phrase in result.value for m in extract_mentions(phrase, vocab)]
    return found, errors


def evaluate_chair(
    responses: Mapping[Hashable, str | None],
    coco_dir: str | Path,
    *,
    vocab: ChairVocabulary | None = None,
    judge=None,
    questions: Mapping[Hashable, str] | None = None,
    image_ids: Mapping[Hashable, Hashable] | None = None,
) -> ChairResult:
    """Object HalBench CHAIR for `{image_id: response}` against COCO val2014 annotations in `coco_dir`.

    `coco_dir` holds `annotations/instances_val2014.json` and `annotations/captions_val2014.json`
    (see `benchmarks.fetch_coco_annotations`). When responses are keyed otherwise (several prompts
    per image), `image_ids` maps each key to its COCO image id. With a `judge` (a `JudgeClient`)
    objects are extracted by the LLM instead of word matching; the summary then records the judge model.
    """
    vocab = vocab or ChairVocabulary.coco()
    if image_ids is None:
        responses = {coco_image_id(k): v for k, v in responses.items()}
        questions = {coco_image_id(k): v for k, v in (questions or {}).items()}
        image_ids = {k: k for k in responses}
    images = {k: coco_image_id(image_ids[k]) for k in responses}
    by_image = load_coco_ground_truth(coco_dir, vocab, images.values())
    truth = {k: by_image[image] for k, image in images.items() if image in by_image}
    if judge is None:
        result = score_responses(responses, truth, vocab)
        result.summary["extraction"] = "word_match"
        return result
    known = {k: v for k, v in responses.items() if k in truth}  # no judge calls for unknown ids
    found, errors = llm_mentions(known, vocab, judge, questions)
    result = score_responses(responses, truth, vocab, mentions=found, extraction_errors=errors)
    result.summary.update(extraction="llm", judge=judge.usage())
    return result
