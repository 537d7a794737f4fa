"""Per-token reference log-probs, computed once with the frozen SFT model and cached next to the data.

The cache is an append-only JSONL under a key made of the model's and the data's fingerprints, so a
different model or dataset never reuses stale values, and a killed run resumes where it stopped. Every line
carries a checksum of its values; a line that fails it, or does not fit its pair, is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.config import FamilyConfig
from rlhfv_nb.features import PairCollator
from rlhfv_nb.files import file_sha256, read_jsonl_by, trim_torn_line
from rlhfv_nb.pair_logps import answer_logps, shares_prefix
from rlhfv_nb.progress import progress_bar

CACHE_FORMAT = 2
NOT_MODEL_FILES = (".md", ".txt.lock", ".lock")  # documentation and lock files do not change what a model computes


def model_fingerprint(path: str | Path) -> str:
    """Hash of every byte of a model folder: weights, configs, tokenizer, chat template, processor files.

    Each file's content hash is memoised by its path, size and change time (`files.file_sha256`), so only files
    written since the last call are read again. A hub id is fingerprinted by its cached snapshot when the hub
    cache has it, else by its name.
    """
    folder = Path(path)
    if not folder.is_dir():
        folder = _hub_snapshot(str(path)) or folder
    digest = hashlib.sha256(f"format{CACHE_FORMAT}".encode())
    if not folder.is_dir():
        digest.update(str(path).encode())
        return digest.hexdigest()[:16]
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if (not file.is_file() or file.name.endswith(NOT_MODEL_FILES)
                or any(part.startswith(".") for part in relative.parts)):
            continue
        digest.update(f"{relative.as_posix()}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()[:16]


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model already in the hub cache (no download), else None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not a repo id, or not cached: the name is all we know
        return None


def data_fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """Hash of the token ids and image bytes the log-probs depend on."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row["uid"].encode())
        digest.update(hashlib.sha256(row["image"]).digest())
        digest.update(row["question"].encode())
        digest.update(json.dumps([row["chosen_ids"], row["rejected_ids"]]).encode())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: Path, model_path: str | Path, rows: list[dict[str, Any]], image_aspect_ratio: str = "native"
               ) -> Path:
    """Where the log-probs of `rows` under the model at `model_path` live, images preprocessed with
    `image_aspect_ratio` ("pad" or "native": the pixels the model sees differ)."""
    model = model_fingerprint(model_path)
    if image_aspect_ratio != "native":
        model = hashlib.sha256(f"{model}|{image_aspect_ratio}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"ref-{model}-{data_fingerprint(rows)}.jsonl"


def entry_checksum(uid: str, chosen: list[float], rejected: list[float]) -> str:
    """Checksum of one cache line's values (written with it, verified when read)."""
    return hashlib.sha256(json.dumps([uid, chosen, rejected]).encode()).hexdigest()[:16]


def _valid(entry: dict[str, Any]) -> bool:
    values = (entry.get("chosen"), entry.get("rejected"))
    return (isinstance(entry.get("uid"), str) and all(isinstance(v, list) for v in values)
            and entry.get("check") == entry_checksum(entry["uid"], *values))


def read_cache(path: Path, rows: list[dict[str, Any]] | None = None) -> dict[str, dict[str, list[float]]]:
    """Entries by uid whose checksum holds (and, given `rows`, whose lengths fit each pair's answers).

    A truncated last line (a kill mid-write), a corrupt or edited line are left out, to be computed again.
    """
    entries = {uid: e for uid, e in read_jsonl_by(path, "uid").items() if _valid(e)}
    lengths = {row["uid"]: (len(row["chosen_ids"]), len(row["rejected_ids"])) for row in rows or ()}
    return {uid: e for uid, e in entries.items()
            if uid not in lengths or lengths[uid] == (len(e["chosen"]), len(e["rejected"]))}


@torch.no_grad()
def reference_logps(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    rows: list[dict[str, Any]],
    path: Path,
    batch_size: int,
    progress: bool = True,
    share_prefix: bool = True,
    family: FamilyConfig | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per-token log-probs of chosen and rejected answers for every row, computing only what is missing.

    `share_prefix`: encode each pair's image and prompt once where the model allows it (the same log-probs);
    `family`: the params' `model.family` overrides.
    Rows need `uid`, `image`, `question`, `chosen_ids`, `rejected_ids`.
    Returns `{uid: {"chosen": [...], "rejected": [...]}}`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache(path, rows)
    trim_torn_line(path)
    todo = [row for row in rows if row["uid"] not in done]
    collate = PairCollator(processor, shares_prefix(model, family, share_prefix))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with path.open("a") as handle, progress_bar(total=len(rows), initial=len(rows) - len(todo),
                                                 desc="reference log-probs", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            logps, mask = answer_logps(model, batch)
            per_seq = [lp[m].tolist() for lp, m in zip(logps.cpu(), mask.cpu())]
            for index, row in enumerate(chunk):
                chosen, rejected = per_seq[index], per_seq[index + len(chunk)]
                entry = {"uid": row["uid"], "chosen": chosen, "rejected": rejected,
                         "check": entry_checksum(row["uid"], chosen, rejected)}
                handle.write(json.dumps(entry) + "\n")
                done[row["uid"]] = entry
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    model.train(was_training)
    return {row["uid"]: done[row["uid"]] for row in rows}
