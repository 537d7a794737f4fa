"""CHAIR object hallucination (Rohrbach et al., 2018) as RLHF-V's Object HalBench runs it.

Upstream: RLHF-V `eval/eval_gpt_obj_halbench.py` (class `CHAIR`), https://github.com/RLHF-V/RLHF-V, run by
`script/eval_muffin_objhal.sh` with `--use_gpt`. Two ways to find the COCO objects an answer mentions:

- **words** (judge-free; upstream `caption_to_words`, also how the ground truth reads the 5 COCO captions):
  lower-case, split into words as `nltk.word_tokenize` does, lemmatise every word with NLTK's
  `WordNetLemmatizer` (noun POS, WordNet 3.0), merge two-word phrases (the table's multi-word synonyms, "home plate",
  "train track", "baby/adult <animal>", "passenger jet/train", "bow tie", "toilet seat"), drop "seat" when
  "toilet" is there, keep the words of the synonym table and map them to their category. Every mention counts.
- **llm** (upstream `get_gpt_resp` + `get_pred_objs_match`): answers of 3 words or fewer are not sent and have no
  objects; the others go to the judge as one *system* message (upstream's prompt,
  `resources/object_halbench_extraction_prompt.txt`; gpt-3.5-turbo-0613, temperature 0.2, max_tokens 512), the
  reply is parsed as a JSON list, and each listed object `x` is read as the phrase "a x": if its lemmas contain one
  of the two-word phrases above, those phrases are its objects; otherwise each run of consecutive nouns is one
  object, its lemmas joined ("dog collar", "baseball player"), and counts only if that whole string is in the
  synonym table. So "dog collar" is no dog and "baseball player" no person. Objects are de-duplicated per
  answer, then the toilet/seat rule and the table apply.

A mention whose category is not in the image's ground truth (COCO instance labels plus the objects named in the
captions) is a hallucination. Summary metrics (fractions, not percent):

- `CHAIRs`: responses with >= 1 hallucinated object / all scored responses (classic CHAIR_s).
- `CHAIRs_refine`: responses with >= 1 hallucinated object / responses mentioning >= 1 vocabulary
  object. This is RLHF-V's Object HalBench "Resp." column.
- `CHAIRi`: hallucinated mentions / all mentions (RLHF-V's "Mention" column).
- `recall`: ground-truth categories mentioned / ground-truth categories, summed over responses.

Kept as upstream, quirks included: WordNet's lemmatiser keeps "men" (WordNet lists "men" as a noun, and
`lemmatize` returns the shortest candidate, first on a tie), so "men" is no person in the word match, and
"vases" becomes "vas"; the table's "iPhone" never matches lower-cased text; "stove top oven" (three words) never
merges. Deviations, all forced or harmless: `nltk.word_tokenize` needs punkt (not installable here), so
sentences are split after `.`, `!` or `?` plus white space and each is tokenised by the same `NLTKWordTokenizer`
(punkt's abbreviation handling is lost; no table word is affected). Upstream's LLM path tags and lemmatises with
spaCy `en_core_web_trf` (not installable here): nouns are told apart by WordNet instead (a word before another
content word is a noun when its SemCor count as a noun is at least its count as adjective, verb or adverb and
it is no colour; the last content word is a noun when WordNet knows it as one; unknown words are nouns; function
words never are), and noun lemmas follow
spaCy's English rule lemmatiser (noun exceptions first, then suffix rules checked against the noun index, both
WordNet 3.0's, so "men" -> "man"). Upstream retries a failed or unparseable extraction (up to 100 times, then
crashes); here a reply that is not a JSON list is asked again once with a nudge, and what still fails is counted
in `n_extraction_failed` and left out of the metrics, never scored as "no objects". `avg_len` counts
whitespace-separated words (upstream splits on single spaces).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from rlhfv_nb.evaluate import benchmarks

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
        lowercase: bool = True,
    ) -> ChairVocabulary:
        """Parse one category per line, `category, synonym, synonym, ...`.

        Every multi-word term becomes a phrase matched as one unit; `extra_phrases` maps further
        two-word phrases to the term they count as; `drop_if_present` drops a word when another
        word occurs in the same text. Terms are lower-cased unless `lowercase=False` (upstream's COCO table is
        read as written, so its "iPhone" can never match lower-cased text).
        """
        synonyms: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            terms = [t.strip().lower() if lowercase else t.strip() for t in line.split(",")]
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
        return cls.from_synonyms_text(text, name="coco", extra_phrases=extra, drop_if_present=drop, lowercase=False)

    def category_of(self, label: str) -> str:
        """Category of a ground-truth label such as a COCO category name; KeyError if unknown."""
        label = label.strip()
        return self.synonyms[label] if label in self.synonyms else self.synonyms[label.lower()]


# -- words ---------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@cache
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer  # what nltk.word_tokenize uses per sentence

    return NLTKWordTokenizer()


def _align(tokens: Sequence[str], text: str, offset: int) -> list[tuple[int | None, int | None]]:
    """Character spans of `tokens` in `text` (the tokenizer rewrites '"' as `` or ''); None where not found."""
    spans: list[tuple[int | None, int | None]] = []
    pos = 0
    for tok in tokens:
        candidates = [tok, '"'] if tok in ("``", "''") else [tok]
        found = [(i, len(c)) for c in candidates if (i := text.find(c, pos)) >= 0]
        if not found:
            spans.append((None, None))
            continue
        i, n = min(found)
        spans.append((offset + i, offset + i + n))
        pos = i + n
    return spans


def tokenize(text: str) -> list[tuple[str, int | None, int | None]]:
    """Lower-cased words of `text` as `nltk.word_tokenize(text.lower())` splits them, with character offsets.

    Sentences are split after `.`, `!` or `?` followed by white space (punkt's job upstream); each sentence goes
    through NLTK's `NLTKWordTokenizer`, so punctuation and "'s" are words of their own.
    """
    low = text.lower()
    same_length = len(low) == len(text)  # offsets of the lower-cased text are the text's
    out: list[tuple[str, int | None, int | None]] = []
    start = 0
    for cut in [*(m.start() for m in _SENTENCE_END.finditer(low)), len(low)]:
        sentence = low[start:cut]
        if sentence.strip():
            tokens = _word_tokenizer().tokenize(sentence)
            spans = _align(tokens, sentence, start) if same_length else [(None, None)] * len(tokens)
            out += [(tok, s, e) for tok, (s, e) in zip(tokens, spans, strict=True)]
        start = cut
    return out


@lru_cache(maxsize=65536)
def lemmatize(word: str) -> str:
    """NLTK `WordNetLemmatizer().lemmatize(word)` (noun POS): upstream CHAIR's word normalisation."""
    # imported here: `python -m rlhfv_nb.evaluate.wordnet` must not find the module imported by the package
    from rlhfv_nb.evaluate.wordnet import lemmatizer

    return lemmatizer().lemmatize(word)


def _merge_pairs(words: Sequence[str], vocab: ChairVocabulary) -> list[tuple[str, int, int]]:
    """Upstream's left-to-right two-word merge: (term, first word index, last word index) per unit."""
    out, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if i + 1 < len(words) and pair in vocab.phrases:
            out.append((vocab.phrases[pair], i, i + 1))
            i += 2
        else:
            out.append((words[i], i, i))
            i += 1
    return out


def extract_mentions(text: str, vocab: ChairVocabulary) -> list[Mention]:
    """All vocabulary objects mentioned in `text`, in order, with character offsets into `text` (word match)."""
    tokens = tokenize(text)
    merged = _merge_pairs([lemmatize(tok) for tok, _, _ in tokens], vocab)
    present = {w for w, _, _ in merged}
    return [
        Mention(w, vocab.synonyms[w], tokens[i][1], tokens[j][2])
        for w, i, j in merged
        if w in vocab.synonyms and vocab.drop_if_present.get(w) not in present
    ]


# -- scoring ---------------------------------------------------------------------------------------
UNSCORED = ("missing_gt", "extraction_failed")  # statuses of responses left out of the metrics


@dataclass
class ResponseDetail:
    """Per-response CHAIR outcome. `status`: ok, empty, skipped_short (LLM path: <= 3 words, not sent, no
    objects), missing_gt or extraction_failed (the last two are left out of the metrics)."""

    id: Hashable
    text: str
    status: str
    mentions: list[Mention] = field(default_factory=list)
    hallucinated: list[Mention] = field(default_factory=list)
    gt_objects: list[str] = field(default_factory=list)
    error: str | None = None
    extracted_objects: list[str] | None = None  # LLM path: the names the judge listed
    extracted_terms: list[str] | None = None  # LLM path: after lemmas and compounds, before the table

    @property
    def objects(self) -> list[str]:
        return [m.category for m in self.mentions]


@dataclass
class ChairResult:
    summary: dict
    details: list[ResponseDetail]

    def counts(self) -> dict[str, dict[Hashable, tuple[int, int]]]:
        """Per scored response, the numerator and denominator of CHAIRs, CHAIRs_refine, CHAIRi and recall.

        Summed over responses they give the summary's fractions (a paired bootstrap resamples them).
        """
        scored = [d for d in self.details if d.status not in UNSCORED]
        return {
            "CHAIRs": {d.id: (int(bool(d.hallucinated)), 1) for d in scored},
            "CHAIRs_refine": {d.id: (int(bool(d.hallucinated)), int(bool(d.mentions))) for d in scored},
            "CHAIRi": {d.id: (len(d.hallucinated), len(d.mentions)) for d in scored},
            "recall": {d.id: (len(set(d.objects) & set(d.gt_objects)), len(d.gt_objects)) for d in scored},
        }

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
    skipped: Iterable[Hashable] = (),
) -> ChairResult:
    """CHAIR over `responses` against per-id ground-truth categories.

    `mentions` (optional) supplies already extracted mentions per id (LLM mode); None for an id
    means extraction failed: that response is reported and left out of the metrics. Ids missing
    from `ground_truth` are reported and left out; empty answers are scored (no mentions), and so are the
    `skipped` ids (status skipped_short).
    """
    skipped = set(skipped)
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
        status = "empty" if empty else "skipped_short" if rid in skipped else "ok"
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


# -- LLM object extraction (upstream's --use_gpt path) ---------------------------------------------
EXTRACTION_TEMPERATURE = 0.2  # upstream gpt4_grpc.Chat.chat_completion defaults: temperature 0.2, top_p 1,
EXTRACTION_MAX_TOKENS = 512  # max_tokens 512, no penalties
MAX_SKIPPED_WORDS = 3  # answers of this many words or fewer are not sent and have no objects
EXTRACTION_NUDGE = 'Reply with only the JSON list of object names, e.g. ["dog", "frisbee"].'


@cache
def extraction_prompt_template() -> str:
    """Upstream's extraction prompt, verbatim, with `{question}` and `{answer}` placeholders."""
    path = resources.files("rlhfv_nb.evaluate").joinpath("resources/object_halbench_extraction_prompt.txt")
    return path.read_text(encoding="utf-8")


def extraction_messages(question: str, answer: str) -> list[dict[str, str]]:
    """The chat upstream sends: the filled prompt as the only message, role *system*."""
    prompt = extraction_prompt_template().replace("{question}", question).replace("{answer}", answer)
    return [{"role": "system", "content": prompt}]


def is_short(answer: str | None) -> bool:
    """Upstream skips answers of 3 words or fewer (whitespace split): no judge call, no objects."""
    return len((answer or "").split()) <= MAX_SKIPPED_WORDS


def parse_object_list(text: str) -> list[str]:
    """The object list of an extraction reply; ValueError when there is none.

    Upstream: `json.loads(reply)`, else, when the reply contains '["', `json.loads` of its last line. Beyond
    upstream (which would ask again): the last JSON list of strings anywhere in the reply, and a bare `()` (the
    prompt calls that an empty JSON list) as []. A list holding anything but strings is rejected.
    """
    stripped = text.strip()
    candidates = [stripped]
    if '["' in stripped:
        candidates.append(stripped.split("\n")[-1])
    candidates += [m.group() for m in reversed(list(re.finditer(r"\[[^\[\]]*\]", stripped, flags=re.S)))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    if re.fullmatch(r"\(\s*\)\.?", stripped):
        return []
    raise ValueError(f"no JSON list of object names in reply {text[:200]!r}")


# Function words (never nouns): upstream's spaCy tagger knows them as DT, IN, CC, PRP, CD, ...; WordNet files
# some of them as nouns ("a", "in", "it", "one"), so they are listed.
_FUNCTION_WORDS_TEXT = """
a an the this that these those some any each every either neither no another other such what which whose
and or but nor so yet of in on at by for with without from to into onto over under above below behind beside
besides between among amid near next up down out off through throughout around across along against upon
within inside outside about beyond toward towards via per than like as
i you he she it we they me him her us them my your his its our their mine yours hers ours theirs
is are was were be been being am has have had do does did can could will would shall should may might must
one two three four five six seven eight nine ten eleven twelve several many few much more most all both
very too also not just only
"""
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
# spaCy's English noun rules (= WordNet morphy's noun substitutions), in order.
_NOUN_SUFFIX_RULES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                      ("shes", "sh"), ("men", "man"), ("ies", "y"))


@cache
def _noun_index() -> tuple[frozenset[str], dict[str, list[str]]]:
    """WordNet 3.0's noun lemmas and noun exceptions (noun.exc), as spaCy's English lemma tables hold them."""
    from rlhfv_nb.evaluate.wordnet import wordnet

    wn = wordnet()
    index = frozenset(wn.all_lemma_names("n"))
    exceptions: dict[str, list[str]] = {}
    with wn.open("noun.exc") as fh:
        for line in fh:
            inflected, *bases = line.split()
            exceptions[inflected] = bases
    return index, exceptions


@lru_cache(maxsize=65536)
def noun_lemma(word: str) -> str:
    """Lemma of a lower-case noun the way spaCy's English rule lemmatiser gives it (upstream's LLM path).

    spaCy leaves a singular (NN) noun as it is; for a plural it puts the exceptions first ("men" -> "man",
    "teeth" -> "tooth"), then the suffix rules whose result is a known noun ("vases" -> "vase", "glasses" ->
    "glass"), then, for an unknown word, the first rule's result ("hairdryers" -> "hairdryer"). Without a tagger,
    a word is taken as singular when no rule applies, or when it is a known noun ending in -ss, -us, -is or -as.
    """
    index, exceptions = _noun_index()
    if word in exceptions:
        return exceptions[word][0]
    derived = [word[: len(word) - len(old)] + new for old, new in _NOUN_SUFFIX_RULES if word.endswith(old)]
    derived = [d for d in derived if d]
    known = [d for d in derived if d in index or not d.isalpha()]
    if word in index and (not known or word.endswith(("ss", "us", "is", "as"))):
        return word
    if known:
        return known[0]
    if derived and word.endswith("s") and not word.endswith("ss"):
        return derived[0]
    return word


@lru_cache(maxsize=65536)
def _pos_counts(word: str) -> dict[str, int] | None:
    """SemCor counts of `word` per WordNet POS (n, v, a, r) over its base forms ("sleeping" counts as the verb
    "sleep" too); only the POS WordNet has it in; None if WordNet does not know the word."""
    from rlhfv_nb.evaluate.wordnet import wordnet

    wn = wordnet()
    counts: dict[str, int] = {}
    for pos in "nvar":
        forms = set(wn._morphy(word, pos))  # what WordNetLemmatizer uses
        if forms:
            counts[pos] = sum(lemma.count() for form in forms for lemma in wn.lemmas(form, pos)
                              if lemma.name().lower() == form)
    return counts or None


def _is_content(token: str) -> bool:
    return bool(re.search(r"[^\W\d_]", token)) and token not in _FUNCTION_WORDS and not token.startswith("'")


def noun_flags(tokens: Sequence[str]) -> list[bool]:
    """Which lower-case tokens a tagger would call nouns, from WordNet (stands in for spaCy's NN/NNS/NNP/NNPS).

    Function words and punctuation are not; a word WordNet does not know is; the last word of a run of content
    words (the head) is when WordNet has it as a noun; a word before another content word (a modifier) is when
    its SemCor count as a noun is at least its count as adjective, verb or adverb ("dog collar", but "red car"),
    unless it is a colour that WordNet also has as an adjective ("orange cat").
    """
    content = [_is_content(t) for t in tokens]
    flags = []
    for i, token in enumerate(tokens):
        if not content[i]:
            flags.append(False)
            continue
        counts = _pos_counts(token)
        if counts is None:
            flags.append(True)
        elif "n" not in counts:
            flags.append(False)
        elif i + 1 == len(tokens) or not content[i + 1]:
            flags.append(True)
        elif "a" in counts and _is_colour(token):
            flags.append(False)  # "orange cat", "tan dog": a tagger says JJ
        else:
            other = max((c for pos, c in counts.items() if pos != "n"), default=None)
            flags.append(other is None or counts["n"] >= other)
    return flags


@lru_cache(maxsize=65536)
def _is_colour(word: str) -> bool:
    """Whether one of `word`'s noun senses is a colour (WordNet hypernym color.n.01)."""
    from rlhfv_nb.evaluate.wordnet import wordnet

    wn = wordnet()
    colour = wn.synset("color.n.01")
    return any(colour in synset.closure(lambda s: s.hypernyms()) for synset in wn.synsets(word, "n"))


def refine_objects(objects: Iterable[str], vocab: ChairVocabulary) -> list[str]:
    """Upstream `get_pred_objs_match` for one answer: extracted object names -> normalised terms, de-duplicated.

    Each name is read as "a <name>": its two-word vocabulary phrases when it has any ("teddy bears" -> "teddy
    bear", "baby elephant" -> "elephant"), otherwise its runs of consecutive nouns with lemmas joined ("dog
    collar", "baseball player", "men" -> "man", "red car" -> "car").
    """
    refined: list[str] = []
    for name in objects:
        tokens = [tok for tok, _, _ in tokenize(f"a {name}")]
        lemmas = [noun_lemma(tok) for tok in tokens]
        terms = [term for term, i, j in _merge_pairs(lemmas, vocab) if j > i]
        if not terms:
            run: list[str] = []
            for lemma, noun in zip([*lemmas, ""], [*noun_flags(tokens), False], strict=True):
                if noun:
                    run.append(lemma)
                elif run:
                    terms.append(" ".join(run))
                    run = []
        refined += [t for t in terms if t not in refined]
    return refined


def terms_to_mentions(terms: Sequence[str], vocab: ChairVocabulary) -> list[Mention]:
    """Upstream `caption_objects_to_coco_objects`: the toilet/seat rule, then the terms of the table."""
    present = set(terms)
    return [Mention(t, vocab.synonyms[t], None, None) for t in terms
            if t in vocab.synonyms and vocab.drop_if_present.get(t) not in present]


@dataclass
class Extraction:
    """LLM extraction of one answer: the listed names, or the reason there are none."""

    objects: list[str] | None = None  # as the judge listed them
    terms: list[str] = field(default_factory=list)  # after refine_objects
    mentions: list[Mention] | None = None  # None: failed
    skipped: bool = False  # 3 words or fewer: not sent
    error: str | None = None
    replies: list[str] = field(default_factory=list)


def llm_extract(
    answers: Mapping[Hashable, str | None],
    questions: Mapping[Hashable, str],
    vocab: ChairVocabulary,
    judge,
) -> dict[Hashable, Extraction]:
    """Object mentions per answer from `judge` (a `JudgeClient`), as upstream's `--use_gpt` path finds them.

    Short answers are not sent. Each request is upstream's: the prompt as the one system message, temperature 0.2
    and max_tokens 512 set per call (whatever the client's defaults). A reply that is no JSON list is asked once
    more with a nudge (`JudgeClient.ask_many`, which caches only parsed replies); a judge error or a second bad
    reply leaves `mentions` None with the reason in `error`. A judge that is down raises (`JudgeDown`).
    """
    out = {rid: Extraction(mentions=[], skipped=True) for rid, a in answers.items() if is_short(a)}
    ids = [rid for rid in answers if rid not in out]
    chats = [extraction_messages(questions[rid], answers[rid] or "") for rid in ids]
    judged = judge.ask_many(chats, parse_object_list, EXTRACTION_NUDGE, temperature=EXTRACTION_TEMPERATURE,
                            max_tokens=EXTRACTION_MAX_TOKENS)
    for rid, result in zip(ids, judged, strict=True):
        if result.ok:
            terms = refine_objects(result.value, vocab)
            out[rid] = Extraction(result.value, terms, terms_to_mentions(terms, vocab), replies=list(result.replies))
        else:
            reason = result.error if getattr(result, "unparsed", False) else f"judge error: {result.error}"
            out[rid] = Extraction(error=reason, replies=list(result.replies))
    return {rid: out[rid] for rid in answers}


def evaluate_chair(
    responses: Mapping[Hashable, str | None],
    coco_dir: str | Path,
    *,
    image_ids: Mapping[Hashable, Hashable] | None = None,
    judge=None,
    method: str | None = None,
    questions: Mapping[Hashable, str] | None = None,
    vocab: ChairVocabulary | None = None,
) -> ChairResult:
    """Object HalBench CHAIR for `{key: answer}` against COCO val2014 annotations in `coco_dir`.

    `coco_dir` holds `annotations/instances_val2014.json` and `annotations/captions_val2014.json`
    (see `benchmarks.fetch_coco_annotations`). Keys are COCO image ids unless `image_ids` maps each key to
    one (several prompts per image). `method`: "words" (judge-free word match with WordNet lemmas) or "llm"
    (upstream's extraction through `judge`, a `JudgeClient`, at temperature 0.2 whatever the client's default;
    `questions` gives each key's prompt, which upstream's extraction prompt quotes); None or "auto": "llm" when a
    judge is given.

    The summary records `extraction` ("words (WordNet lemmas)" or "llm (<judge model>)"); the LLM path adds
    `n_skipped_short` (answers of <= 3 words, scored with no objects as upstream), `n_extraction_failed`
    (judge errors and unparseable replies: left out of the metrics), `extraction_temperature` and `judge` usage.
    """
    method = ("llm" if judge is not None else "words") if method in (None, "auto") else method
    if method not in ("words", "llm"):
        raise ValueError(f"method must be 'words', 'llm' or 'auto', not {method!r}")
    if method == "llm" and judge is None:
        raise ValueError("method='llm' needs a judge (a JudgeClient); use method='words' for the judge-free match")
    vocab = vocab or ChairVocabulary.coco()
    if image_ids is None:
        responses = {coco_image_id(k): v for k, v in responses.items()}
        questions = None if questions is None else {coco_image_id(k): v for k, v in questions.items()}
        image_ids = {k: k for k in responses}
    images = {k: coco_image_id(image_ids[k]) for k in responses}
    by_image = load_coco_ground_truth(coco_dir, vocab, images.values())
    truth = {k: by_image[image] for k, image in images.items() if image in by_image}
    if method == "words":
        result = score_responses(responses, truth, vocab)
        result.summary["extraction"] = "words (WordNet lemmas)"
        return result
    known = {k: v for k, v in responses.items() if k in truth}  # no judge calls for unknown ids
    missing = [k for k, v in known.items() if not is_short(v) and k not in (questions or {})]
    if missing:
        raise ValueError(f"LLM extraction quotes each answer's question: `questions` lacks {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(known)})")
    extracted = llm_extract(known, questions or {}, vocab, judge)
    result = score_responses(
        responses, truth, vocab,
        mentions={k: e.mentions for k, e in extracted.items()},
        extraction_errors={k: e.error for k, e in extracted.items() if e.error is not None},
        skipped={k for k, e in extracted.items() if e.skipped},
    )
    for detail in result.details:
        if detail.id in extracted:
            detail.extracted_objects = extracted[detail.id].objects
            detail.extracted_terms = extracted[detail.id].terms
    result.summary.update(
        extraction=f"llm ({judge.model})",
        n_skipped_short=sum(e.skipped for e in extracted.values()),
        extraction_temperature=EXTRACTION_TEMPERATURE,
        extraction_max_tokens=EXTRACTION_MAX_TOKENS,
        judge=judge.usage(),
    )
    return result
