"""Notebook 04's reading of its results, written from the numbers: what fell, what was kept, what got worse.

Every numeric column of the results table (`SuiteResult.table()`, percent unless `NOT_PERCENT`) is compared between
two models. A change counts when it is at least `min_points` points (percent columns) and `min_relative` of the
earlier value and, where a bootstrap interval of the difference over images exists (`bootstrap.compare`), that
interval excludes 0; anything smaller is "kept", and a larger change whose interval includes 0 is "unclear" (within
the noise of which images were drawn). Whether a change is better or worse depends on the column: lower
is better for hallucination (CHAIR, wrong colours and places, AMBER's CHAIR/Hal/Cog, MMHal's hallucination rate),
the yes-ratio is best near 50% (a model that answers "no" to everything is not more careful, it is broken), answer
length is neither, and for everything else (recall, accuracies, F1, scores) higher is better.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from rlhfv_nb.bootstrap import LEVEL
from rlhfv_nb.evaluate import paper

LOWER_IS_BETTER = ("(CHAIRs_refine)", "(CHAIRi)", "CHAIRs", "wrong color", "wrong place", "AttrHal", "AMBER CHAIR",
                   "AMBER Hal", "AMBER Cog", paper.MMHAL_HALL)  # column endings
BEST_AT_HALF = ("yes-ratio",)
NEUTRAL = ("avg_len",)
NOT_PERCENT = ("avg_len", "MMHal score", paper.MMHAL_INFO)
MIN_POINTS = 2.0
MIN_RELATIVE = 0.05
VERDICTS = {"better": "Better", "kept": "Kept", "unclear": "Unclear (the interval includes 0)", "worse": "Worse",
            "changed": "Changed"}  # verdict -> its heading


def direction(column: str) -> str:
    """How a column is judged: "lower" or "higher" is better, "half" (best at 50%), or "neutral"."""
    if column.endswith(LOWER_IS_BETTER):
        return "lower"
    if column.endswith(BEST_AT_HALF):
        return "half"
    return "neutral" if column.endswith(NEUTRAL) else "higher"


@dataclass(frozen=True)
class Change:
    """One column from one model (`before`) to another (`after`), with the bootstrap interval of after - before
    where there is one, and the verdict: "better", "kept", "unclear", "worse" or "changed" (a neutral column that
    moved)."""

    column: str
    before: float
    after: float
    interval: tuple[float, float] | None
    verdict: str

    @property
    def percent(self) -> bool:
        return not self.column.endswith(NOT_PERCENT)

    @property
    def relative(self) -> float | None:
        return (self.after - self.before) / self.before if self.before else None


def _verdict(column: str, before: float, after: float, interval: tuple[float, float] | None,
             min_points: float, min_relative: float) -> str:
    """`Change.verdict` of one column (see the module docstring)."""
    how = direction(column)
    # the yes-ratio's change is its change in distance from 50%, judged in points alone
    diff = abs(after - 50) - abs(before - 50) if how == "half" else after - before
    points = min_points if not column.endswith(NOT_PERCENT) else 0.0
    relative_ok = how == "half" or not before or abs(diff / before) >= min_relative
    if abs(diff) < points or not diff or not relative_ok:
        return "kept"
    if interval is not None and interval[0] <= 0 <= interval[1]:
        return "unclear"
    if how == "neutral":
        return "changed"
    return "better" if (diff < 0) == (how in ("lower", "half")) else "worse"


def changes(table: pd.DataFrame, model: str, vs: str, intervals: pd.DataFrame | None = None, *,
            min_points: float = MIN_POINTS, min_relative: float = MIN_RELATIVE) -> list[Change]:
    """Every numeric column both rows have, from `vs` to `model`; `intervals` as `bootstrap.compare` gives them.

    ValueError naming a model that is not a row of `table`.
    """
    missing = [name for name in (model, vs) if name not in table.index]
    if missing:
        raise ValueError(f"no results for {missing}; the table has {list(table.index)}")
    values = table.apply(pd.to_numeric, errors="coerce")
    found = []
    for column in (c for c in values.columns if not c.endswith(" std")):
        before, after = values.at[vs, column], values.at[model, column]
        if pd.isna(before) or pd.isna(after):
            continue
        interval = None
        if intervals is not None and (model, vs, column) in intervals.index:
            row = intervals.loc[(model, vs, column)]
            interval = (float(row["low"]), float(row["high"]))
        found.append(Change(column, float(before), float(after), interval,
                            _verdict(column, float(before), float(after), interval, min_points, min_relative)))
    return found


def _value(value: float, percent: bool) -> str:
    return f"{value:.1f}%" if percent else f"{value:.2f}"


def describe(change: Change) -> str:
    """One change in words: "World CHAIRs fell from 59.6% to 11.2% (-48.4 points, -81% relative; 95% CI of the
    difference -52.0 to -44.1 points, excludes 0)"."""
    c = change
    diff = c.after - c.before
    half = direction(c.column) == "half"
    if not diff:
        text = f"{c.column} stayed at {_value(c.after, c.percent)}"
    else:
        text = (f"{c.column} {'rose' if diff > 0 else 'fell'} from {_value(c.before, c.percent)} to "
                f"{_value(c.after, c.percent)}")
        if half:
            text += f", {'toward' if abs(c.after - 50) < abs(c.before - 50) else 'away from'} 50%"
        parts = [f"{diff:+.1f} points" if c.percent else f"{diff:+.2f}"]
        if c.relative is not None and not half:
            parts.append(f"{c.relative:+.0%} relative")
        if c.interval:
            low, high = c.interval
            side = "excludes" if low > 0 or high < 0 else "includes"
            parts[-1] += f"; {LEVEL:.0%} CI of the difference {low:+.1f} to {high:+.1f} points, {side} 0"
        text += f" ({', '.join(parts)})"
    if half and not 10 < c.after < 90:
        text += f": the model answers \"{'no' if c.after <= 10 else 'yes'}\" to almost every yes/no question"
    return text


def _summary(found: list[Change]) -> str:
    """"hallucination fell on 4 and was kept on 2 of its 6 measures; of the other 5 measures: 3 kept, 2 worse"."""
    hallucination = [c for c in found if direction(c.column) == "lower"]
    others = [c for c in found if direction(c.column) != "lower"]
    words = []
    if hallucination:
        moves = {"fell on": "better", "rose on": "worse", "was kept on": "kept", "moved within the noise on": "unclear"}
        said = [f"{move} {n}" for move, verdict in moves.items()
                if (n := sum(c.verdict == verdict for c in hallucination))]
        joined = " and ".join([", ".join(said[:-1]), said[-1]] if len(said) > 1 else said)
        words.append(f"hallucination {joined} of its {len(hallucination)} measures")
    if others:
        counts = ", ".join(f"{n} {verdict}" for verdict in VERDICTS if (n := sum(c.verdict == verdict for c in others)))
        words.append(f"of the other {len(others)} measures: {counts}")
    return "; ".join(words) or "no numbers to compare"


def what_happened(table: pd.DataFrame, comparisons: Iterable[tuple[str, str]], intervals: pd.DataFrame | None = None,
                  *, min_points: float = MIN_POINTS, min_relative: float = MIN_RELATIVE) -> str:
    """Markdown: for each (model, vs) pair (`bootstrap.pairs`), what got better, what was kept, what got worse."""
    lines = [f"A change counts when it is at least {min_points:g} points (percent columns) and {min_relative:.0%} "
             "relative; smaller changes are \"kept\". A larger one is \"unclear\" when its "
             f"{LEVEL:.0%} bootstrap interval over images includes 0. Lower is better for hallucination, higher for "
             "recall, accuracies and scores; the yes-ratio is best near 50%."]
    for model, vs in comparisons:
        found = changes(table, model, vs, intervals, min_points=min_points, min_relative=min_relative)
        lines.append(f"\n**{model} vs {vs}**: {_summary(found)}.")
        for verdict, heading in VERDICTS.items():
            group = [describe(c) for c in found if c.verdict == verdict]
            if group:
                lines.append(f"- **{heading}**: " + "; ".join(group) + ".")
    return "\n".join(lines)
