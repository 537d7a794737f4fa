"""AMBER: data loading (cache, local HTTP server, images), upstream scoring on hand-made fixtures."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest

from rlhfv_nb.evaluate import amber

FIXTURE = Path(__file__).parent / "fixtures" / "amber"  # laid out like the upstream repository (data/...)
FIXTURE_ROWS = {"annotations": 10, "relation": 14, "safe_words": 2, "generative": 2, "discriminative": 8}
OFFLINE = {"tokenizer": "regex", "tagger": "tag-dictionary", "lemmatizer": "offline"}

# Hand-made answers for the fixture items. Nouns below are those of the offline extractor (regex tokens, the
# tag-dictionary rule, offline lemmas), restricted to the fixture vocabulary (keys and values of relation.json).
ANSWERS = {
    # nouns: puppy grass car dog light ("men" stays "men" as in WordNet, so it is no "man"; "hot" JJ, "can" MD).
    # truth dog grass person (+ puppy, ground, people/man/woman); hallu cat car (+ kitten, vehicle); safe: light
    # puppy -> covers dog; grass -> covers grass; car -> cognised car, hallucinated; dog -> dog; light -> safe word
    1: "A puppy and two men sit on the grass near a car. A hot dog can be seen in the light.",
    # nouns: bench tree bench ("vases" -> "vas" as in WordNet, not "vase"): all covered, no hallucination
    2: "A bench stands under the trees. There are vases on the bench.",
    3: "Yes, it is.",  # state, truth yes: correct
    4: "No.",  # state, truth no: correct, a true "No"
    5: "yes",  # number, truth no: wrong
    6: "No",  # action, truth yes: wrong, a false "No"
    7: "No, there is not.",  # existence, truth no: correct, true "No"
    8: "There is no cat.",  # existence, truth no: neither yes nor no -> wrong (upstream needs exactly "No")
    9: "Yes",  # relation, truth yes: correct
    10: "no",  # relation ("relation" type), truth no: correct, true "No"
}
# generative: mentions 5 + 3 = 8, hallucinated 1 + 0; truth 3 + 2 = 5, covered 2 + 2; hallu 2 + 1 = 3, cognised 1
#   CHAIR 1/8, Cover 4/5, Hal 1/2, Cog 1/3
# discriminative ("No" positive): overall n 8, correct {3,4,7,9,10} = 5, truth no {4,5,7,8,10} = 5,
#   answered No {4,6,7,10} = 4, true No {4,7,10} = 3 -> acc 5/8, P 3/4, R 3/5, F1 2*.75*.6/1.35 = 2/3
#   existence {7,8}: acc 1/2, P 1/1, R 1/2, F1 2/3;  attribute {3,4,5,6}: acc 2/4, P 1/2, R 1/2, F1 1/2
#   state {3,4}: all 1;  number {5}: acc 0, P 0/0 -> 0, R 0/1, F1 0;  action {6}: acc 0, P 0/1, R 0/0 -> 0, F1 0
#   relation {9,10}: all 1
# AMBER score: (1 - 1/8 + 2/3) / 2 = 0.7708333...


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache folder already holding the fixture files (nothing to download)."""
    shutil.copytree(FIXTURE, tmp_path / "cache" / "amber")
    return tmp_path / "cache"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for n in (1, 2):
        (folder / f"AMBER_{n}.jpg").write_bytes(f"jpeg bytes {n}".encode())
    return folder


def offline_items(cache: Path, **kw) -> list[dict]:
    return amber.load_amber_annotations(cache, base_url="http://127.0.0.1:9/unused/", expected_rows=FIXTURE_ROWS, **kw)


def score(items: list[dict], answers: dict, **kw) -> tuple[dict, dict]:
    nouns = amber.noun_extractor(items[0]["lexicon"].vocabulary, **OFFLINE)
    return amber.score_amber(items, answers, nouns=nouns, **kw)


# -- data ------------------------------------------------------------------------------------------
def test_load_amber_fetches_from_http_server_and_caches(file_server, tmp_path: Path, images: Path) -> None:
    url, root = file_server
    shutil.copytree(FIXTURE / "data", root / "data")
    items = amber.load_amber(tmp_path / "c", base_url=url + "/", image_dir=images, expected_rows=FIXTURE_ROWS)

    assert [i["id"] for i in items] == list(range(1, 11))
    first, disc = items[0], items[2]
    assert first["image"] == b"jpeg bytes 1" and first["image_file"] == "AMBER_1.jpg"
    assert first["question"] == "Describe this image." and first["kind"] == "generative"
    assert first["truth"] == ["dog", "grass", "person"] and first["hallu"] == ["cat", "car"]
    assert first["lexicon"].association["person"] == ("people", "man", "woman")
    assert first["lexicon"].safe_words == {"light", "line"}
    assert disc["question"] == "Is the grass green in this image?" and disc["truth"] == "yes"
    assert (disc["dimension"], disc["attribute"]) == ("attribute", "state")
    assert disc["image"] is first["image"]  # one bytes object per image
    assert {i["dimension"] for i in items} == {"generative", "attribute", "existence", "relation"}
    for rel in amber.AMBER_FILES.values():
        assert (tmp_path / "c" / "amber" / rel).is_file()

    shutil.rmtree(root / "data")  # served no more: the cache answers
    again = amber.load_amber(tmp_path / "c", base_url=url + "/", image_dir=images, expected_rows=FIXTURE_ROWS)
    assert [i["id"] for i in again] == [i["id"] for i in items]


def test_kinds_and_limit_per_dimension(cache: Path) -> None:
    assert [i["id"] for i in offline_items(cache, kinds=("discriminative",))] == list(range(3, 11))
    assert [i["id"] for i in offline_items(cache, limit=1)] == [1, 3, 7, 9]  # generative, attribute, existence, rel.
    with pytest.raises(ValueError, match="kinds"):
        offline_items(cache, kinds=("captioning",))


def test_row_counts_are_checked(cache: Path) -> None:
    with pytest.raises(ValueError, match="expected 15220 rows"):  # the real benchmark's count
        amber.load_amber_annotations(cache, base_url="http://127.0.0.1:9/")
    assert len(amber.load_amber_annotations(cache, base_url="http://127.0.0.1:9/", expected_rows=None)) == 10


def test_annotation_objects_must_be_in_relation_json(cache: Path) -> None:
    path = cache / "amber" / "data" / "annotations.json"
    path.write_text(path.read_text().replace('"hallu": ["cat", "car"]', '"hallu": ["cat", "unicorn"]'))
    with pytest.raises(ValueError, match="unicorn"):
        offline_items(cache)


def test_missing_images_error_says_where_to_get_them(cache: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-images"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        amber.load_amber(cache, base_url="http://127.0.0.1:9/", image_dir=empty, expected_rows=FIXTURE_ROWS)
    message = str(err.value)
    assert "AMBER_1.jpg" in message and amber.AMBER_IMAGES_URL in message and "image_dir" in message
    assert "2 of 2" in message


def test_images_found_in_image_subfolder_and_env(cache: Path, images: Path, monkeypatch) -> None:
    parent = images.parent / "unzipped"
    shutil.copytree(images, parent / "image")
    items = amber.load_amber(cache, base_url="http://127.0.0.1:9/", image_dir=parent, expected_rows=FIXTURE_ROWS)
    assert items[1]["image"] == b"jpeg bytes 2"
    monkeypatch.setenv(amber.AMBER_IMAGE_ENV, str(images))
    assert amber.amber_image_dir(None, cache) == images
    monkeypatch.delenv(amber.AMBER_IMAGE_ENV)
    assert amber.amber_image_dir(None, cache) == cache / "amber" / "image"


# -- scoring ---------------------------------------------------------------------------------------
def test_score_amber_on_fixture(cache: Path) -> None:
    items = offline_items(cache)
    metrics, details = score(items, ANSWERS)

    g = metrics["generative"]
    assert g == pytest.approx({"CHAIR": 1 / 8, "Cover": 4 / 5, "Hal": 1 / 2, "Cog": 1 / 3, "n": 2})
    d = metrics["discriminative"]

    def cls(accuracy: float, precision: float, recall: float, f1: float, n: int) -> dict:
        return pytest.approx({"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1, "n": n})

    assert d["overall"] == cls(5 / 8, 3 / 4, 3 / 5, 2 / 3, 8)
    assert d["existence"] == cls(1 / 2, 1.0, 1 / 2, 2 / 3, 2)
    assert d["attribute"] == cls(1 / 2, 1 / 2, 1 / 2, 1 / 2, 4)
    assert d["attribute_state"] == cls(1, 1, 1, 1, 2)
    assert d["attribute_number"] == cls(0, 0, 0, 0, 1)
    assert d["attribute_action"] == cls(0, 0, 0, 0, 1)
    assert d["relation"] == cls(1, 1, 1, 1, 2)
    assert metrics["amber_score"] == pytest.approx((1 - 1 / 8 + 2 / 3) / 2)

    assert details["items"][1] == {"nouns": ["puppy", "grass", "car", "dog", "light"], "hallucinated": ["car"],
                                   "covered": ["dog", "grass"], "cognised": ["car"]}
    assert details["items"][2]["nouns"] == ["bench", "tree", "bench"]
    assert details["items"][8] == {"truth": "no", "answer": None, "correct": False}
    assert details["unparsed"] == 1 and details["missing"] == []
    assert details["nlp"] == {**OFFLINE, "similarity": None, "threshold": 0.8}


def test_upstream_report_repeats_inference_py_arithmetic(cache: Path) -> None:
    _, details = score(offline_items(cache), ANSWERS)
    report = details["upstream_report"]
    # CHAIR 1/8.001 = 12.498 -> 12.5; Cover 4/5.001 -> 80.0; Hal 100 - 1/2.001*100 = 50.02 -> 50.0; Cog 1/3.001 -> 33.3
    assert report["generative"] == {"CHAIR": 12.5, "Cover": 80.0, "Hal": 50.0, "Cog": 33.3}
    # P 3/4.001 -> 75.0, R 3/5.001 -> 60.0, F1 from the rounded values: .9/(1.35 + .0001) = 66.66 -> 66.7
    assert report["discriminative"]["overall"] == {"accuracy": 62.5, "precision": 75.0, "recall": 60.0, "f1": 66.7}
    # a perfect precision prints 1/1.001 = 99.9; F1 with +0.001: .999/(1.499 + .001) = 66.6
    assert report["discriminative"]["existence"] == {"accuracy": 50.0, "precision": 99.9, "recall": 50.0, "f1": 66.6}
    # pooled attribute denominators start at 0.003: 2/4.003 -> 50.0, 1/2.003 -> 49.9, F1 .498/(.998+.0001) -> 49.9
    assert report["discriminative"]["attribute"] == {"accuracy": 50.0, "precision": 49.9, "recall": 49.9, "f1": 49.9}
    assert report["discriminative"]["relation"] == {"accuracy": 100.0, "precision": 99.9, "recall": 99.9, "f1": 99.9}
    assert report["amber_score"] == 77.1  # (100 - 12.5 + 66.7) / 2


def test_missing_answers_and_string_ids(cache: Path) -> None:
    items = offline_items(cache)
    metrics, details = score(items, {"4": "No", 7: "no", 1: None})
    assert details["missing"] == [1, 2, 3, 5, 6, 8, 9, 10]
    assert "generative" not in metrics and metrics["amber_score"] is None
    assert metrics["discriminative"]["overall"]["accuracy"] == 1.0
    assert set(metrics["discriminative"]) == {"overall", "attribute", "attribute_state", "existence"}


def test_similarity_step_as_upstream() -> None:
    lex = amber.AmberLexicon.from_data(
        {"person": ["people", "man", "woman"], "car": ["vehicle"], "dog": ["puppy"], "cat": ["kitten"],
         "boy": [], "bus": []}, [])
    items = [
        {"id": 1, "kind": "generative", "truth": ["person"], "hallu": ["car"], "lexicon": lex},
        {"id": 2, "kind": "generative", "truth": ["dog"], "hallu": ["cat"], "lexicon": lex},
    ]
    table = {("boy", "man"): 0.85, ("bus", "vehicle"): 0.81, ("bus", "car"): 0.8, ("kitten", "dog"): 0.9}
    calls = []

    def similarity(a: str, b: str) -> float:
        calls.append((a, b))
        return 1.0 if a == b else table.get((a, b), 0.0)

    answers = {1: "boy bus", 2: "kitten"}  # already lemmatised nouns
    # 1: boy ~ man (0.85, a safe word of person) -> person covered, not hallucinated;
    #    bus ~ vehicle (0.81, hallu list of car) -> car cognised; bus ~ car is 0.8, not > 0.8; no safe word -> hallu.
    # 2: kitten is in cat's list -> cat cognised (exact), then kitten ~ dog (0.9) -> dog covered, not hallucinated.
    metrics, details = amber.score_amber(items, answers, similarity=similarity, nouns=str.split)
    assert metrics["generative"] == pytest.approx({"CHAIR": 1 / 3, "Cover": 1.0, "Hal": 1 / 2, "Cog": 1.0, "n": 2})
    assert details["items"][1]["hallucinated"] == ["bus"] and details["items"][2]["covered"] == ["dog"]
    assert details["nlp"]["similarity"] == "custom"
    # without similarity (the default): boy, bus, kitten all hallucinated; only the exact cat match is cognised
    plain, _ = amber.score_amber(items, answers, nouns=str.split)
    assert plain["generative"] == pytest.approx({"CHAIR": 1.0, "Cover": 0.0, "Hal": 1.0, "Cog": 1 / 2, "n": 2})
    for upper in ("CHAIR", "Hal"):
        assert plain["generative"][upper] >= metrics["generative"][upper]
    for lower in ("Cover", "Cog"):
        assert plain["generative"][lower] <= metrics["generative"][lower]


def test_global_safe_words_are_counted_but_never_hallucinated() -> None:
    lex = amber.AmberLexicon.from_data({"dog": [], "light": [], "sign": []}, ["light", "sign"])
    item = {"id": 1, "kind": "generative", "truth": ["dog"], "hallu": ["dog"], "lexicon": lex}
    result = amber.score_generative(item, "light sign cat sign", str.split)
    # "cat" is not in the vocabulary: not a mention at all
    assert result["nouns"] == ["light", "sign", "sign"] and result["hallucinated"] == []
    assert result["counts"]["mentions"] == 3


# -- NLP pieces ------------------------------------------------------------------------------------
def test_tokenize_is_treebank_like() -> None:
    assert amber.tokenize("The dog's e-book isn't here; it cannot be, Mr. Smith.") == [
        "The", "dog", "'s", "e-book", "is", "n't", "here", ";", "it", "can", "not", "be", ",", "Mr", ".",
        "Smith", "."]
    assert amber.tokenize("Two\u2019s 3.5 cm") == ["Two", "'s", "3.5", "cm"]


def test_offline_lemmatizer_follows_wordnet_on_vocabulary_forms() -> None:
    lemma = amber.offline_lemmatizer({"people", "person", "man", "vase", "dog", "bus", "sunglasses", "tennis"})
    cases = {"dogs": "dog", "people": "people", "men": "men", "vases": "vas", "Dogs": "Dogs", "TVs": "TVs",
             "sunglasses": "sunglass", "bus": "bus", "buses": "bus", "tennis": "tennis", "knives": "knife",
             "bedsheets": "bedsheets"}
    assert {w: lemma(w) for w in cases} == cases


def test_tag_dictionary_rule_and_noun_extractor() -> None:
    assert amber.tag_dictionary_tags(["a", "hot", "dog", "can", "cans"]) == ["NN", "JJ", "NN", "MD", "NN"]
    extract = amber.noun_extractor({"dog", "can"}, **OFFLINE)
    assert extract("A hot dog can see two cans.") == ["A", "dog", "see", "two", "can", "."]
    assert extract.names == OFFLINE


def test_noun_extractor_auto_and_unknown_backend() -> None:
    auto = amber.noun_extractor({"dog"})
    assert set(auto.names) == {"tokenizer", "tagger", "lemmatizer"}
    assert "dog" in auto("Two dogs sleep on a mat.")
    with pytest.raises(ValueError, match="unknown tagger"):
        amber.noun_extractor({"dog"}, tagger="brill")


def test_perceptron_tagger_on_a_hand_made_model(tmp_path: Path) -> None:
    weights = {"i word can": {"MD": 1.0, "NN": 0.5}, "i-1 word a": {"NN": 2.0}, "bias": {"DT": 0.1}}
    tagger = amber.PerceptronTagger(weights, {"a": "DT", "they": "PRP"}, {"DT", "MD", "NN", "PRP"})
    # "a can": i word can (MD 1, NN .5) + i-1 word a (NN 2) -> NN; "they can": MD 1 > NN .5 > DT .1
    assert tagger.tag(["a", "can"]) == ["DT", "NN"]
    assert tagger.tag(["they", "can"]) == ["PRP", "MD"]
    path = tmp_path / "model.pickle"
    path.write_bytes(pickle.dumps((weights, {"a": "DT"}, {"DT", "MD", "NN"}), protocol=2))
    assert amber.PerceptronTagger.from_pickle(path).tag(["a", "can"]) == ["DT", "NN"]
    path.write_bytes(pickle.dumps((os.getcwd, {}, set())))
    with pytest.raises(pickle.UnpicklingError, match="not plain data"):
        amber.PerceptronTagger.from_pickle(path)
    extract = amber.noun_extractor({"can"}, tokenizer="regex", tagger=tagger, lemmatizer="offline")
    assert extract("they can") == [] and extract.names["tagger"] == "perceptron"


def test_parse_yes_no() -> None:
    assert [amber.parse_yes_no(t) for t in ("Yes", "yes.", " **No**, it is not", "NO", "Nope", "Not at all",
                                            "The answer is yes", "", None)] == [
        "Yes", "Yes", "No", "No", None, None, None, None, None]


def test_spacy_similarity_calls_doc_similarity(monkeypatch) -> None:
    class Doc:
        def __init__(self, text: str) -> None:
            self.text = text

        def similarity(self, other: Doc) -> float:
            return 1.0 if self.text == other.text else 0.25

    loaded = []
    fake = types.ModuleType("spacy")
    fake.load = lambda name: loaded.append(name) or Doc
    monkeypatch.setitem(sys.modules, "spacy", fake)
    similarity = amber.spacy_similarity()
    assert loaded == ["en_core_web_lg"] and similarity.name == "spacy:en_core_web_lg"
    assert similarity("dog", "dog") == 1.0 and similarity("dog", "cat") == 0.25
