"""Pair selection on hand-made scores, and pairs written in the RLAIF-V-Dataset schema read back by the loader."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest

from rlhfv_nb.data import encode_image, load_raw, normalise_preferences, write_parquet
from rlhfv_nb.rlaifv.pairs import (
    RLAIFV_COLUMNS,
    PairRule,
    Prompt,
    keep_pairs,
    length_balanced,
    pair_records,
    select_pairs,
)
from rlhfv_nb.world import WorldConfig, make_fresh_scenes, render

SCORES = [0, -2, -1, 0, -2]
# Ranked (score, then order): 0, 3, 2, 1, 4. Pairs by gap (widest first), then the chosen's and rejected's rank.
ALL_ORDERED = [(0, 1), (0, 4), (3, 1), (3, 4), (0, 2), (3, 2), (2, 1), (2, 4)]


@pytest.mark.parametrize(("rule", "pairs"), [
    (PairRule("best_vs_worst"), [(0, 1)]),
    (PairRule("best_vs_worst", min_gap=3), []),
    (PairRule("best_vs_worst", max_pairs=5), [(0, 1)]),
    (PairRule("all_ordered"), ALL_ORDERED),
    (PairRule("all_ordered", max_pairs=3), ALL_ORDERED[:3]),
    (PairRule("all_ordered", min_gap=2), ALL_ORDERED[:4]),
    (PairRule("all_ordered", min_gap=2, max_pairs=1), [(0, 1)]),
])
def test_select_pairs(rule: PairRule, pairs: list[tuple[int, int]]) -> None:
    assert select_pairs(SCORES, rule) == pairs


@pytest.mark.parametrize("scores", [[], [-1], [-1, -1, -1], [0, 0]])
@pytest.mark.parametrize("kind", ["best_vs_worst", "all_ordered"])
def test_ties_are_never_paired(scores: list[int], kind: str) -> None:
    assert select_pairs(scores, PairRule(kind)) == []


def test_ties_break_by_candidate_order() -> None:
    assert select_pairs([-1, 0, -1, 0], PairRule("best_vs_worst")) == [(1, 0)]
    assert select_pairs([-1, 0, -1, 0], PairRule("all_ordered")) == [(1, 0), (1, 2), (3, 0), (3, 2)]


def test_keep_pairs_draws_the_total_and_keeps_each_prompts_order() -> None:
    pairs = [ALL_ORDERED, [], [(1, 0)], ALL_ORDERED[:3]]
    kept = keep_pairs(pairs, 5, seed=1)
    assert sum(map(len, kept)) == 5 and len(kept) == len(pairs)
    assert all(chosen == [p for p in every if p in chosen] for chosen, every in zip(kept, pairs))  # an ordered subset
    assert keep_pairs(pairs, 5, seed=1) == kept and keep_pairs(pairs, 5, seed=2) != kept  # seeded
    assert keep_pairs(pairs, 12, seed=1) == pairs and keep_pairs(pairs, 50, seed=1) == pairs
    draws = [keep_pairs(pairs, 6, seed) for seed in range(200)]  # every pair is drawn, about half of the time
    share = [sum(pair in draw[0] for draw in draws) / 200 for pair in ALL_ORDERED]
    assert all(0.3 < s < 0.7 for s in share), share


def test_length_filter_balances_chosen_and_rejected_lengths() -> None:
    """Hand-computed: the pairs shorten by 0.8, 1/6 and 1/3 of the rejected answer's words. Keeping those up to
    r = 0.18 leaves (10 vs 12 words, gap 1/6); up to 0.34 adds the third (7 vs 9, gap 2/9); up to 0.8 all (16/3 vs
    28/3, gap 3/7). Below 1/6 nothing is kept. The smallest gap wins, at its first r."""
    candidates = [["a b c d e f g h i j", "a b", "a b c d e f g h i j k l"], ["x y z w", "x y z w v u"]]
    kept, ratio = length_balanced([[(1, 0), (0, 2)], [(0, 1)]], candidates)
    assert kept == [[(0, 2)], []] and ratio == pytest.approx(0.18)
    # a chosen answer as long as or longer than the rejected one is always kept (the first r, 0, balances best)
    longer = [["a b c d", "a b", "a b c d"]]
    assert length_balanced([[(0, 1), (2, 0)]], longer) == ([[(0, 1), (2, 0)]], 0.0)
    assert length_balanced([[], []], candidates) == ([[], []], None)  # no pairs, nothing to balance


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "random"}, "unknown pair rule 'random'"),
    ({"min_gap": 0}, "min_gap must be >= 1 .* got 0"),
    ({"max_pairs": 0}, "max_pairs must be >= 1 or null, got 0"),
])
def test_pair_rule_errors_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PairRule(**kwargs)


# ---------------------------------------------------------------- the RLAIF-V-Dataset schema

# The hub dataset's features (openbmb/RLAIF-V-Dataset, its dataset card).
HUB_FEATURES = datasets.Features({
    "ds_name": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
    "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
    "origin_dataset": datasets.Value("string"), "origin_split": datasets.Value("string"),
    "idx": datasets.Value("int64"), "image_path": datasets.Value("string"),
})
CFG = WorldConfig()
IMAGES = [encode_image(render(scene, CFG)) for scene in make_fresh_scenes(CFG, 2, seed=3)]
PROMPTS = [Prompt("p0", IMAGES[0], "Describe the image."),
           Prompt("p1", IMAGES[1], "What do you see in this image?", image_path="coco/0001.jpg")]
CANDIDATES = [["A red ball is in the top left.", "A blue star is in the top left.", "There is a tent."],
              ["A green box is at the bottom.", "A green box and a kite are at the bottom."]]
PAIRS = [[(0, 1), (2, 1)], [(0, 1)]]


def test_pairs_are_written_in_the_rlaifv_schema_and_load_like_the_hub_dataset(tmp_path) -> None:
    rows = pair_records(PROMPTS, CANDIDATES, PAIRS, "rlaifv-round-1", "world-fresh", "round-1", first_idx=10)
    path = write_parquet(rows, tmp_path / "pairs" / "round-1.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["round-1.parquet"]  # written atomically, nothing left over
    assert datasets.Features.from_arrow_schema(pq.read_schema(path)) == HUB_FEATURES

    hub_rows = [  # the same pairs as the hub dataset holds them
        {"ds_name": "rlaifv-round-1", "image": {"bytes": IMAGES[0], "path": None}, "question": "Describe the image.",
         "chosen": "A red ball is in the top left.", "rejected": "A blue star is in the top left.",
         "origin_dataset": "world-fresh", "origin_split": "round-1", "idx": 10, "image_path": "world-fresh/p0"},
        {"ds_name": "rlaifv-round-1", "image": {"bytes": IMAGES[0], "path": None}, "question": "Describe the image.",
         "chosen": "There is a tent.", "rejected": "A blue star is in the top left.",
         "origin_dataset": "world-fresh", "origin_split": "round-1", "idx": 11, "image_path": "world-fresh/p0"},
        {"ds_name": "rlaifv-round-1", "image": {"bytes": IMAGES[1], "path": None},
         "question": "What do you see in this image?", "chosen": "A green box is at the bottom.",
         "rejected": "A green box and a kite are at the bottom.", "origin_dataset": "world-fresh",
         "origin_split": "round-1", "idx": 12, "image_path": "coco/0001.jpg"},
    ]
    hub_path = tmp_path / "hub.parquet"
    datasets.Dataset.from_list(hub_rows, features=HUB_FEATURES).to_parquet(str(hub_path))
    ours, hub = load_raw(str(path)), load_raw(str(hub_path))
    assert ours.column_names == hub.column_names == list(RLAIFV_COLUMNS) and ours.features == hub.features
    read, bad = normalise_preferences(ours, str(path), on_bad_row="error")
    expected, _ = normalise_preferences(hub, str(hub_path), on_bad_row="error")
    assert read == expected and bad.count == 0
    assert [r["uid"] for r in read] == ["10", "11", "12"]
    assert read[2]["image"] == IMAGES[1] and read[2]["rejected"] == "A green box and a kite are at the bottom."
    assert json.loads(read[0]["source"]) == {"ds_name": "rlaifv-round-1", "origin_dataset": "world-fresh",
                                             "origin_split": "round-1", "idx": 10, "image_path": "world-fresh/p0"}


@pytest.mark.parametrize(("pairs", "message"), [
    ([[(0, 3)], []], r"prompt 'p0': pair \(0, 3\) does not name two of its 3 candidates"),
    ([[], [(1, 1)]], r"prompt 'p1': pair \(1, 1\)"),
    ([[]], "2 prompts, 2 candidate lists and 1 pair lists"),
])
def test_pair_records_errors_name_the_prompt(pairs: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_records(PROMPTS, CANDIDATES, pairs, "ds", "origin")
