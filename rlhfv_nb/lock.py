"""One runner per run folder: an exclusive lock, released by the system when its holder exits or dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) while the block runs; `RunFolderBusy` names the holder.

    The lock is an advisory `flock`: a killed holder leaves no stale lock behind, and the file's text (who holds
    it, since when) is only a message for the one refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderBusy(f"{what} is in use: {path} is locked by {holder}; wait for it to finish, "
                                "or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(Path(a).name if os.sep in a else a for a in sys.argv),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
