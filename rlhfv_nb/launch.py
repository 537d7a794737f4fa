"""Run a training stage in this process, or in `accelerate launch` processes (multi-GPU, multi-node, DeepSpeed, FSDP).

From a shell, on every machine of the run::

    accelerate launch [--config_file configs/accelerate/deepspeed_zero3.yaml] \\
        -m rlhfv_nb.launch ddpo params/full-8xa100.yaml --gamma 1.1 [--set ddpo.batch_size=2 ...]

From a notebook, `launch_stage(cfg, "ddpo", gamma=1.1)`: in-process for one process without an
accelerate config, otherwise `accelerate launch` as a subprocess whose output is printed line by line
(papermill records it). Reference log-probs are data: they are computed once, before the launch, and the
launched processes only read them. Only rank 0 writes shared files (Trainer logs, checkpoints, the model).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import rlhfv_nb
from rlhfv_nb.config import Config, ConfigError, load_config, project_root
from rlhfv_nb.planner import check_hardware

log = logging.getLogger(__name__)

STAGES = ("sft", "ddpo")
DONE = "rlhfv_nb.launch: stage finished, model in "


class LaunchError(RuntimeError):
    """A launched stage failed, or its inputs are not ready."""


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`section.key=value` strings as nested sections for `load_config`; values are YAML (`2`, `true`, `[1, 2]`)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        *sections, name = key.split(".")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = yaml.safe_load(value)
    return overrides


def ddpo_inputs(cfg: Config, compute_missing: bool) -> tuple[list[dict[str, Any]], Path]:
    """Tokenised pairs and their reference log-prob cache, computing missing entries only if `compute_missing`."""
    from rlhfv_nb import pipeline
    from rlhfv_nb.logps import read_cache
    from rlhfv_nb.modeling import load_processor

    processor = load_processor(pipeline.sft_model_path(cfg), cfg.model)
    rows, _, cache = pipeline.prepared_pairs(cfg, processor)
    missing = len({row["uid"] for row in rows} - read_cache(cache, rows).keys())
    if missing and not compute_missing:
        raise LaunchError(f"{missing} of {len(rows)} pairs have no reference log-probs in {cache}; compute them "
                          "once before launching (pipeline.compute_reference, or launch_stage does it)")
    if missing:
        cache = pipeline.compute_reference(cfg, rows, processor=processor, cache=cache)
    return rows, cache


def run_stage(cfg: Config, stage: str, gamma: float | None = None, launched: bool = False) -> Path:
    """Train `stage` in this process (one of possibly many launched ones); returns the saved model folder."""
    from rlhfv_nb import pipeline

    if stage == "sft":
        return Path(pipeline.run_sft(cfg))
    if stage != "ddpo":
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    rows, cache = ddpo_inputs(cfg, compute_missing=not launched)
    return Path(pipeline.run_ddpo(cfg, rows, cache, cfg.ddpo.gamma if gamma is None else gamma))


def _prepare(cfg: Config, stage: str) -> None:
    """What must exist once before processes start: the (tiny) base model, the reference log-probs."""
    from rlhfv_nb import pipeline

    if stage == "sft":
        pipeline.build_base_model(cfg)
    else:
        ddpo_inputs(cfg, compute_missing=True)


def write_params(cfg: Config, path: Path) -> Path:
    """The resolved params (notebook overrides included, run folder absolute) as YAML for the launched processes."""
    values = cfg.to_dict()
    values["run_dir"] = str(cfg.run_path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(cfg: Config, stage: str, params_path: Path, gamma: float | None = None,
                       launch_args: Sequence[str] = ()) -> list[str]:
    """The `accelerate launch` command line for `stage`.

    Without an accelerate config: one machine, processes on 127.0.0.1 at a free port, through accelerate's
    torchrun launcher (`--multi_gpu`). Without CUDA that launcher still works: `launch_env` sets
    ACCELERATE_USE_CPU, so Trainer picks MULTI_CPU with gloo (`--cpu` would start one process unless MPI
    is set up).
    `launch_args` go to `accelerate launch` (e.g. `--machine_rank 1` for multi-node).
    """
    train = cfg.ddpo if stage == "ddpo" else cfg.sft
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.launch.num_processes)]
    if cfg.launch.accelerate_config:
        command += ["--config_file", str(project_root() / cfg.launch.accelerate_config)]
    else:
        if cfg.launch.num_processes > 1:
            command.append("--multi_gpu")
        command += ["--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port",
                    str(_free_port()), "--mixed_precision", "bf16" if train.bf16 else "no", "--dynamo_backend", "no"]
    command += [*launch_args, "-m", "rlhfv_nb.launch", stage, str(params_path)]
    if gamma is not None:
        command += ["--gamma", repr(gamma)]
    return command


def launch_env() -> dict[str, str]:
    """Environment of the launched processes: this package first on the path, unbuffered, no progress bars."""
    import torch

    env = dict(os.environ)
    package_root = str(Path(rlhfv_nb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RLHFV_NB_QUIET", "1")  # tqdm bars through a pipe are noise; Trainer still logs each record
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def stream(command: Sequence[str], env: dict[str, str] | None = None, tail_lines: int = 60) -> list[str]:
    """Run `command`, printing its merged stdout and stderr line by line as they come; returns all lines.

    On a non-zero exit raises `LaunchError` with the command and the last `tail_lines` lines.
    """
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=tail_lines)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace", bufsize=1) as proc:
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line)
                tail.append(line)
        except BaseException:  # a notebook interrupt must not leave training processes behind
            proc.terminate()
            raise
    if proc.returncode:
        raise LaunchError(f"`{shlex.join(command)}` exited with status {proc.returncode}; its last "
                          f"{len(tail)} lines:\n" + "".join(tail))
    return lines


def launch_stage(cfg: Config, stage: str, gamma: float | None = None, params_path: str | Path | None = None,
                 launch_args: Sequence[str] = ()) -> Path:
    """Train `stage` ("sft" or "ddpo") as `cfg.launch` asks; returns the saved model folder.

    One process and no accelerate config: runs here. Otherwise prepares what must exist once (the base
    model, the reference log-probs), writes the resolved params to `params_path` (default
    `<run>/launch/<stage>.yaml`) and runs `accelerate launch -m rlhfv_nb.launch`, streaming its output.
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    check_hardware(cfg)
    if cfg.launch.num_processes == 1 and not cfg.launch.accelerate_config:
        return run_stage(cfg, stage, gamma)
    _prepare(cfg, stage)
    params = write_params(cfg, Path(params_path) if params_path else cfg.layout.launch_params(stage))
    lines = stream(accelerate_command(cfg, stage, params, gamma, launch_args), launch_env())
    done = [line[len(DONE):].strip() for line in lines if line.startswith(DONE)]
    if not done:
        raise LaunchError(f"stage {stage} exited cleanly but rank 0 never reported its model folder")
    return Path(done[-1])


def parse_command(argv: Sequence[str] | None = None) -> tuple[str, Config, float | None]:
    """(stage, config, gamma) from `<stage> <params.yaml> [--gamma G] [--set section.key=value ...]`."""
    parser = argparse.ArgumentParser(prog="accelerate launch -m rlhfv_nb.launch", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("params", help="a params YAML file")
    parser.add_argument("--gamma", type=float, help="DDPO gamma (default: ddpo.gamma)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one parameter (repeatable); the value is YAML")
    args = parser.parse_args(argv)
    return args.stage, load_config(args.params, **parse_overrides(args.overrides)), args.gamma


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of each launched process."""
    stage, cfg, gamma = parse_command(argv)
    check_hardware(cfg)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(name)s: %(message)s")
    import torch

    if torch.cuda.is_available():  # before loading: a 4-bit model goes to the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    from rlhfv_nb import pipeline

    if stage == "sft" and several and cfg.model.base == "tiny" and not pipeline.base_is_current(cfg):
        raise LaunchError("the tiny base model is missing or outdated: build it once first "
                          "(pipeline.build_base_model, or launch_stage does it); launched processes would all build it "
                          "at once")
    # A single process (`python -m rlhfv_nb.launch ddpo ...`) computes a missing reference itself; launched
    # processes only read what launch_stage computed before starting them.
    out = run_stage(cfg, stage, gamma, launched=several)
    if rank == 0:
        print(f"{DONE}{out}", flush=True)


if __name__ == "__main__":
    main()
