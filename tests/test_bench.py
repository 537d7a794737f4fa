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
    ours_labels = {"ours-g1", "ours-g1-unshared"}
    assert {run["label"] for run in report["runs"]} == (ours_labels | {"trl"} if HAVE_TRL else ours_labels)
    assert all(run["steps"] == 2 and run["peak_rss_mib"] > 0 for run in report["runs"])
    assert "| time per optimizer step (s) |" in capsys.readouterr().out
    # one image-and-prompt encoding per pair trains exactly as one row per answer
    assert report["targets"]["ours-g1"]["same_loss_met"]
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


def test_cpu_tiny_seeds_summary(tmp_path):
    """Relative changes per seed, the mean and spread over seeds, the targets, and the docs' blocks written from
    them, from the table a finished run's notebook 04 writes."""
    from bench import cpu_tiny_seeds as seeds

    def run(seed: int, sft_chair: float, ddpo_chair: float, ddpo_cell: float) -> dict:
        row = dict.fromkeys(seeds.COLUMNS, 50.0)
        table = {"SFT": {**row, "World Resp. (CHAIRs_refine)": sft_chair, "POPE world acc": 80.0},
                 "DDPO gamma=5": {**row, "World Resp. (CHAIRs_refine)": ddpo_chair, "World recall": 45.0,
                                  "World cell acc": ddpo_cell},
                 "DPO (gamma=1)": row}
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "metrics.json").write_text(json.dumps({"evaluation": {"table": table}}))
        return seeds.seed_result(tmp_path / str(seed))

    results = [run(0, 20.0, 10.0, 50.0), run(1, 40.0, 10.0, 40.0)]
    assert results[0]["DDPO gamma=5"]["CHAIRs vs SFT"] == pytest.approx(-0.5)
    assert results[1]["DDPO gamma=5"]["CHAIRs vs SFT"] == pytest.approx(-0.75)
    assert results[0]["DDPO gamma=5"]["recall vs SFT"] == pytest.approx(-0.1)
    assert seeds.targets_met(results[0])["cell acc within 5 points"]
    assert not seeds.targets_met(results[1])["cell acc within 5 points"]  # 50 -> 40
    assert seeds.targets_met(results[1])["CHAIRs at least 30% lower"]
    mean = seeds.mean_over(results)
    assert mean["DDPO gamma=5"]["CHAIRs vs SFT"] == pytest.approx(-0.625)  # mean of the seeds' changes
    assert mean["DDPO gamma=5"]["CHAIRs vs SFT (of means)"] == pytest.approx(10 / 30 - 1)  # change of the means
    assert seeds.spread_over(results)["SFT"]["CHAIRs"] == pytest.approx(14.142, abs=1e-3)  # stdev of 20 and 40
    assert "| DDPO gamma=5 | 10.0 |" in seeds.markdown(mean, "mean")

    result = {"per_seed": dict(enumerate(results)), "mean": mean, "spread": seeds.spread_over(results),
              "notebook_seconds": {0: 300.0, 1: 310.0}, "threads": 2, "machine": {"cpus": 2, "torch": "2.13.0"},
              "targets": {"per_seed": {i: seeds.targets_met(r) for i, r in enumerate(results)},
                          "mean": seeds.targets_met(mean)}}
    block = seeds.seeds_block(result)
    assert "| 1 | DDPO gamma=5 | 10.0 (-75%) / 45.0 / 50.0 (50) / 50.0 / 50.0 / 40.0 / 50.0 |" in block
    assert "Seed 1 missed: cell acc within 5 points." in block and "Seed 0 missed" not in block
    doc = "intro\n<!-- seeds-2threads -->\nold table\n<!-- /seeds-2threads -->\nafter\n"
    written = seeds.replace_block(doc, "seeds-2threads", block, "doc.md")
    assert written.startswith("intro\n<!-- seeds-2threads -->\n| seed |") and written.endswith("-->\nafter\n")
    assert "old table" not in written
    assert seeds.replace_block("<!-- new -->\n<!-- /new -->\n", "new", "rows", "doc.md") == \
        "<!-- new -->\nrows\n<!-- /new -->\n"  # a block not written yet
    with pytest.raises(ValueError, match="doc.md: no block <!-- seeds-1thread -->"):
        seeds.replace_block(doc, "seeds-1thread", block, "doc.md")
    sentence = seeds.summary_sentence({2: result})
    assert "with 2 torch threads, response-level CHAIR goes from 30.0% (SFT) to 10.0%" in sentence
    assert sentence.startswith("Mean over seeds 0, 1 (500 held-out images each)")


def test_rlaifv_seeds_summary_and_tables(tmp_path):
    """The means over seeds of the SFT model, the iterative arm's last round and one-shot, the per-round tables and
    the docs block, from hand-made round rows; a seed without an SFT run folder is refused by name."""
    from bench import rlaifv_seeds as rs

    def row(number: int, chairs: float, pairs: int | None = None) -> dict:
        trained = {"gamma": 5.0, "pairs": pairs, "labeler_accuracy": 0.9, "wrongly_ordered": 0.05} if pairs else {}
        return {key: None for key in rs.ROUND_KEYS} | {"round": number, "CHAIRs": chairs, "CHAIRi": chairs / 2,
                                                      "recall": 0.9, "avg_len": 20.0} | trained

    per_seed = {0: {"iterative": [row(0, 0.4), row(1, 0.3, 100), row(2, 0.2, 80)], "oneshot": [row(0, 0.4),
                                                                                              row(1, 0.3, 180)]},
                1: {"iterative": [row(0, 0.2), row(1, 0.2, 50), row(2, 0.1, 40)], "oneshot": [row(0, 0.2),
                                                                                             row(1, 0.2, 90)]}}
    mean = rs.summary(per_seed)
    assert mean["SFT"]["CHAIRs"] == pytest.approx(0.3) and "pairs" not in mean["SFT"]
    assert mean["iterative"]["CHAIRs"] == pytest.approx(0.15) and mean["one-shot"]["CHAIRs"] == pytest.approx(0.25)
    assert mean["iterative"]["pairs"] == mean["one-shot"]["pairs"] == 135  # over all rounds: (180 + 90) / 2
    table = rs.seed_table(0, per_seed[0])
    assert table.count("| 0 | iterative |") == 3 and table.count("| 0 | oneshot |") == 1
    assert "| 0 | oneshot | 1 | γ5 | 180 | 0.900 | 0.050 | 0.300 | 0.150 | 0.900 | 20.0 |" in table
    per_seed[0]["oneshot"][1]["epoch"] = 1  # gamma 5's model after its first epoch won the round
    assert "| 0 | oneshot | 1 | γ5 e1 | 180 |" in rs.seed_table(0, per_seed[0])
    block = rs.docs_block({"per_seed": per_seed, "mean": mean, "threads": 1, "machine": {"cpus": 2, "torch": "x"}})
    assert block.startswith("| model (mean over seeds) |") and "Per seed (0, 1):" in block
    assert "No round trained both gamma 5 and gamma 1." in block
    metric = rs.selection_metric({"select_by": ["world.CHAIRi", "world.CHAIRs"]})
    assert metric == "world.CHAIRi" and rs.selection_metric({"select_by": "CHAIRi"}) == "CHAIRi"
    per_seed[0]["iterative"][1]["selection"] = {"gamma=5": {metric: 0.02}, "gamma=1": {metric: 0.03},
                                                "gamma=5 epoch=1": {metric: 0.0}}  # not a final model: not counted
    per_seed[1]["oneshot"][1]["selection"] = {"gamma=5": {metric: 0.05}, "gamma=1": {metric: 0.03}}
    per_seed[1]["iterative"][2]["selection"] = {"gamma=5": {metric: None}, "gamma=1": {metric: 0.03}}  # no object
    assert rs.gamma_rounds(per_seed, metric) == [(0, "iterative", 1, 0.02, 0.03), (1, "oneshot", 1, 0.05, 0.03)]
    assert rs.gamma_summary(per_seed, metric) == (
        "Gamma 5 against gamma 1 (final models), trained on the same pairs from the same policy: the lower "
        "world.CHAIRi on the selection images in 1 of 2 rounds; mean difference (gamma 5 - gamma 1) +0.0050.")
    per_seed[1]["oneshot"][1]["selection"] = {"gamma=5": 0.05, "gamma=1": 0.03}  # a results file of before
    assert rs.gamma_rounds(per_seed, metric)[1] == (1, "oneshot", 1, 0.05, 0.03)
    with pytest.raises(FileNotFoundError, match="seed9: no SFT model; run `python -m bench.cpu_tiny_seeds`"):
        rs.copy_sft_run(tmp_path / "seed9", tmp_path / "dest")
