"""The notebooks, executed by papermill on a shrunken cpu-tiny run: artifacts, metrics, skips, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from rlhfv_nb import runner
from rlhfv_nb.config import load_config, project_root
from rlhfv_nb.manifests import stage_status, write_manifest

ROOT = project_root(Path(__file__).parent)
PARAMS = ROOT / "params" / "cpu-tiny.yaml"
# Small enough for the test suite, large enough that every stage has real work (pairs, answers, metrics).
SMALL = {
    "data": {"sft_images": 120, "feedback_images": 40, "eval_images": 12},
    "sft": {"max_steps": 30, "batch_size": 16, "logging_steps": 5},
    "feedback": {"samples_per_image": 1, "max_new_tokens": 32},
    "ddpo": {"max_steps": 6, "batch_size": 8, "logging_steps": 2},
    "evaluation": {"max_new_tokens": 32},
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    return runner.run(PARAMS, overrides={**SMALL, "run_dir": str(run_dir)}, progress=False)


def test_every_stage_leaves_its_artifacts(run_folder: Path) -> None:
    for stage in runner.stages():
        executed = nbformat.read(run_folder / "notebooks" / f"{stage.name}.ipynb", as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected, f"{stage.name}: papermill did not record the parameters"
        assert (run_folder / "stages" / f"{stage.name}.json").exists()
    assert (run_folder / "sft" / "final" / "config.json").exists()
    (reference,) = (run_folder / "data" / "logps").glob("ref-*.settings.json")  # notebook 03's reference pass
    assert json.loads(reference.read_text())["computed_by"] == "rlhfv_nb.pipeline.compute_reference"
    assert (run_folder / "ddpo" / "gamma5" / "final" / "config.json").exists()
    assert (run_folder / "ddpo" / "gamma1" / "final" / "config.json").exists()
    metrics = json.loads((run_folder / "metrics.json").read_text())
    feedback = metrics["sft"]["feedback"]  # cpu-tiny pairs every short answer, a right one against a wrong one
    assert feedback["corrected"] > 0 and set(feedback["right_answer_pairs_by_type"]) <= {"exists", "color", "count",
                                                                                          "cell"}
    assert feedback["pairs"] == feedback["corrected"] + sum(feedback["right_answer_pairs_by_type"].values())
    assert sum(feedback["right_answer_pairs_by_type"].values()) + sum(
        n for qtype, n in feedback["corrected_by_type"].items() if qtype != "describe") == 2 * 40  # 2 per image
    assert 0.0 <= metrics["ddpo"]["gamma=5"]["rewards/accuracies"] <= 1.0
    results = metrics["evaluation"]["results"]
    assert set(results) == {"SFT", "DDPO gamma=5", "DPO (gamma=1)"}
    for by_benchmark in results.values():
        assert by_benchmark["world_chair"]["status"] == "ok"
        assert by_benchmark["world_chair"]["metrics"]["n_scored"] == SMALL["data"]["eval_images"]
        assert by_benchmark["world_chair"]["metrics"]["attributes"]["n_descriptions"] == SMALL["data"]["eval_images"]
        assert by_benchmark["world_pope"]["status"] == "ok"
    # notebook 04's bootstrap intervals (CHAIRs is defined for every model) and its reading of the numbers
    pairs = [("DDPO gamma=5", "SFT"), ("DPO (gamma=1)", "SFT"), ("DDPO gamma=5", "DPO (gamma=1)")]
    chairs = [(r["model"], r["vs"]) for r in metrics["evaluation"]["bootstrap"] if r["metric"] == "World CHAIRs"]
    assert chairs == pairs
    assert all(f"**{model} vs {vs}**" in metrics["evaluation"]["interpretation"] for model, vs in pairs)


def test_the_run_folder_names_no_absolute_path_of_the_machine(run_folder: Path) -> None:
    """JSON, params and executed notebooks name paths relative to the run folder, the project or `~`."""
    machine = {str(run_folder), str(run_folder.resolve()), str(ROOT), str(Path.home())}
    written = [p for pattern in ("*.json", "*.ipynb", "*.yaml", "*.log") for p in run_folder.rglob(pattern)]
    assert len(written) > 20
    found = {str(p.relative_to(run_folder)): [m for m in machine if m in p.read_text(errors="replace")]
             for p in written}
    assert {name: hits for name, hits in found.items() if hits} == {}
    # and the run is still one the runner recognises as finished (the manifests' values are portable too)
    assert all(stage_status(load_config(PARAMS, **SMALL, run_dir=str(run_folder)), s.name).done
               for s in runner.stages())


def test_finished_stages_are_skipped_unless_forced(run_folder: Path, capsys: pytest.CaptureFixture) -> None:
    runner.run(PARAMS, only=["01"], overrides={**SMALL, "run_dir": str(run_folder)}, progress=False)
    assert "[skip] 01_data" in capsys.readouterr().out
    params = yaml.safe_load((run_folder / "params.yaml").read_text())
    assert set(params["stages"].values()) == {"done"}


def test_a_changed_config_reruns_its_stage_and_marks_later_ones_stale(tmp_path: Path, capsys) -> None:
    small = {**SMALL, "run_dir": str(tmp_path), "data": {**SMALL["data"], "eval_images": 3}}
    runner.run(PARAMS, only=["01"], overrides=small, progress=False)
    first = json.loads((tmp_path / "stages" / "01_data.json").read_text())
    assert first["values"]["data.eval_images"] == 3 and str(tmp_path) not in json.dumps(first)
    changed = {**small, "data": {**small["data"], "eval_images": 4}}
    runner.run(PARAMS, only=["01"], overrides=changed, progress=False)
    out = capsys.readouterr().out
    assert "[rerun] 01_data: data.eval_images: 3 -> 4" in out and "[skip]" not in out
    assert json.loads((tmp_path / "stages" / "01_data.json").read_text())["values"]["data.eval_images"] == 4
    runner.run(PARAMS, only=["01"], overrides={**changed, "ddpo": {**SMALL["ddpo"], "beta": 0.1}}, progress=False)
    assert "[skip] 01_data" in capsys.readouterr().out  # 01 does not depend on ddpo.*


def test_stage_status_names_changed_keys_and_re_run_inputs(tmp_path: Path) -> None:
    cfg = load_config(PARAMS, run_dir=str(tmp_path))
    assert stage_status(cfg, "02_sft").state == "missing"
    write_manifest(cfg, "01_data")
    write_manifest(cfg, "02_sft")
    assert stage_status(cfg, "02_sft").done
    other = load_config(PARAMS, run_dir=str(tmp_path), sft={"lr": 0.01})
    assert stage_status(other, "02_sft").changes == (f"sft.lr: {cfg.sft.lr} -> 0.01",)
    assert stage_status(other, "03_ddpo").state == "missing" and stage_status(other, "01_data").done
    write_manifest(load_config(PARAMS, run_dir=str(tmp_path), seed=1), "01_data")  # 01 re-run with another seed
    assert stage_status(cfg, "02_sft").changes == ("01_data was re-run since",)


def test_evaluation_reruns_once_a_judge_key_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    cfg = load_config(PARAMS, run_dir=str(tmp_path), evaluation={"judge": {"api_key_env": "JUDGE_KEY_FOR_TEST"}})
    for stage in ("01_data", "02_sft", "03_ddpo", "04_evaluate"):
        write_manifest(cfg, stage)
    assert stage_status(cfg, "04_evaluate").done
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "secret-value")
    assert stage_status(cfg, "04_evaluate").changes == ("evaluation.judge.key_set: False -> True",)
    assert "secret-value" not in (tmp_path / "stages" / "04_evaluate.json").read_text()


def test_a_failing_stage_names_the_cell_and_keeps_earlier_work(tmp_path: Path) -> None:
    overrides = {**SMALL, "run_dir": str(tmp_path)}
    runner.run(PARAMS, only=["01"], overrides=overrides, progress=False)
    with pytest.raises(runner.StageFailed) as failure:  # 03 before 02: there is no SFT model to load
        runner.run(PARAMS, only=["03"], overrides=overrides, progress=False)
    message = str(failure.value)
    assert "stage 03_ddpo failed in cell" in message
    assert "executed notebook" in message
    assert (tmp_path / "data" / "sft.parquet").exists()
    assert (tmp_path / "notebooks" / "03_ddpo.ipynb").exists()


def test_a_notebook_runs_on_its_own_with_papermill_and_a_params_file(tmp_path: Path) -> None:
    values = yaml.safe_load(PARAMS.read_text())
    values.update(SMALL, run_dir=str(tmp_path / "run"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    out = tmp_path / "01.ipynb"
    command = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "01_data.ipynb"), str(out),
               "-f", str(params), "--cwd", str(ROOT)]
    kernel = runner.default_kernel()
    if kernel:
        command += ["-k", kernel]
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert (tmp_path / "run" / "data" / "eval.parquet").exists()
