"""Machine-free text for what a run folder keeps: paths relative to the run folder, the project or `~`.

A run folder's JSON, params and executed notebooks can then be shared or moved without naming the machine's
folders. Paths inside the run folder become relative to it; the run folder itself is named as `run_dir` is read
(relative to the project root) when it lies in the project, else "."; other paths of the project become relative
to the project root, and the home folder `~`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rlhfv_nb.config import project_root


def _replacements(run_root: Path) -> list[tuple[str, str]]:
    """(absolute prefix, replacement) pairs, most specific first."""
    project, home = project_root(), Path.home()
    pairs = []
    for run in dict.fromkeys((run_root.resolve(), Path(os.path.abspath(run_root)))):  # also as given (symlinks)
        name = str(run.relative_to(project)) if run.is_relative_to(project) else "."
        pairs += [(f"{run}{os.sep}", ""), (str(run), name)]
    return [*pairs, (f"{project}{os.sep}", ""), (str(project), "."), (f"{home}{os.sep}", f"~{os.sep}"),
            (str(home), "~")]


def portable_text(text: str, run_root: Path) -> str:
    """`text` with every absolute path of the run folder, project and home folder made relative."""
    return _rewrite(text, _replacements(run_root))


def _rewrite(text: str, replacements: list[tuple[str, str]]) -> str:
    for prefix, replacement in replacements:
        if prefix.endswith(os.sep):
            text = text.replace(prefix, replacement)
        else:  # the folder itself, not a longer name that starts like it (/root vs /rootfs)
            text = re.sub(re.escape(prefix) + r"(?![\w.-])", lambda _, r=replacement: r, text)
    return text


def portable(value: Any, run_root: Path) -> Any:
    """A JSON-ready value with `portable_text` applied to every string in it (keys included)."""
    return _portable(value, _replacements(run_root))  # the folders are looked up once, not per string


def _portable(value: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(value, (str, Path)):
        return _rewrite(str(value), replacements)
    if isinstance(value, dict):
        return {_portable(k, replacements): _portable(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, replacements) for v in value]
    return value


def make_file_portable(path: Path, run_root: Path) -> None:
    """Rewrite a text file (an executed notebook, a log) in place with `portable_text`, atomically."""
    from rlhfv_nb.files import write_text

    text = path.read_text(encoding="utf-8")
    cleaned = portable_text(text, run_root)
    if cleaned != text:
        write_text(path, cleaned)
