"""Atomic file and folder writes: a crash or kill never leaves half a file or folder behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` through a unique temporary file in the same folder and an atomic rename.

    Safe from several threads or processes at once: each writer has its own temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def partial_folder(folder: Path, empty: bool = True) -> Path:
    """`<folder>.partial`, where a folder is written before `publish_folder` puts it in place; emptied of what a
    killed writer left unless `empty` is false (the processes of a run that are not the one to empty it)."""
    partial = folder.with_name(folder.name + ".partial")
    if empty:
        shutil.rmtree(partial, ignore_errors=True)
    return partial


def publish_folder(partial: Path, folder: Path) -> Path:
    """Replace `folder` by the complete `partial` folder, so that `folder` is never seen half-written."""
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def write_json(path: str | Path, value: Any) -> Path:
    """Write `value` as JSON atomically (`write_text`)."""
    return write_text(path, json.dumps(value, ensure_ascii=False, indent=1, default=str))


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def trim_torn_line(path: str | Path) -> None:
    """Cut an unterminated last line (a kill mid-write) off an append-only JSONL file.

    Readers skip such a line anyway; trimming it keeps the next append from being glued onto it (and lost).
    """
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("rb+") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_jsonl_by(path: str | Path, key: str) -> dict[str, dict[str, Any]]:
    """Records of an append-only JSONL file by `record[key]` (later wins).

    A torn last line, and any line that is not a JSON object with a string `key`, are ignored: what a cache
    holds there is computed again rather than trusted.
    """
    records: dict[str, dict[str, Any]] = {}
    path = Path(path)
    if not path.exists():
        return records
    with path.open() as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get(key), str):
                records[record[key]] = record
    return records


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised under `cache_root()/file-hashes` by path, size and change times.

    Any write to the file changes its ctime (which no user tool can set back), so a memo is never stale.
    """
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    memo = cache_root() / "file-hashes" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    write_text(memo, digest.hexdigest())
    return digest.hexdigest()


def cache_root() -> Path:
    """The machine-wide cache of downloads and memos: `$RLHFV_NB_CACHE`, else `~/.cache/rlhfv_nb`."""
    return Path(os.environ.get("RLHFV_NB_CACHE", Path.home() / ".cache" / "rlhfv_nb"))
