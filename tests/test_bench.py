"""The benchmark scripts in their smallest mode, so they keep running (numbers are not checked, shapes are).

The scripts' `main` runs in this process (one set of imports for both tests); training arms still run in their
own processes, as in a real benchmark.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench import eval_throughput, train_vs_trl

HAVE_TRL = importlib.util.find_spec("trl") is not None


def test_train_vs_trl_minimal(tmp_path, capsys):
    args = ["--steps", "2", "--pairs", "4", "--batch-size", "2", "--gammas", "1", "--repeats", "1",
            "--results-dir", str(tmp_path)]
    report = train_vs_trl.main(args + ([] if HAVE_TRL else ["--skip-trl"]))
    assert (tmp_path / "train_vs_trl-tiny-full-float32.json").exists()
    assert {run["label"] for run in report["runs"]} == ({"ours-g1", "trl"} if HAVE_TRL else {"ours-g1"})
    assert all(run["steps"] == 2 and run["peak_rss_mib"] > 0 for run in report["runs"])
    assert "| time per optimizer step (s) |" in capsys.readouterr().out
    if not HAVE_TRL:
        pytest.skip("trl is not installed (pip install -e '.[bench]'): only the rlhfv_nb arm ran")
    ours, trl = (report["summary"][k] for k in ("ours-g1", "trl"))
    # gamma = 1 DDPO is plain DPO: after the same two steps on the same batches both land on the same loss
    assert ours["final DPO loss, all pairs"] == pytest.approx(trl["final DPO loss, all pairs"], abs=1e-3)


def test_eval_throughput_minimal(tmp_path, capsys):
    args = ["--items", "2", "--batch-size", "2", "--max-new-tokens", "4", "--responses", "40", "--repeats", "1",
            "--results-dir", str(tmp_path)]
    report = eval_throughput.main(args)
    assert json.loads((tmp_path / "eval_throughput-tiny.json").read_text())["chair"]
    assert [g["batch_size"] for g in report["generation"]] == [2, 1]
    assert all(g["new_tokens"] > 0 for g in report["generation"])
    assert [c["vocabulary"] for c in report["chair"]] == ["world", "coco"]
    assert "responses/s" in capsys.readouterr().out
