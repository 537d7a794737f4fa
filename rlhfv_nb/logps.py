"""Per-token reference log-probs, computed once with the frozen SFT model and cached next to the data.

The cache is an append-only JSONL under a key made of the model's and the data's fingerprints, so a
different model or dataset never reuses stale values, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.ddpo import token_logps
from rlhfv_nb.features import PairCollator
from rlhfv_nb.files import read_jsonl_by, trim_torn_line

CACHE_FORMAT = 1


def model_fingerprint(path: str | Path) -> str:
    """Hash of a model folder's config and weight files (name, size, first and last MiB of each).

    A hub id that is not a local folder is fingerprinted by its name.
    """
    folder = Path(path)
    digest = hashlib.sha256(f"format{CACHE_FORMAT}".encode())
    if not folder.is_dir():
        digest.update(str(path).encode())
        return digest.hexdigest()[:16]
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.suffix not in (".json", ".safetensors", ".bin", ".model"):
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def data_fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """Hash of the token ids and image bytes the log-probs depend on."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row["uid"].encode())
        digest.update(hashlib.sha256(row["image"]).digest())
        digest.update(row["question"].encode())
        digest.update(json.dumps([row["chosen_ids"], row["rejected_ids"]]).encode())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: Path, model_path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Where the log-probs of `rows` under the model at `model_path` live."""
    return Path(cache_dir) / f"ref-{model_fingerprint(model_path)}-{data_fingerprint(rows)}.jsonl"


def read_cache(path: Path) -> dict[str, dict[str, list[float]]]:
    """Entries by uid; a truncated last line (a kill mid-write) is ignored."""
    return read_jsonl_by(path, "uid")


@torch.no_grad()
def reference_logps(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    rows: list[dict[str, Any]],
    path: Path,
    batch_size: int,
    progress: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Per-token log-probs of chosen and rejected answers for every row, computing only what is missing.

    Rows need `uid`, `image`, `question`, `chosen_ids`, `rejected_ids`.
    Returns `{uid: {"chosen": [...], "rejected": [...]}}`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache(path)
    trim_torn_line(path)
    todo = [row for row in rows if row["uid"] not in done]
    collate = PairCollator(processor)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with path.open("a") as handle, tqdm(total=len(rows), initial=len(rows) - len(todo), desc="reference log-probs",
                                         disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = collate(chunk)
            labels = batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch, use_cache=False).logits
            logps, mask = token_logps(logits, labels.to(device))
            per_seq = [lp[m].tolist() for lp, m in zip(logps.cpu(), mask.cpu())]
            for index, row in enumerate(chunk):
                entry = {"uid": row["uid"], "chosen": per_seq[index], "rejected": per_seq[index + len(chunk)]}
                handle.write(json.dumps(entry) + "\n")
                done[row["uid"]] = entry
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    model.train(was_training)
    return {row["uid"]: done[row["uid"]] for row in rows}
