"""The launcher's command line, overrides, resolved params and output streaming (no training here)."""

from __future__ import annotations

import sys

import pytest
from tiny_run import CPU_TINY, SHAPE

from rlhfv_nb.config import ConfigError, load_config
from rlhfv_nb.launch import (
    LaunchError,
    accelerate_command,
    parse_command,
    parse_overrides,
    stream,
    write_params,
)


def test_parse_overrides_nests_and_reads_yaml_values():
    assert parse_overrides(["ddpo.batch_size=2", "ddpo.use_average=true", "model.lora.r=8", "seed=3",
                            "evaluation.benchmarks=[pope]", "data.max_pairs=null"]) == {
        "ddpo": {"batch_size": 2, "use_average": True},
        "model": {"lora": {"r": 8}},
        "seed": 3,
        "evaluation": {"benchmarks": ["pope"]},
        "data": {"max_pairs": None},
    }
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["ddpo.batch_size"])


def test_parse_command_applies_overrides_over_the_file(tmp_path):
    params = write_params(load_config({"ddpo": {"beta": 0.3}}), tmp_path / "p.yaml")
    stage, cfg, gamma = parse_command(["ddpo", str(params), "--gamma", "1.5", "--set", "ddpo.batch_size=2"])
    assert (stage, gamma, cfg.ddpo.batch_size, cfg.ddpo.beta) == ("ddpo", 1.5, 2, 0.3)
    with pytest.raises(ConfigError, match="ddpo.bta"):
        parse_command(["ddpo", str(params), "--set", "ddpo.bta=1"])


def test_written_params_reload_to_the_same_config(tmp_path):
    cfg = load_config(CPU_TINY, run_dir=str(tmp_path / "run"), model={"tiny": vars(SHAPE)}, ddpo={"gamma": 1.1})
    assert load_config(write_params(cfg, tmp_path / "launch" / "ddpo.yaml")) == cfg


def test_accelerate_command_single_machine_and_config_file(tmp_path):
    cfg = load_config({"launch": {"num_processes": 2}})
    command = accelerate_command(cfg, "ddpo", tmp_path / "p.yaml", gamma=1.1, launch_args=["--machine_rank", "0"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert "--multi_gpu" in command and command[command.index("--main_process_ip") + 1] == "127.0.0.1"
    assert command[-8:] == ["--machine_rank", "0", "-m", "rlhfv_nb.launch", "ddpo", str(tmp_path / "p.yaml"),
                            "--gamma", "1.1"]
    cfg = load_config("params/full-8xa100.yaml")
    command = accelerate_command(cfg, "ddpo", tmp_path / "p.yaml")
    assert command[command.index("--config_file") + 1].endswith("configs/accelerate/deepspeed_zero3.yaml")
    assert "--multi_gpu" not in command and "--gamma" not in command


def test_stream_prints_lines_as_they_come_and_raises_with_the_tail(capsys):
    lines = stream([sys.executable, "-c", "print('one'); import sys; print('two', file=sys.stderr)"])
    assert lines == ["one\n", "two\n"] and capsys.readouterr().out == "one\ntwo\n"
    script = "import sys\nfor i in range(100): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(LaunchError, match=r"exited with status 3") as err:
        stream([sys.executable, "-c", script], tail_lines=5)
    assert "line 99" in str(err.value) and "line 94" not in str(err.value)
