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
# The cpu-tiny SFT and feedback; 200 instead of 500 held-out images, CHAIR only, no plain-DPO ablation.
REDUCED = {
    "data": {"eval_images": 200},
    "evaluation": {"benchmarks": ["world_chair"]},
    "ddpo": {"ablation_gammas": []},
}
# Required on the reduced run: DDPO cuts response-level CHAIR by at least this share of SFT's, and keeps at
# least this share of SFT's object recall. The full cpu-tiny run targets -30% and -10%.
MIN_CHAIR_DROP = 0.25
MIN_RECALL_KEPT = 0.90

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, dict[str, float]]]:
    cfg = load_config(ROOT / "params" / "cpu-tiny.yaml", run_dir=str(tmp_path_factory.mktemp("effect")), **REDUCED)
    pipeline.prepare_data(cfg)
    launch_stage(cfg, "sft")
    pipeline.collect_feedback(cfg)
    launch_stage(cfg, "ddpo")
    suite = run_benchmarks(cfg, pipeline.trained_models(cfg))
    return cfg, {name: by_bench["world_chair"].metrics for name, by_bench in suite.results.items()}


def test_the_sft_model_hallucinates(reduced_run) -> None:
    _, metrics = reduced_run
    sft = metrics["SFT"]
    assert sft["CHAIRs_refine"] >= 0.10, f"the SFT model hardly hallucinates: {sft}"
    assert sft["recall"] >= 0.60, f"the SFT model does not see the objects (blind: ~0.36): {sft}"


def test_ddpo_hallucinates_less_without_saying_less(reduced_run) -> None:
    cfg, metrics = reduced_run
    sft, ddpo = metrics["SFT"], metrics[pipeline.model_label(cfg.ddpo.gamma)]
    drop = 1 - ddpo["CHAIRs_refine"] / sft["CHAIRs_refine"]
    assert drop >= MIN_CHAIR_DROP, f"response-level CHAIR {sft['CHAIRs_refine']:.3f} -> {ddpo['CHAIRs_refine']:.3f}"
    assert ddpo["CHAIRi"] < sft["CHAIRi"]
    assert ddpo["recall"] >= MIN_RECALL_KEPT * sft["recall"], f"recall {sft['recall']:.3f} -> {ddpo['recall']:.3f}"
