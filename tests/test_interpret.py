"""Notebook 04's interpretation, written from hand-made results tables (rlhfv_nb.interpret)."""

from __future__ import annotations

import pandas as pd
import pytest

from rlhfv_nb.interpret import changes, describe, direction, what_happened

SFT, DDPO, DPO = "SFT", "DDPO gamma=5", "DPO (gamma=1)"
# the cpu-tiny run, plus an answer length and a judge column that is not a number
TABLE = pd.DataFrame.from_dict({
    SFT: {"World CHAIRs": 59.6, "World Mention (CHAIRi)": 32.5, "World recall": 60.6, "World count acc": 100.0,
          "World cell acc": 65.3, "POPE world acc": 53.7, "POPE world yes-ratio": 46.3, "World avg_len": 20.0,
          "World wrong place": 30.0, "judge": None, "notes": ""},
    DDPO: {"World CHAIRs": 11.2, "World Mention (CHAIRi)": 4.9, "World recall": 82.8, "World count acc": 19.8,
           "World cell acc": 72.9, "POPE world acc": 50.0, "POPE world yes-ratio": 0.0, "World avg_len": 20.5,
           "World wrong place": 31.0, "judge": None, "notes": "pope: skipped"},
    DPO: {"World CHAIRs": 9.4, "World Mention (CHAIRi)": 4.6, "World recall": 83.6, "World count acc": 36.2,
          "World cell acc": 75.5, "POPE world acc": 50.0, "POPE world yes-ratio": 0.0, "World avg_len": 14.0,
          "World wrong place": None, "judge": None, "notes": ""},
}, orient="index")
INTERVALS = pd.DataFrame([
    {"model": DDPO, "vs": SFT, "metric": "World CHAIRs", "low": -52.0, "high": -44.1},
    {"model": DDPO, "vs": DPO, "metric": "World CHAIRs", "low": -2.0, "high": 5.5},
    {"model": DDPO, "vs": SFT, "metric": "World cell acc", "low": -1.0, "high": 15.0},
]).set_index(["model", "vs", "metric"])


def _verdicts(model: str, vs: str, intervals: pd.DataFrame | None = INTERVALS) -> dict[str, str]:
    return {c.column: c.verdict for c in changes(TABLE, model, vs, intervals)}


def test_directions() -> None:
    assert [direction(c) for c in ("World CHAIRs", "ObjHal Resp. (CHAIRs_refine)", "World AttrHal", "AMBER Cog",
                                   "MMHal Resp-hall", "World recall", "POPE world yes-ratio", "World avg_len")] == [
        "lower", "lower", "lower", "lower", "lower", "higher", "half", "neutral"]


def test_what_fell_what_was_kept_what_got_worse() -> None:
    assert _verdicts(DDPO, SFT) == {
        "World CHAIRs": "better", "World Mention (CHAIRi)": "better", "World recall": "better",
        "World count acc": "worse", "World cell acc": "unclear",  # +7.6 points, but its interval includes 0
        "POPE world acc": "worse", "POPE world yes-ratio": "worse",  # 46% -> 0%: away from 50%
        "World avg_len": "kept", "World wrong place": "kept",  # +1 point: under 2 points
    }
    assert _verdicts(DDPO, SFT, None)["World cell acc"] == "better"
    # no value for DPO's wrong place: not compared; the shorter answers are a change, neither better nor worse
    assert "World wrong place" not in _verdicts(DPO, SFT) and _verdicts(DPO, SFT)["World avg_len"] == "changed"
    assert _verdicts(DDPO, DPO)["World CHAIRs"] == "kept"  # +1.8 points and an interval around 0


def test_thresholds_are_points_and_relative() -> None:
    table = pd.DataFrame.from_dict({"a": {"World CHAIRs": 4.0, "World recall": 90.0},
                                    "b": {"World CHAIRs": 1.5, "World recall": 87.0}}, orient="index")
    found = {c.column: c.verdict for c in changes(table, "b", "a")}
    assert found == {"World CHAIRs": "better", "World recall": "kept"}  # -2.5 points, -62%; -3 points but -3.3%
    strict = {c.column: c.verdict for c in changes(table, "b", "a", min_points=3, min_relative=0.02)}
    assert strict == {"World CHAIRs": "kept", "World recall": "worse"}


def test_describe_in_words() -> None:
    by_column = {c.column: c for c in changes(TABLE, DDPO, SFT, INTERVALS)}
    assert describe(by_column["World CHAIRs"]) == (
        "World CHAIRs fell from 59.6% to 11.2% (-48.4 points, -81% relative; 95% CI of the difference -52.0 to "
        "-44.1 points, excludes 0)")
    assert describe(by_column["World cell acc"]).endswith("95% CI of the difference -1.0 to +15.0 points, includes 0)")
    assert describe(by_column["POPE world yes-ratio"]) == (
        'POPE world yes-ratio fell from 46.3% to 0.0%, away from 50% (-46.3 points): the model answers "no" to '
        "almost every yes/no question")
    assert describe(by_column["World avg_len"]) == "World avg_len rose from 20.00 to 20.50 (+0.50, +2% relative)"
    assert describe(changes(TABLE, DDPO, DPO)[-1]).startswith("World avg_len rose from 14.00 to 20.50")
    assert describe({c.column: c for c in changes(TABLE, DDPO, DPO)}["POPE world acc"]) == (
        "POPE world acc stayed at 50.0%")


def test_what_happened_is_markdown_per_pair() -> None:
    text = what_happened(TABLE, [(DDPO, SFT), (DPO, SFT), (DDPO, DPO)], INTERVALS)
    sections = text.split("\n\n")
    assert sections[0].startswith("A change counts when it is at least 2 points")
    assert sections[1].splitlines()[0] == (
        f"**{DDPO} vs {SFT}**: hallucination fell on 2 and was kept on 1 of its 3 measures; of the other 6 measures: "
        "1 better, 1 kept, 1 unclear, 3 worse.")
    assert "- **Worse**: World count acc fell from 100.0% to 19.8%" in sections[1]
    assert "- **Unclear (the interval includes 0)**: World cell acc rose from 65.3% to 72.9%" in sections[1]
    assert sections[3].splitlines()[0] == (
        f"**{DDPO} vs {DPO}**: hallucination was kept on 2 of its 2 measures; of the other 6 measures: 4 kept, "
        "1 worse, 1 changed.")
    assert "World CHAIRs rose from 9.4% to 11.2% (+1.8 points, +19% relative; 95% CI" in sections[3]


def test_a_model_without_results_is_named() -> None:
    with pytest.raises(ValueError, match=r"no results for \['DPO'\]"):
        changes(TABLE, "DPO", SFT)
