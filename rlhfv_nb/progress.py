"""Progress bars that stay live for a person watching and stay short in logs and executed notebooks.

`RLHFV_NB_QUIET=1` says that output goes to a log rather than to a person: the runner's papermill kernels and the
processes `rlhfv_nb.launch` starts. There a bar is plain text, redrawn at most every `QUIET_INTERVAL` seconds, so a
bar leaves its first and final states (and one line a minute on long work) instead of a line per update or a widget
whose saved text shows 0%. Elsewhere it is `tqdm.auto`'s: a widget in Jupyter, a redrawn line in a terminal.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import std
from tqdm.auto import tqdm

QUIET_INTERVAL = 60.0  # seconds between two redraws of a bar in a log
TRAINING_LINE = "[train]"  # starts every training progress line (`train.ProgressPrinter`); the runner shows them


def quiet() -> bool:
    """Whether output goes to a log (`RLHFV_NB_QUIET=1`) rather than to a person."""
    return os.environ.get("RLHFV_NB_QUIET") == "1"


def progress_bar(**kwargs: Any) -> std.tqdm:
    """A tqdm bar (tqdm's keyword arguments): plain text and redrawn once a minute at most where `quiet()`."""
    if quiet():
        return std.tqdm(mininterval=QUIET_INTERVAL, **kwargs)
    return tqdm(**kwargs)
