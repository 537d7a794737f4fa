"""The miniature reproduction's claim, on a reduced cpu-tiny run: DDPO on corrections lowers hallucination.

The same stage functions the notebooks call (data, SFT, feedback, reference log-probs, DDPO, benchmarks), on
fewer images and one DDPO model. Seeded, so the numbers are the same on every run of one machine; the bounds
below leave room for another machine's floating-point order (see docs/cpu-tiny.md for what was measured).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfv_nb import pipeline
from rlhfv_nb.config import Config, load_config
from rlhfv_nb.evaluate.suite import run_benchmarks
from rlhfv_nb.launch import launch_stage

ROOT = Path(__file__).resolve().parents[1]
# The cpu-tiny SFT and feedback; 200 instead of 500 held-out images, no plain-DPO ablation.
REDUCED = {
    "data": {"eval_images": 200},
    "ddpo": {"ablation_gammas": []},
}
# Bounds argued from the spread of the full runs (bench/results/cpu_tiny_seeds-*.json, 3 seeds x 1 and 2 threads,
# 500 images): SFT response-level CHAIR was 9.4-13.6%, DDPO cut it by 53-80% and lost 1.3-7.8% of recall, count and
# cell accuracy moved by at most 0.4 and 0.9 points, POPE accuracy rose by 1.6-4.2 points on every run and the
# yes-ratio stayed at 44-65%. On 200 images one response is 0.5 points of CHAIR and the sampling error of a 12%
# rate is about 2.3 points; of POPE accuracy (400 questions) about 2 points. Each bound sits at least 3 such errors
# (or twice the worst measured change) away from what the runs gave. The full run's targets: -30%, -10%, 5 points.
MIN_SFT_CHAIR = 0.05
MIN_CHAIR_DROP = 0.25
MIN_RECALL_KEPT = 0.85
MAX_SKILL_LOSS = 0.05  # count and cell accuracy, absolute
MAX_POPE_LOSS = 0.05  # POPE accuracy, absolute
YES_RATIO = (0.25, 0.75)  # DDPO's POPE yes-ratio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, dict[str, float]]]:
    cfg = load_config(ROOT / "params" / "cpu-tiny.yaml", run_dir=str(tmp_path_factory.mktemp("effect")), **REDUCED)
    pipeline.prepare_data(cfg)
    launch_stage(cfg, "sft")
    pipeline.collect_feedback(cfg)
    launch_stage(cfg, "ddpo")
    suite = run_benchmarks(cfg, pipeline.trained_models(cfg))
    return cfg, {name: {**by_bench["world_chair"].metrics, **by_bench["world_pope"].metrics}
                 for name, by_bench in suite.results.items()}


def test_the_sft_model_hallucinates(reduced_run) -> None:
    _, metrics = reduced_run
    sft = metrics["SFT"]
    assert sft["CHAIRs_refine"] >= MIN_SFT_CHAIR, f"the SFT model hardly hallucinates: {sft}"
    assert sft["recall"] >= 0.60, f"the SFT model does not see the objects (blind: ~0.36): {sft}"


def test_ddpo_hallucinates_less_without_saying_less(reduced_run) -> None:
    cfg, metrics = reduced_run
    sft, ddpo = metrics["SFT"], metrics[pipeline.model_label(cfg.ddpo.gamma)]
    drop = 1 - ddpo["CHAIRs_refine"] / sft["CHAIRs_refine"]
    assert drop >= MIN_CHAIR_DROP, f"response-level CHAIR {sft['CHAIRs_refine']:.3f} -> {ddpo['CHAIRs_refine']:.3f}"
    assert ddpo["CHAIRi"] < sft["CHAIRi"]
    assert ddpo["recall"] >= MIN_RECALL_KEPT * sft["recall"], f"recall {sft['recall']:.3f} -> {ddpo['recall']:.3f}"


def test_ddpo_keeps_short_answers(reduced_run) -> None:
    """Counting objects and naming what is at a place survive DDPO (they fell 100 -> 66% and 74 -> 64% before the
    annotator stopped teaching wrong places, and cell accuracy lost 2-5 points on corrections alone)."""
    cfg, metrics = reduced_run
    sft, ddpo = metrics["SFT"], metrics[pipeline.model_label(cfg.ddpo.gamma)]
    for skill in ("count_accuracy", "cell_accuracy"):
        assert ddpo[skill] >= sft[skill] - MAX_SKILL_LOSS, f"{skill} {sft[skill]:.3f} -> {ddpo[skill]:.3f}"


def test_ddpo_keeps_answering_existence_questions(reduced_run) -> None:
    """POPE survives DDPO because every short answer gives a pair (it fell 13-14 points on corrections alone, the
    yes-ratio swinging to 25-76%)."""
    cfg, metrics = reduced_run
    sft, ddpo = (metrics[name]["splits"]["world"] for name in ("SFT", pipeline.model_label(cfg.ddpo.gamma)))
    assert ddpo["accuracy"] >= sft["accuracy"] - MAX_POPE_LOSS, f"POPE {sft['accuracy']:.3f} -> {ddpo['accuracy']:.3f}"
    assert YES_RATIO[0] <= ddpo["yes_ratio"] <= YES_RATIO[1], f"DDPO answers yes to {ddpo['yes_ratio']:.0%}"
