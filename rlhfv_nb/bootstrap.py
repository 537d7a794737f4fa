"""Paired bootstrap confidence intervals over images for the difference between two models' metrics.

A metric is given per image as a numerator and a denominator (`Counts`): CHAIRs as (1 if the description
hallucinates, 1), CHAIRi as (hallucinated mentions, mentions), and so on; over a set of images it is the sum of the
numerators over the sum of the denominators, which is how the results table computes it. Both models answered the
same images, so the images are resampled together (with replacement, `resamples` times, a fixed seed): the interval
is the central `level` share of the resampled differences (the percentile interval), beside the difference over all
images.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

Counts = Mapping[Hashable, tuple[float, float]]  # image id -> (numerator, denominator)
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The difference `a - b` of a metric over all images, and its bootstrap percentile interval [low, high]."""

    difference: float
    low: float
    high: float
    n_images: int
    resamples: int  # the resamples that gave a difference (both denominators non-zero)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _arrays(counts: Counts, ids: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([counts[i] for i in ids], dtype=float).reshape(len(ids), 2)
    return values[:, 0], values[:, 1]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def paired_bootstrap(a: Counts, b: Counts, *, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> Interval:
    """Bootstrap interval of metric(a) - metric(b), resampling the images both were scored on.

    ValueError when the two do not cover the same images (naming some that differ), when there are none, or when
    no resample has a defined difference (every denominator 0). A resample whose denominator is 0 for either model
    (e.g. no object mentioned in any resampled description, for CHAIRi) has no difference and is left out.
    """
    if set(a) != set(b):
        only = sorted(map(str, set(a) ^ set(b)))
        raise ValueError(f"paired bootstrap needs the same images for both models; {len(only)} differ, e.g. {only[:5]}")
    if not a:
        raise ValueError("paired bootstrap over no images")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    ids = list(a)
    (num_a, den_a), (num_b, den_b) = _arrays(a, ids), _arrays(b, ids)
    picks = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    diffs = (_ratio(num_a[picks].sum(axis=1), den_a[picks].sum(axis=1))
             - _ratio(num_b[picks].sum(axis=1), den_b[picks].sum(axis=1)))
    diffs = diffs[np.isfinite(diffs)]
    if not diffs.size:
        raise ValueError("no resample has a defined difference: every denominator is 0")
    low, high = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    difference = float(_ratio(num_a.sum(), den_a.sum()) - _ratio(num_b.sum(), den_b.sum()))
    return Interval(difference, float(low), float(high), len(ids), int(diffs.size))


def _defined(*metrics: Counts) -> bool:
    """Whether every metric has a non-zero denominator over all its images."""
    return all(sum(den for _, den in counts.values()) > 0 for counts in metrics)


def pairs(models: Sequence[str], baseline: str, reference: str | None = None) -> list[tuple[str, str]]:
    """(model, compared with) pairs: every model against `baseline`, then every other model against `reference`
    (e.g. each DDPO model against plain DPO) when `reference` is among the models. ValueError without `baseline`."""
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(models)}")
    out = [(m, baseline) for m in models if m != baseline]
    if reference in models:
        out += [(m, reference) for m in models if m not in (baseline, reference)]
    return out


def compare(counts: Mapping[str, Mapping[str, Counts]], comparisons: Iterable[tuple[str, str]], *,
            names: Mapping[str, str] | None = None, scale: float = 100.0, resamples: int = RESAMPLES,
            seed: int = SEED, level: float = LEVEL) -> pd.DataFrame:
    """Intervals for every metric both models of each (model, vs) pair have, as a table (pairs with a model
    that has no counts, e.g. whose benchmark failed, have no rows).

    `counts`: model -> metric -> per-image counts; `names` renames metrics (e.g. to the results table's columns;
    metrics not in it keep their key); differences are multiplied by `scale` (100: percentage points). A metric
    that is undefined for either model (denominator 0 on every image: no colour ever stated, say) has no row. Rows
    are indexed by (model, vs, metric); columns: difference, low, high, excludes 0, images. Every interval uses the
    same seed, so metrics over the same images are resampled alike.
    """
    names = names or {}
    rows = []
    for model, vs in ((m, v) for m, v in comparisons if m in counts and v in counts):
        for key in (k for k in counts[model] if k in counts[vs] and _defined(counts[model][k], counts[vs][k])):
            iv = paired_bootstrap(counts[model][key], counts[vs][key], resamples=resamples, seed=seed, level=level)
            rows.append({"model": model, "vs": vs, "metric": names.get(key, key), "difference": scale * iv.difference,
                         "low": scale * iv.low, "high": scale * iv.high, "excludes 0": iv.excludes_zero,
                         "images": iv.n_images})
    columns = ["model", "vs", "metric", "difference", "low", "high", "excludes 0", "images"]
    return pd.DataFrame(rows, columns=columns).set_index(["model", "vs", "metric"])
