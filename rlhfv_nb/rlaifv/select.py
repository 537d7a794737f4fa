"""Checkpoint selection per round (`rlaifv.select_by`): measure every candidate model on the configured benchmarks
and keep the best.

A selection metric is "<benchmark>.<key>[.<key>...]", a path into that benchmark's metrics as stage 04 records
them (`BenchmarkResult.metrics`): `object_halbench.CHAIRs`, `mmhal_bench.hallucination_rate`,
`pope.splits.adversarial.f1`, `amber.generative.CHAIR`... The benchmark `world` is the miniature's: world CHAIR on
`rlaifv.select_images` fresh images of its own, apart from the run's held-out images (`world.CHAIRi`,
`world.CHAIRs`, `world.recall`). Whether lower or higher is better follows from the last key (`DIRECTIONS`).

With several metrics the candidate with the best mean rank wins (ties share their mean rank; a model with no value,
such as CHAIRi for a model that names no object, ranks last); equal mean ranks go to the earlier candidate, so the
configured `ddpo.gamma`'s final model wins a tie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfv_nb.evaluate.tasks import BUILDERS

WORLD = "world"  # the miniature's selection benchmark (fresh world images of its own)
# stage 04's benchmarks can pick a checkpoint, except the world's: they score the held-out images that report the
# rounds (`world` selects on images of its own instead)
SUITE_BENCHMARKS = tuple(BUILDERS)
LOWER_IS_BETTER = frozenset({"CHAIRs", "CHAIRi", "CHAIRs_refine", "hallucination_rate", "CHAIR", "Hal", "Cog"})
HIGHER_IS_BETTER = frozenset({"recall", "score", "informativeness", "accuracy", "f1", "precision", "Cover",
                              "amber_score", "relative"})
WORLD_KEYS = ("CHAIRs", "CHAIRi", "recall")


class SelectionError(RuntimeError):
    """A selection benchmark gave no usable number (not scored, or no such metric)."""


@dataclass(frozen=True)
class SelectMetric:
    """One selection metric: a benchmark and the path of keys to its value in that benchmark's metrics."""

    benchmark: str
    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SelectMetric:
        """"pope.splits.adversarial.f1" -> SelectMetric("pope", ("splits", "adversarial", "f1")); ValueError for
        an unknown benchmark, a missing key, a world key other than `WORLD_KEYS`, or a last key of no known
        direction."""
        benchmark, _, rest = text.partition(".")
        keys = tuple(rest.split(".")) if rest else ()
        if benchmark not in (WORLD, *SUITE_BENCHMARKS):
            known = ", ".join((WORLD, *SUITE_BENCHMARKS))
            raise ValueError(f"{text!r}: unknown benchmark {benchmark!r} (known: {known})")
        if not keys or not all(keys):
            raise ValueError(f"{text!r}: name a metric after the benchmark, e.g. {benchmark}.CHAIRs")
        if benchmark == WORLD and keys not in [(key,) for key in WORLD_KEYS]:
            raise ValueError(f"{text!r}: the world's selection metrics are {', '.join(WORLD_KEYS)}")
        if keys[-1] not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
            raise ValueError(f"{text!r}: {keys[-1]!r} has no known better direction (lower: "
                             f"{', '.join(sorted(LOWER_IS_BETTER))}; higher: {', '.join(sorted(HIGHER_IS_BETTER))})")
        return cls(benchmark, keys)

    @property
    def name(self) -> str:
        return ".".join((self.benchmark, *self.keys))

    @property
    def lower_is_better(self) -> bool:
        return self.keys[-1] in LOWER_IS_BETTER

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """This metric's value in a benchmark's metrics; SelectionError naming the keys there when it has none."""
        value: Any = metrics
        for depth, key in enumerate(self.keys):
            if not isinstance(value, Mapping) or key not in value:
                where = ".".join((self.benchmark, *self.keys[:depth]))
                found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise SelectionError(f"selection metric {self.name}: {where} has no {key!r} (it has {found})")
            value = value[key]
        return None if value is None else float(value)

    def sort_key(self, value: float | None) -> tuple[bool, float]:
        """Smaller is better; no value ranks last."""
        return value is None, 0.0 if value is None else (value if self.lower_is_better else -value)


def parse_metrics(texts: Sequence[str]) -> list[SelectMetric]:
    """`rlaifv.select_by`'s metrics, each parsed (ValueError naming the first bad one and its index)."""
    metrics = []
    for index, text in enumerate(texts):
        try:
            metrics.append(SelectMetric.parse(text))
        except ValueError as err:
            raise ValueError(f"[{index}] {err}") from err
    return metrics


def mean_ranks(measured: Mapping[str, Mapping[str, float | None]], metrics: Sequence[SelectMetric]
               ) -> dict[str, float]:
    """Every candidate's mean rank (1 = best) over `metrics`; tied candidates share the mean of their ranks."""
    ranks = dict.fromkeys(measured, 0.0)
    for metric in metrics:
        keys = {name: metric.sort_key(values[metric.name]) for name, values in measured.items()}
        for name, key in keys.items():
            better = sum(other < key for other in keys.values())
            tied = sum(other == key for other in keys.values())
            ranks[name] += better + (tied + 1) / 2
    return {name: rank / len(metrics) for name, rank in ranks.items()}


def best(measured: Mapping[str, Mapping[str, float | None]], metrics: Sequence[SelectMetric]) -> str:
    """The candidate with the lowest mean rank; the first of equals (candidates in their order of preference)."""
    ranks = mean_ranks(measured, metrics)
    return min(measured, key=ranks.__getitem__)


@dataclass(frozen=True)
class Candidate:
    """A model a round can hand on: a gamma's final model (`epoch` None) or its model after an earlier epoch."""

    gamma: float
    epoch: int | None = None

    @property
    def name(self) -> str:
        return f"gamma={self.gamma:g}" + ("" if self.epoch is None else f" epoch={self.epoch}")
