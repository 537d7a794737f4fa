"""What a run shows while it works: training progress lines, bars that stay short in logs, the processor's torchvision
note said once, and the experiment trackers of `tracking.report_to`."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest
import torch
from model_zoo import build_tiny
from tiny_run import CPU_TINY, make_run
from tqdm import std
from transformers import TrainerState
from transformers.utils import is_torchvision_available

from rlhfv_nb import processing, runner, train
from rlhfv_nb.config import ConfigError, load_config
from rlhfv_nb.logps import reference_logps
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.pipeline import ddpo_dataset, tokenise_pairs
from rlhfv_nb.progress import QUIET_INTERVAL, TRAINING_LINE, progress_bar

# Stages 01-03 in about 45 s (`fast_run`): no vision pretraining, 4 SFT and 4 DDPO steps, one gamma.
FAST = {"model": {"tiny": {"vision_pretrain_steps": 0}},
        "data": {"sft_images": 32, "feedback_images": 16, "eval_images": 2},
        "sft": {"max_steps": 4, "batch_size": 8, "logging_steps": 2},
        "feedback": {"samples_per_image": 1, "max_new_tokens": 16},
        "ddpo": {"max_steps": 4, "batch_size": 4, "logging_steps": 2, "ablation_gammas": []}}
STEP = re.compile(r"\[train\] ddpo-gamma2: step (\d+)/4 epoch [\d.]+ loss -?[\d.]+ ddpo_loss [\d.]+ reward_acc [\d.]+ "
                  r"lr [\d.]+e[-+]\d+ elapsed \d\d:\d\d eta (\S+)$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model's config, processor and DDPO pairs with their reference log-probs (4 steps of batch 4)."""
    params = make_run(tmp_path_factory.mktemp("progress") / "run", pairs=8)
    cfg = load_config(CPU_TINY, **params)
    processor = load_processor(cfg.run_path / "base", cfg.model)
    rows, _ = tokenise_pairs(cfg, processor)
    model = load_model(cfg.run_path / "base", cfg.model)
    reference = reference_logps(model, processor, rows, cfg.run_path / "ref.jsonl", batch_size=8, progress=False)
    return cfg, processor, ddpo_dataset(rows, reference, cfg.ddpo.gamma, cfg.ddpo.min_match)


def _train(tiny: tuple, folder: Path, **tracking: Any) -> Path:
    cfg, processor, pairs = tiny
    model = load_model(cfg.run_path / "base", cfg.model)
    tracking_cfg = load_config(CPU_TINY, tracking=tracking).tracking
    return train.train_ddpo(model, processor, pairs, cfg.ddpo, cfg.model, folder, cfg.seed, tracking_cfg)


def test_a_ddpo_run_prints_its_first_and_last_steps_with_loss_lr_and_eta(tiny, tmp_path, capsys):
    folder = tmp_path / "ddpo"
    _train(tiny, folder)
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith(TRAINING_LINE)]
    assert lines[0] == "[train] ddpo-gamma2: 4 steps, logging every 1"
    steps = [STEP.match(line) for line in lines[1:-1]]
    assert all(steps), lines
    # every step is logged, but within a minute only the first and the last make a line
    assert [int(m.group(1)) for m in steps] == [1, 4] and steps[-1].group(2) == "00:00"
    assert re.fullmatch(r"\[train\] ddpo-gamma2: done: 4 steps in \d\d:\d\d, train_loss -?[\d.]+", lines[-1])
    assert not [line for line in out if line.startswith("{")]  # Trainer's own dict per record is gone
    assert not (folder / "tensorboard").exists() and not list(folder.rglob("events.out.tfevents*"))


def test_report_to_tensorboard_writes_event_files_in_the_training_folder(tiny, tmp_path):
    folder = tmp_path / "ddpo"
    _train(tiny, folder, report_to=["tensorboard"], run_name="exp")
    events = list(folder.rglob("events.out.tfevents*"))
    assert events and all(e.parent == folder / "tensorboard" for e in events)
    args = train.training_arguments(tiny[0].ddpo, folder, 0, load_config(CPU_TINY, tracking={
        "report_to": ["tensorboard", "trackio"], "run_name": "exp", "project": "p"}).tracking, "sft")
    assert (args.report_to, args.run_name, args.project) == (["trackio"], "exp/sft", "p")


def test_tracking_names_are_checked():
    assert load_config(CPU_TINY).tracking.report_to == "none"
    with pytest.raises(ConfigError, match=r"tracking.report_to: 'tensorbord' is not a Trainer integration"):
        load_config(CPU_TINY, tracking={"report_to": ["tensorbord"]})


def test_progress_lines_come_once_a_minute_at_most_besides_the_first_and_last(monkeypatch, capsys):
    clock = iter([0.0, 1.0, 30.0, 61.0, 70.0, 80.0])  # train begin, then the log records of steps 1..5
    monkeypatch.setattr(train.time, "monotonic", lambda: next(clock))
    printer, state = train.ProgressPrinter("sft"), TrainerState(max_steps=5, global_step=0, epoch=0.0)
    printer.on_train_begin(SimpleNamespace(logging_steps=1), state, None)
    for step in range(1, 6):
        state.global_step = step
        printer.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3})
    printed = [line.split(" epoch")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert printed == ["[train] sft: step 1/5", "[train] sft: step 3/5", "[train] sft: step 5/5"]


def test_quiet_bars_are_plain_text_and_keep_their_first_and_final_states(monkeypatch):
    monkeypatch.setenv("RLHFV_NB_QUIET", "1")
    written = io.StringIO()
    with progress_bar(total=100, desc="work", file=written) as bar:
        for _ in range(100):
            bar.update(1)
    assert type(bar) is std.tqdm and bar.mininterval == QUIET_INTERVAL
    states = [s for s in written.getvalue().split("\r") if s.strip()]
    assert len(states) == 2 and "0/100" in states[0] and "100/100" in states[1]


@pytest.mark.skipif(is_torchvision_available(), reason="torchvision is installed: no processor goes without video")
@pytest.mark.parametrize("cuda", [False, True])
def test_a_processor_without_torchvision_is_noted_once_and_warned_of_only_where_cuda_is(
        cuda, tmp_path_factory, monkeypatch, caplog):
    folder = build_tiny("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    processing._warn_if_cuda_lacks_torchvision.cache_clear()
    with caplog.at_level(logging.INFO, logger="rlhfv_nb.processing"):
        for _ in range(2):
            processing.load_processor(folder)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == (1 if cuda else 0)
    assert sum("no video processor" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO) == 2


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stages 01-03 run by the runner on a shrunken cpu-tiny config."""
    run_dir = tmp_path_factory.mktemp("fast-run")
    return runner.run(CPU_TINY, only=["01", "02", "03"], overrides={**FAST, "run_dir": str(run_dir)}, progress=False)


def _code_cells(run: Path, stage: str) -> list[nbformat.NotebookNode]:
    executed = nbformat.read(run / "notebooks" / f"{stage}.ipynb", as_version=4)
    return [cell for cell in executed.cells if cell.cell_type == "code"]


def _bar_outputs(cell: nbformat.NotebookNode) -> int:
    return sum(o.output_type == "stream" and bool(re.search(r"\d+%\||examples/s", o.text)) for o in cell.outputs)


@pytest.mark.slow
def test_executed_notebooks_hold_the_training_lines_and_no_trainer_table(fast_run):
    for stage, label in (("02_sft", "sft"), ("03_ddpo", "ddpo-gamma5")):
        outputs = [o for cell in _code_cells(fast_run, stage) for o in cell.outputs]
        text = "".join(o.text for o in outputs if o.output_type == "stream")
        assert f"[train] {label}: step 4/4 " in text and f"[train] {label}: done: 4 steps" in text
        assert not [o for o in outputs if "<progress" in o.get("data", {}).get("text/html", "")]


@pytest.mark.slow
def test_the_runners_logs_hold_the_training_lines_and_bars_stay_short(fast_run):
    log = (fast_run / "logs" / "03_ddpo.log").read_text()
    assert re.search(r"^\[train\] ddpo-gamma5: step 4/4 epoch [\d.]+ loss .* eta 00:00$", log, re.M)
    assert "[train] ddpo-gamma5: done: 4 steps in" in log
    for stage in ("01_data", "02_sft", "03_ddpo"):
        assert max(map(_bar_outputs, _code_cells(fast_run, stage))) <= 2, stage  # a bar's first and final states
