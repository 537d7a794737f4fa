"""`rlhfv-nb validate`: unknown benchmarks rejected with a suggestion, `--set` overrides, the preset's own values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhfv_nb.cli import main
from rlhfv_nb.config import ConfigError, load_config, project_root

PARAMS = project_root(Path(__file__).parent) / "params"


def _validate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_unknown_benchmark_is_rejected_with_the_closest_name(capsys: pytest.CaptureFixture) -> None:
    code, out, err = _validate(capsys, str(PARAMS / "cpu-tiny.yaml"),
                               "--set", "evaluation.benchmarks=[world_chair, object_halbenc]")
    assert code == 2 and out == ""
    assert "evaluation.benchmarks[1]: unknown benchmark 'object_halbenc'" in err
    assert "did you mean 'object_halbench'?" in err and "world_pope" in err  # and the known names
    assert len(err.strip().splitlines()) == 1


def test_every_entry_point_rejects_an_unknown_benchmark(tmp_path: Path) -> None:
    params = tmp_path / "typo.yaml"
    params.write_text(f"extends: {PARAMS / 'qlora-1gpu.yaml'}\nevaluation: {{benchmarks: [pope, amberr]}}\n")
    with pytest.raises(ConfigError, match=r"unknown benchmark 'amberr' \(did you mean 'amber'\?"):
        load_config(params)
    with pytest.raises(ConfigError, match="unknown benchmark 'nonsense' \\(known: object_halbench"):
        load_config(PARAMS / "cpu-tiny.yaml", evaluation={"benchmarks": ["nonsense"]})


def test_set_overrides_are_applied_and_named(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _validate(capsys, str(PARAMS / "cpu-tiny.yaml"), "--set", "ddpo.beta=0.25",
                             "--set", "evaluation.benchmarks=[world_pope]", "--set", "seed=3")
    values = yaml.safe_load(out)
    assert code == 0
    assert (values["ddpo"]["beta"], values["evaluation"]["benchmarks"], values["seed"]) == (0.25, ["world_pope"], 3)
    assert values["ddpo"]["gamma"] == 5.0  # the rest of the section stays the preset's
    assert "# --set ddpo.beta=0.25" in out


def test_a_bad_set_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture) -> None:
    code, _, err = _validate(capsys, str(PARAMS / "cpu-tiny.yaml"), "--set", "ddpo.bta=1")
    assert code == 2 and err.startswith("rlhfv-nb: ") and len(err.strip().splitlines()) == 1
    assert "ddpo.bta: unknown key (did you mean 'beta'?)" in err


def test_a_real_preset_prints_its_own_values(capsys: pytest.CaptureFixture) -> None:
    """Through `extends:` too; the tiny model's shape (cpu-tiny's numbers, the defaults) is not shown for it."""
    params = PARAMS / "qlora-1gpu-gemma3-4b.yaml"
    code, out, _ = _validate(capsys, str(params))
    values = yaml.safe_load(out)
    assert code == 0 and out.startswith(f"# {params}, extends qlora-1gpu.yaml\n")
    assert values["model"]["base"] == "google/gemma-3-4b-it"  # this file's
    assert values["model"]["load_in_4bit"] is True and values["ddpo"]["lr"] == 1e-5  # qlora-1gpu.yaml's
    assert values["evaluation"]["benchmarks"] == ["object_halbench", "mmhal_bench", "llava_bench", "pope"]
    assert "tiny" not in values["model"] and "vision_pretrain_steps" not in out
    assert load_config(values) == load_config(params)  # the output is a params file with the same values


def test_cpu_tiny_prints_its_tiny_model(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _validate(capsys, str(PARAMS / "cpu-tiny.yaml"))
    values = yaml.safe_load(out)
    assert code == 0 and values["model"]["base"] == "tiny" and values["model"]["tiny"]["hidden_size"] == 128
    assert load_config(values) == load_config(PARAMS / "cpu-tiny.yaml")
