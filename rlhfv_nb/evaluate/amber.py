"""AMBER (Wang et al., 2023, arXiv:2311.07397): an LLM-free hallucination benchmark, generative and discriminative.

Data (github.com/junyangwang0410/AMBER, branch `master`, read at commit 534babf): 1,004 images
`AMBER_<n>.jpg` (not in the repository: a Google Drive zip linked from its README, see `AMBER_IMAGES_URL`);
`data/query/query_generative.json` (1,004 queries "Describe this image.", ids 1-1004) and
`data/query/query_discriminative.json` (14,216 yes/no queries, ids 1005-15220), rows `{id, image, query}`;
`data/annotations.json` (15,220 rows `{id, type, truth}`, the k-th has id k; generative rows also have `hallu`);
`data/relation.json` (340 objects -> related words); `data/safe_words.txt` (9 words). The per-dimension query files
(`query_discriminative-{existence,attribute,relation}.json`) and `query_all.json` are subsets/unions of these two.

Scoring follows the repository's `inference.py` line by line (`score_amber`):

Generative (per response): nouns = NLTK `word_tokenize` -> `pos_tag` -> tags starting "NN" -> WordNet lemma
(`WordNetLemmatizer().lemmatize(w)`, noun, case kept); only nouns in the vocabulary (keys and values of
relation.json) count, every occurrence. Truth objects extended by their relation.json words form the safe list,
`hallu` objects extended likewise the hallucination list. For each noun in order: a global safe word is skipped
(not hallucinated, still counted); a noun in the safe list marks the first matching truth object covered; else a
noun in the hallucination list marks that object "cognised", then (spaCy similarity > 0.8) the first similar
hallucination-list word is marked, and a noun similar to a safe-list word marks it covered and is not a
hallucination; any other noun is a hallucination. Then
  CHAIR = hallucinated nouns / vocabulary nouns;   Cover = covered truth objects / truth objects;
  Hal = responses with >= 1 hallucinated noun / responses;   Cog = cognised `hallu` objects / `hallu` objects.

Discriminative: "No" is the positive class. accuracy = correct / n; precision = (truth no and answered No) /
answered No; recall = (truth no and answered No) / truth no; F1 = 2PR / (P + R). Dimensions by annotation
`type`: existence = `discriminative-hallucination`; attribute = `discriminative-attribute-{state,number,action}`
(also reported apart); relation = `discriminative-relation` and `relation` (upstream's catch-all branch); overall
= all of them. The AMBER score is defined in the paper, not in the repository: (1 - CHAIR + F1) / 2 (in percent
(100 - CHAIR + F1) / 2), CHAIR generative, F1 the overall discriminative F1.

Numbers: `score_amber` returns exact fractions 0..1 (a ratio with an empty denominator is 0.0, which is what
upstream's 0.001-initialised denominators give). `details["upstream_report"]` repeats upstream's printed arithmetic
to the digit: percent rounded to 0.1, denominators started at 0.001 (0.003 for the pooled attribute), F1 from the
rounded P and R with +0.0001 (+0.001 for existence) in the denominator -- so a perfect existence precision
prints as 99.9.

Where numbers can differ from upstream (everything else is as `inference.py`):
1. Similarity. Upstream calls `en_core_web_lg` (`nlp(a).similarity(nlp(b)) > 0.8`), which no registry reachable
   here provides. Default: no similarity step, i.e. exact lemma match plus relation.json's lists (which upstream
   uses as well). Given the same nouns, the set of hallucinated nouns can only grow, so CHAIR and Hal are upper
   bounds of upstream's and Cover and Cog lower bounds. Pass `similarity=spacy_similarity()` where spaCy and
   en_core_web_lg are installed to restore upstream exactly, or any `(word, word) -> float`.
2. Noun extraction (`noun_extractor`, each part picked by availability, recorded in `details["nlp"]`):
   - tokens: `nltk.word_tokenize` if NLTK and its punkt data load, else `tokenize` (a Penn-Treebank-like regex:
     clitics 's/n't split, hyphenated words kept whole, "cannot" -> can not);
   - POS: `nltk.pos_tag` if its tagger data loads, else Honnibal's averaged perceptron (the algorithm and
     features of NLTK's `pos_tag`) with the WSJ model shipped in the PyPI package `textblob-aptagger` if that
     is installed (not NLTK's own weights: some tags differ, e.g. in NLTK's doctest sentence "The quick brown
     fox jumps ..." this model tags "jumps" NNS, NLTK's VBZ), else the
     "tag-dictionary" rule: every token is a noun except "can" (MD) and "hot" (JJ), the only vocabulary words
     that the WSJ tagger's tag dictionary fixes to a non-noun tag. With this rule verb/adjective uses of other
     vocabulary words ("people watch", "a man painting", "to drink") count as nouns: CHAIR counts more mentions
     (and more hallucinations) than upstream;
   - lemmas: NLTK's `WordNetLemmatizer` if WordNet loads (`python -m rlhfv_nb.evaluate.wordnet` installs it),
     else `offline_lemmatizer`: `inflect` singular forms, vocabulary words and words with a capital letter kept
     (WordNet never lemmatises those), plus a table of the cases where WordNet 3.0 (NLTK 3.10) lemmatises a
     form of the vocabulary differently (e.g. "men" stays "men", "vases" -> "vas", "sunglasses" ->
     "sunglass", "bedsheets" unknown to WordNet stays plural) -- so forms of the vocabulary lemmatise as
     upstream; other words may not.
3. Answers. Upstream needs discriminative responses to be exactly "Yes" or "No"; here a reply whose first word
   is yes/no (any case, leading punctuation skipped) counts as that answer and anything else is neither (wrong,
   and not a "No"). Items absent from `answers` (or None) are left out and listed in `details["missing"]`,
   as upstream scores only the responses in its file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import util as importlib_util
from pathlib import Path

from rlhfv_nb.evaluate import benchmarks
from rlhfv_nb.evaluate.benchmarks import BenchmarkDataError

AMBER_BASE_URL = "https://raw.githubusercontent.com/junyangwang0410/AMBER/master/"
AMBER_IMAGES_URL = "https://drive.google.com/file/d/1MaCHgtupcZUjf007anNl4_MV0o4DjXvl/view?usp=sharing"
AMBER_IMAGE_ENV = "AMBER_IMAGE_DIR"
# key -> path inside the repository
AMBER_FILES = {
    "annotations": "data/annotations.json",
    "relation": "data/relation.json",
    "safe_words": "data/safe_words.txt",
    "generative": "data/query/query_generative.json",
    "discriminative": "data/query/query_discriminative.json",
}
# rows (objects for relation.json, lines for safe_words.txt) of the upstream files
AMBER_ROWS = {"annotations": 15220, "relation": 340, "safe_words": 9, "generative": 1004, "discriminative": 14216}
QUERY_FIELDS = ("id", "image", "query")
ANNOTATION_FIELDS = ("id", "type", "truth")
KINDS = ("generative", "discriminative")
SIMILARITY_THRESHOLD = 0.8  # inference.py --similarity_score default; a pair counts when similarity > threshold
# annotation type -> (dimension, attribute sub-dimension or None)
TYPES = {
    "generative": ("generative", None),
    "discriminative-hallucination": ("existence", None),
    "discriminative-attribute-state": ("attribute", "state"),
    "discriminative-attribute-number": ("attribute", "number"),
    "discriminative-attribute-action": ("attribute", "action"),
    "discriminative-relation": ("relation", None),
    "relation": ("relation", None),
}
DIMENSIONS = ("generative", "existence", "attribute", "relation")


# -- data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AmberLexicon:
    """relation.json and safe_words.txt: what generative scoring matches nouns against."""

    association: Mapping[str, tuple[str, ...]]
    safe_words: frozenset[str]
    vocabulary: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        words = set(self.association)
        for related in self.association.values():
            words.update(related)
        object.__setattr__(self, "vocabulary", frozenset(words))

    @classmethod
    def from_data(cls, relation: Mapping[str, Sequence[str]], safe_words: Iterable[str]) -> AmberLexicon:
        return cls({k: tuple(v) for k, v in relation.items()}, frozenset(safe_words))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON ({err})") from err


def _read_rows(path: Path, expected: int | None, fields: Sequence[str]) -> list[dict]:
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkDataError(f"{path}: expected a JSON list")
    for i, row in enumerate(rows):
        benchmarks.check_fields(row, fields, f"{path}: row {i + 1}")
    benchmarks.check_rows(rows, expected, path)
    return rows


def fetch_amber(cache_dir: str | Path | None = None, base_url: str = AMBER_BASE_URL) -> dict[str, Path]:
    """Download AMBER's query, annotation and word files once into `<cache>/amber/` (upstream's layout)."""
    folder = Path(cache_dir) if cache_dir is not None else benchmarks.default_cache_dir()
    folder = folder / "amber"
    base = base_url.rstrip("/") + "/"
    return {key: benchmarks.download(base + rel, folder / rel) for key, rel in AMBER_FILES.items()}


def load_amber_annotations(
    cache_dir: str | Path | None = None,
    base_url: str = AMBER_BASE_URL,
    kinds: Sequence[str] = KINDS,
    limit: int | None = None,
    expected_rows: Mapping[str, int] | None = AMBER_ROWS,
) -> list[dict]:
    """AMBER items without image bytes (enough to score saved answers); see `load_amber`."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
    rows = dict(expected_rows or {})
    paths = fetch_amber(cache_dir, base_url)
    annotations = _read_rows(paths["annotations"], rows.get("annotations"), ANNOTATION_FIELDS)
    for i, ann in enumerate(annotations):
        if ann["id"] != i + 1:  # inference.py reads ground_truth[id - 1]
            raise BenchmarkDataError(f"{paths['annotations']}: row {i + 1} has id {ann['id']!r}, "
                                     f"expected {i + 1}")
        if ann["type"] not in TYPES:
            raise BenchmarkDataError(f"{paths['annotations']}: row {i + 1}: unknown type {ann['type']!r}")
    relation = _read_json(paths["relation"])
    if not isinstance(relation, dict) or not all(isinstance(v, list) for v in relation.values()):
        raise BenchmarkDataError(f"{paths['relation']}: expected a JSON object of word -> list of words")
    benchmarks.check_rows(list(relation), rows.get("relation"), paths["relation"])
    safe = [w.strip() for w in paths["safe_words"].read_text(encoding="utf-8").splitlines() if w.strip()]
    benchmarks.check_rows(safe, rows.get("safe_words"), paths["safe_words"])
    lexicon = AmberLexicon.from_data(relation, safe)

    items: list[dict] = []
    taken = dict.fromkeys(DIMENSIONS, 0)
    for kind in kinds:
        for i, query in enumerate(_read_rows(paths[kind], rows.get(kind), QUERY_FIELDS)):
            where = f"{paths[kind]}: row {i + 1} (id {query['id']})"
            if not isinstance(query["id"], int) or not 1 <= query["id"] <= len(annotations):
                raise BenchmarkDataError(f"{where}: no annotation with this id")
            ann = annotations[query["id"] - 1]
            dimension, sub = TYPES[ann["type"]]
            if (dimension == "generative") != (kind == "generative"):
                raise BenchmarkDataError(f"{where}: annotation type {ann['type']!r} is not a {kind} type")
            if limit is not None and taken[dimension] >= limit:
                continue
            taken[dimension] += 1
            item = {"id": query["id"], "image_file": query["image"], "question": query["query"], "kind": kind,
                    "dimension": dimension, "type": ann["type"], "truth": ann["truth"]}
            if kind == "generative":
                benchmarks.check_fields(ann, ("hallu",), f"{paths['annotations']}: row {query['id']}")
                missing = [w for w in [*ann["truth"], *ann["hallu"]] if w not in lexicon.association]
                if missing:
                    raise BenchmarkDataError(f"{paths['annotations']}: row {query['id']}: objects {missing} "
                                             f"are not keys of {paths['relation']}")
                item.update(hallu=ann["hallu"], lexicon=lexicon)
            else:
                if ann["truth"] not in ("yes", "no"):
                    raise BenchmarkDataError(f"{paths['annotations']}: row {query['id']}: truth must be "
                                             "'yes' or 'no'")
                item["attribute"] = sub
            items.append(item)
    return items


def amber_image_dir(image_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """`image_dir`, else `$AMBER_IMAGE_DIR`, else `<cache>/amber/image`."""
    if image_dir is not None:
        return Path(image_dir)
    if os.environ.get(AMBER_IMAGE_ENV):
        return Path(os.environ[AMBER_IMAGE_ENV])
    cache = Path(cache_dir) if cache_dir is not None else benchmarks.default_cache_dir()
    return cache / "amber" / "image"


def _find_images(folder: Path, names: Sequence[str]) -> Path:
    """The folder holding all `names`: `folder` itself or its `image/` subfolder (the zip's own folder)."""
    for candidate in (folder, folder / "image"):
        if all((candidate / n).is_file() for n in names):
            return candidate
    missing = [n for n in names if not (folder / n).is_file()]
    raise FileNotFoundError(
        f"AMBER images not found: {len(missing)} of {len(names)} needed files are missing from {folder} "
        f"(e.g. {', '.join(missing[:3])}). The images are not in the AMBER GitHub repository: download the zip "
        f"linked from its README ({AMBER_IMAGES_URL}), unzip it, and pass the folder that holds "
        f"AMBER_1.jpg ... AMBER_1004.jpg as image_dir (or set ${AMBER_IMAGE_ENV}; a folder whose image/ "
        "subfolder holds them works too)."
    )


def load_amber(
    cache_dir: str | Path | None = None,
    base_url: str = AMBER_BASE_URL,
    image_dir: str | Path | None = None,
    kinds: Sequence[str] = KINDS,
    limit: int | None = None,
    expected_rows: Mapping[str, int] | None = AMBER_ROWS,
) -> list[dict]:
    """AMBER items, generative first, in upstream order.

    Each item: `id`, `image` (bytes of `AMBER_<n>.jpg`, one shared object per image), `image_file`, `question`
    (upstream's query verbatim), `kind` ("generative"/"discriminative"), `dimension` ("generative", "existence",
    "attribute", "relation"), `type` (the annotation's), `truth`; generative items also `hallu` and `lexicon`
    (an `AmberLexicon`), discriminative ones `attribute` ("state"/"number"/"action" or None).
    `limit` keeps the first N items of each dimension. The text files come from `base_url` (upstream's layout)
    and are cached; their row counts are checked against `expected_rows` (None: not checked).
    Images are read from `amber_image_dir(image_dir, cache_dir)`; a FileNotFoundError says how to get them.
    """
    items = load_amber_annotations(cache_dir, base_url, kinds, limit, expected_rows)
    folder = _find_images(amber_image_dir(image_dir, cache_dir), list(dict.fromkeys(i["image_file"] for i in items)))
    images: dict[str, bytes] = {}
    for item in items:
        name = item["image_file"]
        if name not in images:
            images[name] = (folder / name).read_bytes()
        item["image"] = images[name]
    return items


# -- noun extraction -------------------------------------------------------------------------------
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\w+(?:[-']\w+)*|[^\w\s]")
# tag-dictionary rule: vocabulary words that the WSJ perceptron tagger's tag dictionary fixes to a non-noun tag
TAG_DICTIONARY_NON_NOUNS = {"can": "MD", "hot": "JJ"}
# forms of the AMBER vocabulary that WordNet 3.0 (NLTK 3.10 WordNetLemmatizer, noun) lemmatises differently from
# `inflect` with vocabulary words kept: words WordNet does not know stay as they are, and a few known ones
WORDNET_LEMMA_EXCEPTIONS = {
    "men": "men", "vases": "vas", "sunglasses": "sunglass", "earrings": "earring", "chopsticks": "chopstick",
    "slippers": "slipper", "monies": "monies", "bedsheets": "bedsheets", "cooktops": "cooktops",
    "e-books": "e-books", "ebooks": "ebooks", "kiwifruits": "kiwifruits", "paragliders": "paragliders",
    "sanitizers": "sanitizers", "streetlamps": "streetlamps", "air-conditionings": "air-conditionings",
    "closestools": "closestools", "pissoirs": "pissoirs", "showerpuffs": "showerpuffs", "catholes": "catholes",
    "dogholes": "dogholes", "electrombiles": "electrombiles",
}


def tokenize(text: str) -> list[str]:
    """Penn-Treebank-like tokens: punctuation apart, clitics ('s, n't) split, hyphenated words whole."""
    out: list[str] = []
    for tok in _TOKEN.findall(text.replace("\u2019", "'")):
        low = tok.lower()
        if low.endswith("n't") and len(tok) > 3:
            out += [tok[:-3], tok[-3:]]
        elif low == "cannot":
            out += [tok[:3], tok[3:]]
        elif "'" in tok and not tok.startswith("'"):
            head, _, tail = tok.partition("'")
            out += [head, "'" + tail]
        else:
            out.append(tok)
    return out


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dicts, sets, lists, strings, numbers): a tagger model is nothing else."""

    _ALLOWED = {(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "dict", "list", "tuple")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"tagger model: {module}.{name} is not plain data")


class PerceptronTagger:
    """Greedy averaged-perceptron POS tagger (Honnibal 2013): the algorithm and features of NLTK's `pos_tag`."""

    START = ("-START-", "-START2-")
    END = ("-END-", "-END2-")

    def __init__(self, weights: Mapping[str, Mapping[str, float]], tagdict: Mapping[str, str],
                 classes: Iterable[str], name: str = "perceptron") -> None:
        self.weights, self.tagdict, self.classes, self.name = weights, tagdict, sorted(classes), name

    @classmethod
    def from_pickle(cls, path: str | Path, name: str | None = None) -> PerceptronTagger:
        """A `(weights, tagdict, classes)` pickle, as NLTK's and textblob-aptagger's models are stored."""
        with open(path, "rb") as f:
            weights, tagdict, classes = _WeightsUnpickler(f, encoding="latin1").load()
        return cls(weights, tagdict, classes, name or f"perceptron:{Path(path).name}")

    @staticmethod
    def _normalize(word: str) -> str:
        if "-" in word and word[0] != "-":
            return "!HYPHEN"
        if word.isdigit() and len(word) == 4:
            return "!YEAR"
        if word and word[0].isdigit():
            return "!DIGITS"
        return word.lower()

    def _predict(self, features: Mapping[str, int]) -> str:
        scores = dict.fromkeys(self.classes, 0.0)
        for feat, value in features.items():
            for label, weight in self.weights.get(feat, {}).items():
                scores[label] = scores.get(label, 0.0) + value * weight
        return max(self.classes, key=lambda label: (scores[label], label))

    def tag(self, tokens: Sequence[str]) -> list[str]:
        context = [*self.START, *(self._normalize(w) for w in tokens), *self.END]
        prev, prev2 = self.START
        tags = []
        for i, word in enumerate(tokens):
            tag = self.tagdict.get(word)
            if not tag:
                c = i + 2
                feats: dict[str, int] = {}
                for key in ("bias", f"i suffix {word[-3:]}", f"i pref1 {word[0] if word else ''}",
                            f"i-1 tag {prev}", f"i-2 tag {prev2}", f"i tag+i-2 tag {prev} {prev2}",
                            f"i word {context[c]}", f"i-1 tag+i word {prev} {context[c]}",
                            f"i-1 word {context[c - 1]}", f"i-1 suffix {context[c - 1][-3:]}",
                            f"i-2 word {context[c - 2]}", f"i+1 word {context[c + 1]}",
                            f"i+1 suffix {context[c + 1][-3:]}", f"i+2 word {context[c + 2]}"):
                    feats[key] = feats.get(key, 0) + 1
                tag = self._predict(feats)
            tags.append(tag)
            prev2, prev = prev, tag
        return tags


@cache
def textblob_perceptron() -> PerceptronTagger | None:
    """Honnibal's WSJ model from the installed `textblob-aptagger` package (not imported), or None."""
    spec = importlib_util.find_spec("textblob_aptagger")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "trontagger-0.1.0.pickle"
        if path.is_file():
            return PerceptronTagger.from_pickle(path, "perceptron:textblob-aptagger")
    return None


def _textblob_tag() -> Callable[[Sequence[str]], list[str]] | None:
    tagger = textblob_perceptron()
    return tagger.tag if tagger else None


def tag_dictionary_tags(tokens: Sequence[str]) -> list[str]:
    """No tagger: every token "NN" except the `TAG_DICTIONARY_NON_NOUNS` words."""
    return [TAG_DICTIONARY_NON_NOUNS.get(t, "NN") for t in tokens]


@cache
def _inflect_engine():  # imported lazily: `import inflect` takes seconds
    import inflect

    return inflect.engine()


def offline_lemmatizer(vocabulary: Iterable[str]) -> Callable[[str], str]:
    """WordNet's noun lemmas for forms of `vocabulary`, without WordNet (see the module docstring)."""
    keep = frozenset(vocabulary)

    @cache
    def lemma(word: str) -> str:
        if word in WORDNET_LEMMA_EXCEPTIONS:
            return WORDNET_LEMMA_EXCEPTIONS[word]
        if word in keep or not word.islower():
            return word
        return _inflect_engine().singular_noun(word) or word

    return lemma


def _nltk_part(name: str) -> Callable | None:
    """An NLTK function whose data loads (`word_tokenize`, `pos_tag`, `lemmatize`), else None."""
    try:
        import nltk

        if name == "word_tokenize":
            nltk.word_tokenize("A dog.")
            return nltk.word_tokenize
        if name == "pos_tag":
            nltk.pos_tag(["dog"])
            return lambda tokens: [t for _, t in nltk.pos_tag(list(tokens))]
        from nltk.stem import WordNetLemmatizer

        lemmatizer = WordNetLemmatizer()
        lemmatizer.lemmatize("dogs")
        return lemmatizer.lemmatize
    except (ImportError, LookupError, OSError):
        return None


@dataclass(frozen=True)
class NounExtractor:
    """Text -> lemmatised nouns, as upstream's `extract_nouns`; `names` says which backend did each step."""

    tokenize: Callable[[str], list[str]]
    tag: Callable[[Sequence[str]], list[str]]
    lemmatize: Callable[[str], str]
    names: Mapping[str, str]

    def __call__(self, text: str) -> list[str]:
        tokens = self.tokenize(text)
        return [self.lemmatize(w) for w, t in zip(tokens, self.tag(tokens)) if t.startswith("NN")]


def noun_extractor(
    vocabulary: Iterable[str],
    tokenizer: str = "auto",
    tagger: str | PerceptronTagger = "auto",
    lemmatizer: str = "auto",
) -> NounExtractor:
    """Upstream's noun extraction from what is installed.

    tokenizer: "nltk" | "regex"; tagger: "nltk" | "perceptron" (textblob-aptagger's model) | "tag-dictionary" |
    a `PerceptronTagger`; lemmatizer: "wordnet" | "offline". "auto" takes the first that loads, in that order.
    A named backend that cannot load raises RuntimeError.
    """

    def pick(kind: str, choice: str, options: dict[str, Callable[[], Callable | None]]) -> tuple[str, Callable]:
        for name in (options if choice == "auto" else [choice]):
            if name not in options:
                raise ValueError(f"unknown {kind} {name!r}; choose one of {list(options)} or 'auto'")
            found = options[name]()
            if found is not None:
                return name, found
        raise RuntimeError(f"{kind} {choice!r} is not available here (is NLTK and its data installed?)")

    tok_name, tok = pick("tokenizer", tokenizer, {"nltk": lambda: _nltk_part("word_tokenize"),
                                                   "regex": lambda: tokenize})
    if isinstance(tagger, PerceptronTagger):
        tag_name, tag = tagger.name, tagger.tag
    else:
        tag_name, tag = pick("tagger", tagger, {
            "nltk": lambda: _nltk_part("pos_tag"),
            "perceptron": _textblob_tag,
            "tag-dictionary": lambda: tag_dictionary_tags,
        })
    lem_name, lem = pick("lemmatizer", lemmatizer, {"wordnet": lambda: _nltk_part("lemmatize"),
                                                     "offline": lambda: offline_lemmatizer(vocabulary)})
    return NounExtractor(tok, tag, lem, {"tokenizer": tok_name, "tagger": tag_name, "lemmatizer": lem_name})


def spacy_similarity(model: str = "en_core_web_lg") -> Callable[[str, str], float]:
    """Upstream's `check_synonyms_word` similarity, `nlp(a).similarity(nlp(b))`, from an installed spaCy model."""
    import spacy

    nlp = spacy.load(model)
    doc = cache(nlp)

    def similarity(a: str, b: str) -> float:
        return doc(a).similarity(doc(b))

    similarity.name = f"spacy:{model}"  # type: ignore[attr-defined]
    return similarity


# -- scoring ---------------------------------------------------------------------------------------
_YES_NO = re.compile(r"[\W_]*(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str | None) -> str | None:
    """"Yes" or "No" when the reply's first word is yes/no (any case), else None."""
    m = _YES_NO.match(text or "")
    return m.group(1).capitalize() if m else None


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _first(words: Sequence[tuple[str, int]], match: Callable[[str], bool]) -> int | None:
    return next((owner for word, owner in words if match(word)), None)


def score_generative(
    item: Mapping, response: str, nouns: Callable[[str], list[str]],
    similarity: Callable[[str, str], float] | None = None, threshold: float = SIMILARITY_THRESHOLD,
) -> dict:
    """One description against its annotation, as upstream's generative branch (see the module docstring)."""
    lex: AmberLexicon = item["lexicon"]
    truth, hallu = list(item["truth"]), list(item["hallu"])
    found = [n for n in nouns(response) if n in lex.vocabulary]
    # (word, index of the object it stands for): related words first, then the objects, as upstream's lists
    safe = [(w, i) for i, t in enumerate(truth) for w in lex.association[t]] + [(t, i) for i, t in enumerate(truth)]
    halls = [(w, i) for i, h in enumerate(hallu) for w in lex.association[h]] + [(h, i) for i, h in enumerate(hallu)]
    covered, cognised, flags = [False] * len(truth), [False] * len(hallu), []

    def similar(noun: str) -> Callable[[str], bool]:
        return lambda word: similarity is not None and similarity(noun, word) > threshold

    for noun in found:
        flags.append(False)
        if noun in lex.safe_words:
            continue
        if (j := _first(safe, noun.__eq__)) is not None:
            covered[j] = True
            continue
        if (j := _first(halls, noun.__eq__)) is not None:
            cognised[j] = True
        if similarity is not None:
            if (j := _first(halls, similar(noun))) is not None:
                cognised[j] = True
            if (j := _first(safe, similar(noun))) is not None:
                covered[j] = True
                continue
        flags[-1] = True
    return {
        "nouns": found,
        "hallucinated": [n for n, f in zip(found, flags) if f],
        "covered": [t for t, c in zip(truth, covered) if c],
        "cognised": [h for h, c in zip(hallu, cognised) if c],
        "counts": {"mentions": len(found), "hallucinated": sum(flags), "truth": len(truth),
                   "covered": sum(covered), "hallu": len(hallu), "cognised": sum(cognised)},
    }


def _pool(counts: Mapping[str, Mapping[str, int]], types: Iterable[str]) -> dict[str, int]:
    keys = ("n", "correct", "truth_no", "answered_no", "true_no")
    return {k: sum(counts.get(t, {}).get(k, 0) for t in types) for k in keys}


_GROUPS = {
    "overall": tuple(t for t in TYPES if t != "generative"),
    "existence": ("discriminative-hallucination",),
    "attribute": tuple(t for t, (d, _) in TYPES.items() if d == "attribute"),
    "attribute_state": ("discriminative-attribute-state",),
    "attribute_number": ("discriminative-attribute-number",),
    "attribute_action": ("discriminative-attribute-action",),
    "relation": ("discriminative-relation", "relation"),
}


def _classification(c: Mapping[str, int]) -> dict:
    precision, recall = _ratio(c["true_no"], c["answered_no"]), _ratio(c["true_no"], c["truth_no"])
    return {"accuracy": _ratio(c["correct"], c["n"]), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall), "n": c["n"]}


def upstream_report(counts: Mapping) -> dict:
    """Percentages exactly as `inference.py` prints them, from `details["counts"]` (see the module docstring)."""
    out: dict = {}
    g = counts.get("generative")
    if g and g["responses"]:
        e = 0.001  # metrics.txt starts every denominator at 0.001
        out["generative"] = {
            "CHAIR": round(g["hallucinated"] / (g["mentions"] + e) * 100, 1),
            "Cover": round(g["covered"] / (g["truth"] + e) * 100, 1),
            "Hal": round(100 - (g["responses"] - g["hallucinating"]) / (g["responses"] + e) * 100, 1),
            "Cog": round(g["cognised"] / (g["hallu"] + e) * 100, 1),
        }
    d = counts.get("discriminative", {})
    disc = {}
    for group, types in _GROUPS.items():
        c = _pool(d, types)
        if not c["n"]:
            continue
        e = 0.001 * (len(types) if group == "attribute" else 1)  # pooled attribute sums three 0.001 starts
        p = round(c["true_no"] / (c["answered_no"] + e) * 100, 1)
        r = round(c["true_no"] / (c["truth_no"] + e) * 100, 1)
        f1_eps = 0.001 if group == "existence" else 0.0001
        disc[group] = {"accuracy": round(c["correct"] / (c["n"] + e) * 100, 1), "precision": p, "recall": r,
                       "f1": round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + f1_eps) * 100, 1)}
    if disc:
        out["discriminative"] = disc
    if "generative" in out and "overall" in disc:
        out["amber_score"] = round((100 - out["generative"]["CHAIR"] + disc["overall"]["f1"]) / 2, 2)
    return out


def score_amber(
    items: Sequence[Mapping],
    answers: Mapping[int | str, str | None],
    *,
    similarity: Callable[[str, str], float] | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    nouns: Callable[[str], list[str]] | None = None,
) -> tuple[dict, dict]:
    """AMBER metrics (fractions 0..1) and details for `answers` (item id -> reply; str ids accepted).

    metrics: {"generative": {CHAIR, Cover, Hal, Cog, n}, "discriminative": {"overall" | "existence" |
    "attribute" | "attribute_state" | "attribute_number" | "attribute_action" | "relation":
    {accuracy, precision, recall, f1, n}}, "amber_score": (1 - CHAIR + overall F1) / 2 or None};
    sections without scored items are left out. details: "counts", "upstream_report" (percent, upstream's
    rounding), "items" (per id: nouns, hallucinated, covered, cognised / truth, answer, correct), "missing",
    "unparsed" (discriminative replies that are neither yes nor no), "nlp" (backends used).
    `nouns` defaults to `noun_extractor(vocabulary)`; `similarity` (e.g. `spacy_similarity()`) enables
    upstream's similarity step with `threshold`.
    """
    per_item: dict = {}
    missing: list = []
    unparsed = 0
    gen = {"responses": 0, "hallucinating": 0, "mentions": 0, "hallucinated": 0, "truth": 0, "covered": 0,
           "hallu": 0, "cognised": 0}
    disc: dict[str, dict[str, int]] = {}
    extractors: dict[int, Callable[[str], list[str]]] = {}
    nlp: dict = {}
    for item in items:
        answer = answers.get(item["id"], answers.get(str(item["id"])))
        if answer is None:
            missing.append(item["id"])
            continue
        if item["kind"] == "generative":
            lex = item["lexicon"]
            extract = nouns
            if extract is None:
                if id(lex) not in extractors:
                    extractors[id(lex)] = noun_extractor(lex.vocabulary)
                extract = extractors[id(lex)]
            nlp.update(getattr(extract, "names", {"nouns": "custom"}))
            result = score_generative(item, answer, extract, similarity, threshold)
            c = result.pop("counts")
            for key in ("mentions", "hallucinated", "truth", "covered", "hallu", "cognised"):
                gen[key] += c[key]
            gen["responses"] += 1
            gen["hallucinating"] += c["hallucinated"] > 0
            per_item[item["id"]] = result
        else:
            pred = parse_yes_no(answer)
            unparsed += pred is None
            truth = item["truth"]
            correct = pred == truth.capitalize()
            c = disc.setdefault(item["type"], dict.fromkeys(("n", "correct", "truth_no", "answered_no", "true_no"), 0))
            c["n"] += 1
            c["correct"] += correct
            c["truth_no"] += truth == "no"
            c["answered_no"] += pred == "No"
            c["true_no"] += truth == "no" and pred == "No"
            per_item[item["id"]] = {"truth": truth, "answer": pred, "correct": correct}

    metrics: dict = {}
    if gen["responses"]:
        metrics["generative"] = {
            "CHAIR": _ratio(gen["hallucinated"], gen["mentions"]),
            "Cover": _ratio(gen["covered"], gen["truth"]),
            "Hal": _ratio(gen["hallucinating"], gen["responses"]),
            "Cog": _ratio(gen["cognised"], gen["hallu"]),
            "n": gen["responses"],
        }
        nlp.update(similarity=getattr(similarity, "name", "custom") if similarity else None, threshold=threshold)
    groups = {g: _classification(c) for g, types in _GROUPS.items() if (c := _pool(disc, types))["n"]}
    if groups:
        metrics["discriminative"] = groups
    metrics["amber_score"] = (
        (1 - metrics["generative"]["CHAIR"] + groups["overall"]["f1"]) / 2
        if "generative" in metrics and "overall" in groups else None
    )
    counts = {"generative": gen, "discriminative": disc}
    details = {"counts": counts, "upstream_report": upstream_report(counts), "items": per_item,
               "missing": missing, "unparsed": unparsed, "nlp": nlp}
    return metrics, details
