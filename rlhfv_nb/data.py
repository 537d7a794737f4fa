"""Preference and SFT data: load from the hub or local files, normalise to one schema, validate rows.

Normalised preference rows: `uid`, `image` (encoded bytes), `question`, `chosen`, `rejected`,
`source` (JSON of the origin ids). Normalised SFT rows: `uid`, `image`, `question`, `answer`.
Both RLHF-V-Dataset (a `text` JSON column) and RLAIF-V-Dataset (plain columns) are read, from a hub
id or a local parquet file/folder, through the same `datasets` loader.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

PREFERENCE_COLUMNS = ("uid", "image", "question", "chosen", "rejected", "source")
SFT_COLUMNS = ("uid", "image", "question", "answer")
ORIGIN_KEYS = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")


class DataError(ValueError):
    """A row cannot be used; the message names the file, row and field."""


@dataclass
class BadRows:
    """Rows left out of a dataset, by reason, with their ids (reported, never silently dropped)."""

    source: str
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, row_id: str) -> None:
        self.reasons.setdefault(reason, []).append(row_id)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.reasons.values())

    def summary(self, max_ids: int = 10) -> str:
        if not self.reasons:
            return f"{self.source}: all rows valid"
        lines = [f"{self.source}: {self.count} row(s) skipped"]
        for reason, ids in sorted(self.reasons.items()):
            shown = ", ".join(ids[:max_ids]) + (" ..." if len(ids) > max_ids else "")
            lines.append(f"  {reason}: {len(ids)} ({shown})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count, "reasons": self.reasons}


def load_raw(source: str, split: str = "train") -> datasets.Dataset:
    """A dataset from a hub id, a parquet file or a folder of parquet files, images left encoded."""
    path = Path(source).expanduser()
    if path.is_file():
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise DataError(f"{source}: folder holds no .parquet files")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        ds = datasets.load_dataset(source, split=split)
    if "image" in ds.column_names and isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def image_bytes(value: Any) -> bytes:
    """Encoded image bytes from a `datasets` image cell ({"bytes", "path"}), raw bytes or a PIL image."""
    if isinstance(value, Image.Image):
        return encode_image(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise DataError(f"field 'image' is missing (no image data in a {type(value).__name__})")


def encode_image(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(value: Any) -> Image.Image:
    """An RGB PIL image from any image cell (see `image_bytes`); raises `DataError` if it is not an image."""
    data = image_bytes(value)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types for broken data
        raise DataError(f"field 'image' is an undecodable image: {err}") from err
    return image.convert("RGB")


def _row_text(row: dict[str, Any]) -> dict[str, Any]:
    """question/chosen/rejected from RLHF-V's `text` JSON or from plain RLAIF-V columns."""
    if "text" in row and row["text"] is not None:
        try:
            text = json.loads(row["text"])
        except (TypeError, json.JSONDecodeError) as err:
            raise DataError(f"field 'text' is not JSON: {err}") from err
        if not isinstance(text, dict):
            raise DataError("field 'text' is not a JSON object")
    else:
        text = row
    missing = [key for key in ("question", "chosen", "rejected") if key not in text]
    if missing:
        raise DataError(f"field {missing[0]!r} is missing")
    return {key: text[key] for key in ("question", "chosen", "rejected")}


def _row_id(row: dict[str, Any], index: int) -> str:
    for key in ("uid", "idx", "id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _normalise(
    ds: datasets.Dataset, source: str, on_bad_row: str, parse: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[list[dict], BadRows]:
    """Rows `{"uid", "image", **parse(row)}` with a decodable image; rows that raise `DataError` are
    reported by reason and id (`on_bad_row="skip"`) or stop with the source, row and field (`"error"`)."""
    bad = BadRows(source)
    rows = []
    for index, row in enumerate(ds):
        row_id = _row_id(row, index)
        try:
            fields = parse(row)
            data = image_bytes(row.get("image"))
            decode_image(data)
        except (DataError, OSError) as err:
            if on_bad_row == "error":
                raise DataError(f"{source}: row {index} (id {row_id}): {err}") from err
            bad.add(_reason(err), row_id)
            continue
        rows.append({"uid": row_id, "image": data, **fields})
    return rows, bad


def _non_empty(fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"field {key!r} is empty")
    return fields


def _preference_fields(row: dict[str, Any]) -> dict[str, Any]:
    text = _non_empty(_row_text(row))
    if text["chosen"].strip() == text["rejected"].strip():
        raise DataError("field 'chosen' is identical to 'rejected'")
    origin = {key: row[key] for key in ORIGIN_KEYS if key in row and row[key] is not None}
    return {**text, "source": json.dumps(origin, default=str)}


def _sft_fields(row: dict[str, Any]) -> dict[str, Any]:
    if "answer" in row:
        return _non_empty({"question": row.get("question"), "answer": row["answer"]})
    pair = _row_text(row)
    return _non_empty({"question": pair["question"], "answer": pair["chosen"]})


def normalise_preferences(ds: datasets.Dataset, source: str, on_bad_row: str = "skip") -> tuple[list[dict], BadRows]:
    """Rows in the normalised preference schema plus the rows left out and why.

    A row is left out for a missing or undecodable image, a `text` that is not JSON or lacks a key,
    an empty question/chosen/rejected, or chosen identical to rejected. With `on_bad_row="error"` the
    first such row raises `DataError` naming source, row and field.
    """
    return _normalise(ds, source, on_bad_row, _preference_fields)


def _reason(err: Exception) -> str:
    """A short reason key: the message without row-specific detail (a parser's or PIL's text after ': ')."""
    return str(err).split(": ")[0]


def normalise_sft(ds: datasets.Dataset, source: str, on_bad_row: str = "skip") -> tuple[list[dict], BadRows]:
    """SFT rows (`question`, `answer`) from a dataset with those columns or a preference dataset's chosen."""
    return _normalise(ds, source, on_bad_row, _sft_fields)


def rlhfv_records(items: Iterable[dict[str, Any]], ds_name: str) -> list[dict[str, Any]]:
    """Rows in the exact RLHF-V-Dataset schema (`text` JSON column) from dicts with image/question/..."""
    records = []
    for index, item in enumerate(items):
        text = {key: item[key] for key in ("question", "chosen", "rejected")}
        records.append({
            "ds_name": ds_name,
            "image": {"bytes": image_bytes(item["image"]), "path": None},
            "text": json.dumps(text),
            "origin_dataset": item.get("origin_dataset", ds_name),
            "origin_split": item.get("origin_split", "train"),
            "idx": int(item.get("idx", index)),
            "image_path": item.get("image_path", f"{ds_name}/{index}.png"),
        })
    return records


def write_parquet(rows: list[dict[str, Any]], path: Path, image_column: bool = True) -> Path:
    """Write rows to a self-contained parquet (image bytes embedded), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    if image_column and "image" in ds.column_names:
        if not isinstance(rows[0]["image"], dict):
            ds = ds.map(lambda row: {"image": {"bytes": row["image"], "path": None}})
        ds = ds.cast_column("image", datasets.Image())
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_parquet(str(tmp))
    os.replace(tmp, path)
    return path


def read_parquet(path: Path) -> datasets.Dataset:
    """A parquet written by `write_parquet`, images left as encoded bytes."""
    return load_raw(str(path))
