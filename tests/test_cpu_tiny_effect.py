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
# 500 images): SFT response-level CHAIR was 9.4-13.6%, DDPO cut it by 51-67% and lost 1-5% of recall, and
# count / cell accuracy fell by at most 4.2 / 5.0 points. On 200 images one response is 0.5 points of CHAIR and
# the sampling error of a 12% rate is about 2.3 points, so each bound sits at least 3 such errors (or twice
# the worst measured change) away from what the runs gave. The full run's targets: -30%, -10%, 5 points.
MIN_SFT_CHAIR = 0.05
MIN_CHAIR_DROP = 0.25
MIN_RECALL_KEPT = 0.90
MAX_SKILL_LOSS = 0.10  # count and cell accuracy, absolute

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
    annotator stopped teaching wrong places)."""
    cfg, metrics = reduced_run
    sft, ddpo = metrics["SFT"], metrics[pipeline.model_label(cfg.ddpo.gamma)]
    for skill in ("count_accuracy", "cell_accuracy"):
        assert ddpo[skill] >= sft[skill] - MAX_SKILL_LOSS, f"{skill} {sft[skill]:.3f} -> {ddpo[skill]:.3f}"
