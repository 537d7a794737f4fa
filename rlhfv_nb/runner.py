"""Run the notebooks in order with papermill into `<run>/notebooks/`, skipping finished stages unless forced."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
import yaml
from papermill.exceptions import PapermillExecutionError
from tqdm.contrib.logging import logging_redirect_tqdm

from rlhfv_nb.config import Config, load_config, project_root
from rlhfv_nb.files import write_text
from rlhfv_nb.launch import parse_overrides
from rlhfv_nb.layout import RunLayout
from rlhfv_nb.lock import RunFolderBusy, exclusive
from rlhfv_nb.manifests import stage_status
from rlhfv_nb.portable import make_file_portable, portable
from rlhfv_nb.progress import TRAINING_LINE


@dataclass(frozen=True)
class Stage:
    """One notebook of the pipeline; `key` is its number ("01") and `name` its file stem ("01_data")."""

    key: str
    name: str
    path: Path


# Notebooks a config turns on: they run only when it asks (the default pipeline's runs stay as they were).
OPTIONAL: dict[str, Callable[[Config], bool]] = {"06_rlaifv": lambda cfg: cfg.rlaifv.rounds > 0}


def stages(notebook_dir: Path | None = None, cfg: Config | None = None) -> list[Stage]:
    """The numbered notebooks, in order: the default pipeline's, and the `OPTIONAL` ones `cfg` turns on."""
    folder = notebook_dir or project_root() / "notebooks"
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    return [Stage(p.stem[:2], p.stem, p) for p in found
            if p.stem not in OPTIONAL or (cfg is not None and OPTIONAL[p.stem](cfg))]


def select(all_stages: list[Stage], only: Sequence[str] | None) -> list[Stage]:
    """Stages named in `only` by number ("01") or name ("01_data"); all when `only` is empty."""
    if not only:
        return all_stages
    wanted = set(only)
    chosen = [s for s in all_stages if s.key in wanted or s.name in wanted]
    unknown = wanted - {s.key for s in chosen} - {s.name for s in chosen}
    if unknown:
        names = ", ".join(s.name for s in all_stages)
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are: {names}")
    return chosen


KERNEL = "rlhfv-nb"  # registered in the virtualenv by `make`; the notebooks' own python3 kernel otherwise


def default_kernel() -> str | None:
    """The project's kernel when installed (so notebooks run in this virtualenv), else None."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return None
    return KERNEL


def run(
    params: str | Path,
    only: Sequence[str] | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    kernel: str | None = None,
    progress: bool = True,
) -> Path:
    """Execute the selected notebooks with the params file's values; returns the run folder.

    A stage whose manifest matches the config and its inputs is skipped (unless `force`); one whose config
    values or inputs changed is re-run, naming what changed. A failing notebook raises `StageFailed` naming
    the stage, cell and error; the stages before it keep their artifacts and their executed notebooks.
    `<run>/params.yaml` holds the values and, per stage, whether its outputs were made with them.
    One runner at a time per run folder: a second one raises `RunFolderBusy` naming the holder.
    """
    cfg = load_config(params, **(overrides or {}))
    all_stages = stages(cfg=cfg)
    chosen = select(all_stages, only)
    with exclusive(cfg.layout.lock, f"run folder {cfg.run_dir}"):
        _run_stages(cfg, params, all_stages, chosen, force, kernel, progress)
    return cfg.layout.root


def _run_stages(cfg: Config, params: str | Path, all_stages: list[Stage], chosen: list[Stage], force: bool,
                kernel: str | None, progress: bool) -> None:
    """The body of `run`, under the run folder's lock."""
    values = cfg.to_dict()
    layout = cfg.layout
    try:
        for stage in chosen:
            status = stage_status(cfg, stage.name)
            if status.done and not force:
                print(f"[skip] {stage.name}: finished earlier with these values (use --force to re-run)", flush=True)
                continue
            if status.state == "changed":
                print(f"[rerun] {stage.name}: {status.describe()}", flush=True)
            _execute(stage, layout, values, kernel, progress)
    finally:
        report = {s.name: stage_status(cfg, s.name).describe() for s in all_stages}
        stale = [f"{name} ({state})" for name, state in report.items() if state not in ("done", "missing")]
        if stale:
            print(f"[stale] made with other values or inputs than these: {', '.join(stale)}", flush=True)
        params_yaml = portable({"source": str(params), "stages": report, **values}, layout.root)
        layout.params.parent.mkdir(parents=True, exist_ok=True)
        write_text(layout.params, yaml.safe_dump(params_yaml, sort_keys=False))


# The kernels' environment: their output goes to a log, not to a person (`rlhfv_nb.progress.quiet`): our bars are
# plain text redrawn once a minute at most; transformers', the hub's and datasets' bars are off.
KERNEL_ENV = {"RLHFV_NB_QUIET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


class _ProgressLines(logging.Formatter):
    """The message alone, without the newline the notebook's output ends with (the handler adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` set while the block runs (the kernels papermill starts inherit it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _progress_handler() -> logging.Handler:
    """A terminal handler for the training progress lines of a notebook's output."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(lambda record: record.getMessage().startswith(TRAINING_LINE))
    handler.setFormatter(_ProgressLines())
    return handler


def _execute(stage: Stage, layout: RunLayout, values: dict[str, Any], kernel: str | None, progress: bool) -> None:
    """Run one notebook with papermill into `<run>/notebooks/`, its output logged into `<run>/logs/`."""
    output = layout.notebook(stage.name)
    print(f"[run ] {stage.name} -> {output}", flush=True)
    started = time.time()
    for folder in (output.parent, layout.log(stage.name).parent):
        folder.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(layout.log(stage.name), mode="w"), _progress_handler()]
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.INFO)  # papermill logs the notebook's stdout at INFO, its stderr at WARNING
    for handler in handlers:
        logger.addHandler(handler)
    try:
        # logging_redirect_tqdm: a progress line goes above papermill's cell bar, not into it
        with _environment(KERNEL_ENV), logging_redirect_tqdm([logger]):
            papermill.execute_notebook(
                str(stage.path), str(output), parameters=values, cwd=str(project_root()),
                kernel_name=kernel or default_kernel(), progress_bar=progress, log_output=True,
            )
    except PapermillExecutionError as err:
        raise StageFailed(stage, output, err) from None
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        for written in (output, layout.log(stage.name)):
            if written.exists():
                make_file_portable(written, layout.root)
    print(f"[done] {stage.name} in {time.time() - started:.0f}s", flush=True)


class StageFailed(RuntimeError):
    """A notebook raised; carries the stage, the executed notebook and the failing cell."""

    def __init__(self, stage: Stage, notebook: Path, err: PapermillExecutionError):
        self.stage, self.notebook, self.error = stage, notebook, err
        source = (err.source or "").strip().splitlines()
        snippet = "\n    ".join(source[:8])
        super().__init__(
            f"stage {stage.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
            f"  cell source:\n    {snippet}\n  executed notebook (with the traceback): {notebook}"
        )


def main_run(args: Any) -> int:
    """CLI body of `rlhfv-nb run`."""
    try:
        run_path = run(args.params, only=args.only, force=args.force, overrides=parse_overrides(args.set),
                       kernel=args.kernel)
    except StageFailed as err:
        print(f"\n[fail] {err}", file=sys.stderr)
        return 1
    except RunFolderBusy as err:
        print(f"rlhfv-nb: {err}", file=sys.stderr)
        return 3
    print(f"run folder: {run_path}")
    return 0
