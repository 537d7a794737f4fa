"""One runner per run folder: a second `rlhfv-nb run` on a busy folder exits non-zero naming the holder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rlhfv_nb.cli import main
from rlhfv_nb.config import load_config
from rlhfv_nb.layout import RunLayout
from rlhfv_nb.lock import exclusive
from tests.tiny_run import CPU_TINY

HOLD = """
import sys, time
from pathlib import Path
from rlhfv_nb.lock import exclusive
with exclusive(Path(sys.argv[1]), "run folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(lock: Path) -> subprocess.Popen:
    """Another process holding the lock, through the same function a runner takes it with."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_runner_on_a_busy_run_folder_exits_non_zero_naming_the_lock(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extends": str(CPU_TINY), "run_dir": str(tmp_path / "run")}))
    lock = RunLayout(load_config(params).run_path).lock
    holder = _holder(lock)
    try:
        started = time.monotonic()
        assert main(["run", str(params), "--only", "01"]) == 3
        assert time.monotonic() - started < 10  # refused at once, not after waiting
        err = capsys.readouterr().err
        assert str(lock) in err and f'"pid": {holder.pid}' in err
        assert not (tmp_path / "run" / "data").exists()  # nothing of the run was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a killed holder leaves no stale lock: the folder can be taken again at once
    with exclusive(lock, "run folder"):
        assert json.loads(lock.read_text())["pid"] > 0


def test_the_lock_is_released_when_the_block_ends_or_raises(tmp_path):
    lock = tmp_path / "runner.lock"
    try:
        with exclusive(lock, "run folder"):
            raise KeyError("stage failed")
    except KeyError:
        pass
    holder = _holder(lock)  # another process can take it now
    holder.kill()
    holder.wait()
