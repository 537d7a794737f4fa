"""Shared benchmark plumbing: child processes with peak-memory sampling, medians, ratios, Markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak_mib() -> float | None:
    """`torch.cuda.max_memory_allocated` in MiB, or None without CUDA."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
            # glibc allocator settings the runs inherit (they change peak RSS; see bench/README)
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    return info


class _Sampler(threading.Thread):
    """Polls a process's RSS (with its children) until stopped; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self._stop_event.is_set():
                procs = [proc, *proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs) / 2**20)
                time.sleep(self.interval)
        except psutil.Error:
            pass  # the process ended between two polls

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


def run_child(module: str, args: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `python -m module *args` from the repository root; returns wall time and sampled peak RSS.

    The child must exit 0; its stderr tail is raised otherwise.
    """
    env = {**os.environ, "RLHFV_NB_QUIET": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _Sampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        peak = sampler.stop()
    if proc.returncode:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{err[-4000:]}")
    return {"wall_s": time.perf_counter() - start, "sampled_peak_rss_mib": peak, "stdout": out}


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded to `digits` significant places, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def recorded_args(args: Any) -> dict[str, str]:
    """Command-line arguments as recorded in a results file; paths inside the repository are made relative."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
            value = value.resolve().relative_to(ROOT)
        out[key] = str(value)
    return out


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """`--set key=value` (repeatable): config overrides, as `rlhfv-nb run --set` takes them."""
    parser.add_argument("--set", action="append", default=[], help="override, e.g. ddpo.lr=1e-4")


def seeds_main(argv: list[str] | None, doc: str, params: Path, results: str,
               run_seeds: Callable[[argparse.Namespace], Any], write_docs: Callable[[], None],
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> Any:
    """The command line of a per-seed bench: run `--seeds` with `--threads` threads (`run_seeds(args)`), or only
    rewrite the docs' tables from the results files (`--write-docs`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", type=Path, default=params)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    if add_arguments:
        add_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help=f"default: bench/results/{results}-<N>thread(s).json")
    parser.add_argument("--write-docs", action="store_true", help="only rewrite the docs' tables from the results")
    args = parser.parse_args(argv)
    if args.write_docs:
        write_docs()
        return None
    return run_seeds(args)
