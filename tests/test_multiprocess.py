"""Same DDPO results whatever the process count: 1 process x 4 pairs = 2 processes x 2 pairs = 1 x 2 x 2 accumulation.

Trainer (through accelerate) draws one seeded permutation of the data on every process (the seedable
sampler) and gives process `p` the micro-batches `p, p + n, ...` of it, so two processes with batch 2
together see exactly the 4 pairs that one process with batch 4 sees, in the same step. DDP averages the
gradients of the two per-process means, which equals the mean over the 4 pairs. Dropout is off in the tiny
model (attention dropout 0, no LoRA).

What can still differ is floating-point summation order: each process pads its own micro-batch (other
widths, other matmul shapes) and the gradient all-reduce sums two halves instead of one batch: relative
noise of ~1e-7 in fp32. The per-step metrics therefore agree to 1e-5 (Trainer rounds the logged `loss` to
4 decimals, so that one is compared at 1e-4). Weights agree less tightly, because Adam divides each
gradient by its own running scale: where a gradient is ~0 (e.g. CLIP's key bias, which softmax ignores) the
noise itself is normalised into an lr-sized step. Measured: 3e-6 at most after 4 steps at lr 1e-3, while
training moved weights by 2.5e-3; the test allows 1% of that movement.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file
from tiny_run import CPU_TINY, make_run

from rlhfv_nb.config import load_config
from rlhfv_nb.launch import ddpo_inputs, launch_env, launch_stage, write_params
from rlhfv_nb.logps import read_cache
from rlhfv_nb.pipeline import reference_settings_path
from rlhfv_nb.train import read_log

GAMMA = 2.0
METRICS = ("ddpo_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    params = make_run(root / "template")
    # The reference log-probs are computed once, before any launch; every variant copies them.
    ddpo_inputs(load_config(CPU_TINY, **params), compute_missing=True)
    return root, params


def _run(prepared, name: str, batch: int, accumulation: int, processes: int):
    root, params = prepared
    run_dir = root / name
    shutil.copytree(root / "template", run_dir)
    cfg = load_config(CPU_TINY, **{**params, "run_dir": str(run_dir), "launch": {"num_processes": processes},
                                   "ddpo": {**params["ddpo"], "batch_size": batch, "grad_accum": accumulation}})
    start = time.perf_counter()
    final = launch_stage(cfg, "ddpo", gamma=GAMMA)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    logs = [r for r in read_log(final.parent / "log.jsonl") if "ddpo_loss" in r]
    return logs, load_file(final / "model.safetensors")


@pytest.fixture(scope="module")
def single(prepared):
    return _run(prepared, "one", batch=4, accumulation=1, processes=1)


def _assert_same(prepared, reference, other, label: str) -> None:
    (ref_logs, ref_weights), (logs, weights) = reference, other
    assert [r["step"] for r in logs] == [r["step"] for r in ref_logs] == [1, 2, 3, 4]
    for ref, row in zip(ref_logs, logs):
        assert row["loss"] == pytest.approx(ref["loss"], abs=1e-4), (label, row["step"])
        for name in METRICS:
            assert row[name] == pytest.approx(ref[name], abs=1e-5, rel=1e-5), (label, row["step"], name)
    assert ref_logs[-1]["ddpo_loss"] < ref_logs[0]["ddpo_loss"]  # it trained
    initial = load_file(prepared[0] / "template" / "base" / "model.safetensors")
    assert weights.keys() == ref_weights.keys() == initial.keys()
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    moved = max((ref_weights[k] - initial[k]).abs().max().item() for k in weights)
    print(f"{label}: max weight difference {worst:.2e} (training moved weights by up to {moved:.2e})")
    assert worst < 0.01 * moved, label


def test_gradient_accumulation_matches_one_batch(prepared, single):
    _assert_same(prepared, single, _run(prepared, "accum", batch=2, accumulation=2, processes=1), "1x2 x 2 accum")


def test_two_processes_match_one(prepared, single):
    _assert_same(prepared, single, _run(prepared, "two", batch=2, accumulation=1, processes=2), "2 processes x 2")


def test_every_entry_point_computes_the_reference_through_one_function(prepared, tmp_path):
    """The CLI (`python -m rlhfv_nb.launch ddpo`, one process) and a 2-process launch start without a reference
    cache and each compute it through `pipeline.compute_reference` (its settings file says so), to the same
    values as the fixture's `ddpo_inputs`; notebook 03's path is checked in tests/test_notebooks.py."""
    root, params = prepared
    template = load_config(CPU_TINY, **params)
    expected = read_cache(ddpo_inputs(template, compute_missing=False)[1])
    caches = {}
    for name, processes in (("cli", 1), ("launch", 2)):
        run_dir = tmp_path / name
        shutil.copytree(root / "template", run_dir, ignore=shutil.ignore_patterns("logps"))
        cfg = load_config(CPU_TINY, **{**params, "run_dir": str(run_dir), "launch": {"num_processes": processes},
                                       "ddpo": {**params["ddpo"], "max_steps": 1}})
        assert not cfg.layout.reference_cache_dir.exists()
        if name == "cli":
            command = [sys.executable, "-m", "rlhfv_nb.launch", "ddpo", str(write_params(cfg, tmp_path / "p.yaml")),
                       "--gamma", str(GAMMA)]
            subprocess.run(command, check=True, capture_output=True, text=True, env=launch_env())
        else:
            launch_stage(cfg, "ddpo", gamma=GAMMA)
        (cache,) = cfg.layout.reference_cache_dir.glob("ref-*.jsonl")
        settings = json.loads(reference_settings_path(cache).read_text())
        assert settings["computed_by"] == "rlhfv_nb.pipeline.compute_reference" and settings["device"] == "cpu"
        caches[name] = read_cache(cache)
    for got in caches.values():
        assert got.keys() == expected.keys()
        for uid, entry in expected.items():
            assert got[uid]["chosen"] == pytest.approx(entry["chosen"], abs=1e-6)
            assert got[uid]["rejected"] == pytest.approx(entry["rejected"], abs=1e-6)
