"""Paired bootstrap intervals over images (rlhfv_nb.bootstrap): hand-computed cases and an independent computation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rlhfv_nb.bootstrap import compare, paired_bootstrap, pairs


def _rates(values: list[float]) -> dict[int, tuple[float, float]]:
    """Per-image rates (CHAIRs-like): numerator the value, denominator 1."""
    return {i: (v, 1) for i, v in enumerate(values)}


def test_identical_models_differ_by_exactly_zero() -> None:
    counts = {i: (i % 3, 2) for i in range(50)}
    interval = paired_bootstrap(counts, dict(counts))
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero and interval.n_images == 50 and interval.resamples == 1000


def test_a_constant_shift_gives_a_zero_width_interval_at_the_shift() -> None:
    rng = random.Random(1)
    base = [rng.random() for _ in range(40)]
    interval = paired_bootstrap(_rates([v + 0.25 for v in base]), _rates(base))
    assert interval.difference == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)
    assert interval.excludes_zero


def test_hand_computed_two_images() -> None:
    """Images 0 and 1; model a hallucinates on image 0 only, b on neither: resamples draw {0,0}, {0,1} or {1,1},
    giving differences 1, 0.5 and 0 with probabilities 1/4, 1/2, 1/4."""
    interval = paired_bootstrap(_rates([1, 0]), _rates([0, 0]), resamples=4000, seed=3)
    assert interval.difference == 0.5 and (interval.low, interval.high) == (0.0, 1.0)
    narrow = paired_bootstrap(_rates([1, 0]), _rates([0, 0]), resamples=4000, seed=3, level=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_close_one() -> None:
    rng = np.random.default_rng(0)
    a, b = _rates(list(rng.integers(0, 2, 300))), _rates(list(rng.integers(0, 2, 300)))
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
    other = paired_bootstrap(a, b, seed=1)
    assert other != paired_bootstrap(a, b) and abs(other.low - paired_bootstrap(a, b).low) < 0.02


def _reference_interval(a: list[tuple[float, float]], b: list[tuple[float, float]], resamples: int,
                        seed: int) -> tuple[float, float]:
    """An independent paired percentile bootstrap: plain Python, its own random stream, nearest-rank percentiles."""
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        picks = [rng.randrange(len(a)) for _ in a]
        ratio_a = sum(a[i][0] for i in picks) / sum(a[i][1] for i in picks)
        ratio_b = sum(b[i][0] for i in picks) / sum(b[i][1] for i in picks)
        diffs.append(ratio_a - ratio_b)
    diffs.sort()
    return diffs[round(0.025 * (resamples - 1))], diffs[round(0.975 * (resamples - 1))]


def test_agrees_with_an_independent_computation_on_rates_and_on_ratios() -> None:
    rng = random.Random(7)
    n = 200
    mentions = [rng.randint(1, 4) for _ in range(n)]
    cases = [  # CHAIRs-like rates, and CHAIRi-like ratios (wrong mentions / mentions)
        ([(rng.random() < 0.5, 1) for _ in range(n)], [(rng.random() < 0.3, 1) for _ in range(n)]),
        ([(sum(rng.random() < 0.4 for _ in range(m)), m) for m in mentions],
         [(sum(rng.random() < 0.2 for _ in range(m)), m) for m in mentions]),
    ]
    for a, b in cases:
        ours = paired_bootstrap(dict(enumerate(a)), dict(enumerate(b)), resamples=2000)
        low, high = _reference_interval(a, b, resamples=2000, seed=11)
        assert ours.difference == pytest.approx(sum(x for x, _ in a) / sum(d for _, d in a)
                                                - sum(x for x, _ in b) / sum(d for _, d in b))
        assert ours.low == pytest.approx(low, abs=0.015) and ours.high == pytest.approx(high, abs=0.015)
        assert 0.05 < high - low < 0.3  # a real interval, not a degenerate one


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="same images.*1 differ.*'2'"):
        paired_bootstrap(_rates([1, 0, 1]), _rates([1, 0]))
    with pytest.raises(ValueError, match="no images"):
        paired_bootstrap({}, {})
    with pytest.raises(ValueError, match="every denominator is 0"):
        paired_bootstrap({0: (0, 0)}, {0: (0, 0)})
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        paired_bootstrap(_rates([1]), _rates([0]), level=95)


def test_pairs_every_model_against_the_baseline_then_against_the_reference() -> None:
    models = ["SFT", "DDPO gamma=5", "DPO (gamma=1)", "DDPO gamma=2"]
    assert pairs(models, "SFT", "DPO (gamma=1)") == [
        ("DDPO gamma=5", "SFT"), ("DPO (gamma=1)", "SFT"), ("DDPO gamma=2", "SFT"),
        ("DDPO gamma=5", "DPO (gamma=1)"), ("DDPO gamma=2", "DPO (gamma=1)")]
    assert pairs(["SFT", "DDPO gamma=5"], "SFT", "DPO (gamma=1)") == [("DDPO gamma=5", "SFT")]
    with pytest.raises(ValueError, match="baseline 'SFT' is not among"):
        pairs(["DDPO gamma=5"], "SFT")


def test_compare_tabulates_points_renames_metrics_and_skips_undefined_ones() -> None:
    counts = {
        "SFT": {"CHAIRs": _rates([1, 1, 0, 1]), "wrong_place": {i: (0, 0) for i in range(4)}},
        "DDPO": {"CHAIRs": _rates([0, 0, 0, 0]), "wrong_place": {i: (1, 2) for i in range(4)}},
    }
    table = compare(counts, [("DDPO", "SFT"), ("DDPO", "failed model")], names={"CHAIRs": "World CHAIRs"})
    assert list(table.index) == [("DDPO", "SFT", "World CHAIRs")]  # no place stated by SFT: no interval
    row = table.loc[("DDPO", "SFT", "World CHAIRs")]
    assert row["difference"] == -75.0 and row["high"] <= 0 and row["images"] == 4
