"""Checkpoint selection: metric paths and their better direction, mean ranks by hand, ties and missing values."""

from __future__ import annotations

import pytest

from rlhfv_nb.rlaifv.select import Candidate, SelectionError, SelectMetric, best, mean_ranks, parse_metrics


def test_metric_paths_and_directions() -> None:
    pope = SelectMetric.parse("pope.splits.adversarial.f1")
    assert (pope.benchmark, pope.keys, pope.lower_is_better) == ("pope", ("splits", "adversarial", "f1"), False)
    assert SelectMetric.parse("object_halbench.CHAIRs").lower_is_better
    assert SelectMetric.parse("mmhal_bench.hallucination_rate").lower_is_better
    assert not SelectMetric.parse("mmhal_bench.score").lower_is_better
    assert pope.value({"splits": {"adversarial": {"f1": 0.8, "accuracy": 0.7}}}) == 0.8
    assert SelectMetric.parse("world.CHAIRi").value({"CHAIRi": None}) is None  # a model that names no object
    with pytest.raises(SelectionError, match=r"pope.splits has no 'adversarial' \(it has \['random'\]\)"):
        pope.value({"splits": {"random": {"f1": 0.8}}})


@pytest.mark.parametrize(("text", "error"), [
    ("POPE.f1", "unknown benchmark 'POPE'"),
    ("world_chair.CHAIRs", "unknown benchmark 'world_chair'"),  # the held-out images report, never select
    ("object_halbench", "name a metric after the benchmark"),
    ("pope.splits..f1", "name a metric after the benchmark"),
    ("world.avg_len", "the world's selection metrics are CHAIRs, CHAIRi, recall"),
    ("object_halbench.avg_len", "'avg_len' has no known better direction"),
])
def test_bad_metrics_are_refused_by_name(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=rf"\[1\] '{text}': .*{error}"):
        parse_metrics(["world.CHAIRi", text])


def test_mean_rank_by_hand() -> None:
    chairs, score = SelectMetric.parse("object_halbench.CHAIRs"), SelectMetric.parse("mmhal_bench.score")
    measured = {  # CHAIRs: lower is better; score: higher is better
        "gamma=5": {chairs.name: 0.10, score.name: 2.0},  # CHAIRs rank 2, score rank 3 -> 2.5
        "gamma=1": {chairs.name: 0.05, score.name: 2.5},  # 1, 2 -> 1.5
        "gamma=5 epoch=1": {chairs.name: 0.20, score.name: 3.0},  # 3, 1 -> 2
    }
    assert mean_ranks(measured, [chairs, score]) == {"gamma=5": 2.5, "gamma=1": 1.5, "gamma=5 epoch=1": 2.0}
    assert best(measured, [chairs, score]) == "gamma=1"
    assert best(measured, [score]) == "gamma=5 epoch=1"


def test_ties_go_to_the_earlier_candidate_and_missing_values_rank_last() -> None:
    chairi = SelectMetric.parse("world.CHAIRi")
    measured = {"gamma=5": {chairi.name: None}, "gamma=1": {chairi.name: 0.1}, "gamma=1 epoch=1": {chairi.name: 0.1}}
    assert mean_ranks(measured, [chairi]) == {"gamma=5": 3.0, "gamma=1": 1.5, "gamma=1 epoch=1": 1.5}
    assert best(measured, [chairi]) == "gamma=1"
    assert best({"gamma=5": {chairi.name: 0.1}, "gamma=1": {chairi.name: 0.1}}, [chairi]) == "gamma=5"


def test_candidate_names() -> None:
    assert Candidate(5.0).name == "gamma=5" and Candidate(1.0, 2).name == "gamma=1 epoch=2"
