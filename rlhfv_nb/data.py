"""Preference and SFT data: load from the hub or local files, normalise to one schema, validate rows.

Normalised preference rows: `uid`, `image` (encoded bytes), `question`, `chosen`, `rejected`,
`source` (JSON of the origin ids). Normalised SFT rows: `uid`, `image`, `question`, `answer`.
Both RLHF-V-Dataset (a `text` JSON column) and RLAIF-V-Dataset (plain columns) are read, from a hub
id or a local parquet file/folder, through the same `datasets` loader; other formats (TRL, LLaMA-Factory,
JSON/JSONL with image files) are converted to the flat schema by `rlhfv_nb.adapters` and checked the same way.

Whole-file problems (a missing path, an empty or non-parquet file, columns of no known schema, no valid
row) raise `DataError` naming the file; bad rows are reported by reason and id (`BadRows`) or raise naming
the row and field. A pair's `uid` is its `uid`/`idx`/`id` value, unless that id is shared by different
pairs (shards each numbering from 0): then every pair under it gets `<id>#<content hash>`, so the reference
cache never hands one pair another's log-probs, and the uid stays the same on every run over the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from PIL import Image

from rlhfv_nb.config import DataConfig, looks_like_local_path, project_root

log = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("uid", "image", "question", "chosen", "rejected", "source")
SFT_COLUMNS = ("uid", "image", "question", "answer")
ORIGIN_KEYS = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")
PAIR_KEYS = ("question", "chosen", "rejected")

# Accepted column sets: name -> (required columns, description).
PREFERENCE_SCHEMAS = {
    "RLHF-V-Dataset": (("image", "text"), "`image` + `text`, a JSON object with question/chosen/rejected"),
    "flat": (("image", *PAIR_KEYS), "`image`, `question`, `chosen`, `rejected` columns, as RLAIF-V-Dataset"),
}
PROMPT_SCHEMAS = {
    "prompt": (("image", "question"), "`image`, `question` columns, as a prompt file or RLAIF-V-Dataset"),
    "RLHF-V-Dataset": PREFERENCE_SCHEMAS["RLHF-V-Dataset"],
}
SFT_SCHEMAS = {
    "SFT": (("image", "question", "answer"), "`image`, `question`, `answer` columns"),
    **PREFERENCE_SCHEMAS,  # a preference dataset's chosen answers
}
DEFAULT_MAX_IMAGE_PIXELS = DataConfig.max_image_pixels
PARQUET_MAGIC = b"PAR1"
ROW_ERROR = "row_error"  # set by `rlhfv_nb.adapters` on a row it could not convert: the bad row's reason


class DataError(ValueError):
    """Data that cannot be used; the message names the file (and, for a bad row, the row and field)."""


@dataclass
class BadRows:
    """Rows left out of a dataset, by reason, with their ids (reported, never silently dropped), and the ids
    that different rows shared (their uids were made unique, `<id>#<content hash>`)."""

    source: str
    reasons: dict[str, list[str]] = field(default_factory=dict)
    reused_ids: dict[str, int] = field(default_factory=dict)  # id -> number of different pairs under it

    def add(self, reason: str, row_id: str) -> None:
        self.reasons.setdefault(reason, []).append(row_id)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.reasons.values())

    def summary(self, max_ids: int = 10) -> str:
        lines = [f"{self.source}: {self.count} row(s) skipped" if self.reasons else f"{self.source}: all rows valid"]
        lines += self._reason_lines(max_ids)
        if self.reused_ids:
            shown = ", ".join(list(self.reused_ids)[:max_ids]) + (" ..." if len(self.reused_ids) > max_ids else "")
            lines.append(f"  {len(self.reused_ids)} id(s) shared by different pairs, uids made unique as "
                         f"<id>#<content hash>: {shown}")
        return "\n".join(lines)

    def _reason_lines(self, max_ids: int) -> list[str]:
        lines = []
        for reason, ids in sorted(self.reasons.items()):
            shown = ", ".join(ids[:max_ids]) + (" ..." if len(ids) > max_ids else "")
            lines.append(f"  {reason}: {len(ids)} ({shown})")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count, "reasons": self.reasons, "reused_ids": self.reused_ids}


# ---------------------------------------------------------------- loading
def _local_candidates(source: str) -> list[Path]:
    """Where a local `source` may be: as given (relative to cwd), then relative to the project root, where
    config validation looks (notebooks run with cwd `notebooks/`)."""
    path = Path(source).expanduser()
    candidates = [path]
    if not path.is_absolute():
        rooted = project_root() / path
        if rooted.resolve() != path.resolve():
            candidates.append(rooted)
    return candidates


def _existing(source: str) -> Path | None:
    """The first of `_local_candidates(source)` that exists."""
    return next((path for path in _local_candidates(source) if path.exists()), None)


def load_raw(source: str, split: str = "train") -> datasets.Dataset:
    """A dataset from a hub id, a parquet file or folder, or a format of `rlhfv_nb.adapters` (TRL, LLaMA-Factory
    `dataset_info.json[#name]`, JSON/JSONL with image files), images left encoded.

    Data in a schema of this module is returned as it is; other formats are converted to the flat schema, a row
    that cannot be converted keeping its reason in `ROW_ERROR` (a bad row for the normalisers). A local path
    that does not exist, an empty, unreadable or invalid file, a folder whose files have different columns, and
    a dataset without rows raise `DataError` naming the file and the problem; a hub id that is not a local file
    or folder is loaded from the hub.
    """
    from rlhfv_nb import adapters  # lazily: adapters imports this module

    if not str(source).strip():
        raise DataError("data source is an empty string: give a hub id or a local parquet file or folder")
    source = str(source)
    local, name = _existing(source), None
    if local is None:  # perhaps `path#name`
        path, name = adapters.split_dataset_name(source)
        local = _existing(path) if name else None
    if local is None:
        if looks_like_local_path(source):
            raise DataError(_missing_path_message(path))
        return adapters.flatten(_load_hub(source, split), base=None)
    return adapters.load_local(local, name, source)


def load_parquet(local: Path, source: str) -> datasets.Dataset:
    """A parquet file, or all parquet files under a folder, images left encoded; `DataError` naming the file for
    an empty, non-parquet, truncated or unreadable file, files with different columns, or no rows."""
    if local.is_dir():
        files = sorted(path for path in local.rglob("*.parquet") if path.is_file())
        if not files:
            raise DataError(f"{source}: folder holds no .parquet files")
    elif local.is_file():
        files = [local]
    else:
        raise DataError(f"{source}: not a regular file or folder")
    shapes = {path: _parquet_shape(path) for path in files}
    first, (first_columns, _) = next(iter(shapes.items()))
    for path, (columns, _) in shapes.items():
        if set(columns) != set(first_columns):
            raise DataError(f"{source}: files have different columns, so they are not shards of one dataset: "
                            f"{first} has {first_columns}, {path} has {columns}")
    if sum(rows for _, rows in shapes.values()) == 0:
        raise DataError(f"{source}: holds no rows ({len(files)} parquet file(s) with columns {first_columns})")
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(path) for path in files], split="train")
    except Exception as err:  # datasets/arrow raise many types
        raise DataError(f"{source}: could not be loaded as parquet ({type(err).__name__}: {err})") from err
    return _images_encoded(ds)


def _load_hub(source: str, split: str) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:  # network, missing repo or split: many types
        raise DataError(f"{source}: not a local file or folder (cwd {Path.cwd()}), and loading it as a hub dataset "
                        f"(split {split!r}) failed: {type(err).__name__}: {err}") from err
    if len(ds) == 0:
        raise DataError(f"{source}: hub dataset split {split!r} holds no rows")
    return _images_encoded(ds)


def _images_encoded(ds: datasets.Dataset) -> datasets.Dataset:
    if "image" in ds.column_names and isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def _missing_path_message(source: str) -> str:
    tried = " or ".join(str(path) for path in _local_candidates(source))
    message = f"{source}: no such file or folder (looked for {tried}); a value that looks like a path is never " \
              "tried as a hub id"
    parent = next((path.parent for path in _local_candidates(source) if path.parent.is_dir()), None)
    if parent is not None:
        import difflib

        name, names = Path(source).name, sorted(child.name for child in parent.iterdir())
        close = [n for n in names if n.startswith(name)] + difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        close = list(dict.fromkeys(close))[:3]
        if close:
            message += f"; {parent} holds {', '.join(close)}"
    return message


def _parquet_shape(path: Path) -> tuple[list[str], int]:
    """Columns and row count of a parquet file, from its footer; `DataError` naming the file if it is empty, not
    parquet, truncated or unreadable, or has no columns."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(64)
            tail = b""
            if size >= 2 * len(PARQUET_MAGIC):
                handle.seek(-len(PARQUET_MAGIC), os.SEEK_END)
                tail = handle.read()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes), not a parquet file")
    if not head.startswith(PARQUET_MAGIC):
        raise DataError(f"{path}: not a parquet file ({_describe_start(head)})")
    if tail != PARQUET_MAGIC:
        raise DataError(f"{path}: truncated parquet file ({size} bytes, no footer): an interrupted write or download?")
    try:
        with pq.ParquetFile(path) as parquet:
            columns, rows = parquet.schema_arrow.names, parquet.metadata.num_rows
    except Exception as err:  # arrow raises several types for a broken footer
        raise DataError(f"{path}: unreadable parquet file ({type(err).__name__}: {err})") from err
    if not columns:
        raise DataError(f"{path}: parquet file has no columns (written from an empty list of rows?)")
    return columns, rows


def _describe_start(head: bytes) -> str:
    """What a file that is not parquet seems to be, from its first bytes."""
    text = head.lstrip()
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the data: fetch the file with `git lfs pull`"
    if text[:1] in (b"{", b"["):
        return "it looks like JSON; JSON rows are read from files named .json or .jsonl"
    if text[:1] == b"<":
        return "it looks like HTML/XML, perhaps an error page saved by a failed download"
    kinds = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "gzip data", b"\x89PNG": "a PNG image",
             b"\xff\xd8\xff": "a JPEG image", b"ARROW1": "an Arrow IPC file"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f"it is {kind}"
    return f"it starts with {head[:16]!r}, not the parquet magic bytes {PARQUET_MAGIC!r}"


# ---------------------------------------------------------------- images
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


def _open_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """The decoded image; its size is checked against `max_pixels` from the header (PIL's lazy open) before any
    pixel is decompressed. Raises `DataError` for an undecodable or too large image."""
    too_large = (f"field 'image' is larger than data.max_image_pixels ({max_pixels:,} pixels)"
                 if max_pixels is not None else "field 'image' is larger than PIL's decompression-bomb limit")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # the cap below replaces PIL's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise DataError(f"{too_large}: {image.width}x{image.height} = {image.width * image.height:,} pixels")
        image.load()
    except Image.DecompressionBombError as err:  # over twice PIL's limit: refused in `open`, from the header
        raise DataError(f"{too_large}: {err}") from err
    except DataError:
        raise
    except Exception as err:  # PIL raises many types for broken data
        raise DataError(f"field 'image' is an undecodable image: {err}") from err
    return image


def decode_image(value: Any, max_pixels: int | None = None) -> Image.Image:
    """An RGB PIL image from any image cell (see `image_bytes`); raises `DataError` if it is not an image or has
    more than `max_pixels` pixels (checked before decoding)."""
    return _open_image(image_bytes(value), max_pixels).convert("RGB")


# ---------------------------------------------------------------- rows
def check_columns(columns: Iterable[str], source: str, schemas: dict[str, tuple[tuple[str, ...], str]],
                  kind: str = "preference") -> None:
    """Raise `DataError` naming the file, the columns found, and what each accepted schema lacks, unless the
    columns hold one of `schemas`."""
    columns = list(columns)
    lacking = {name: [c for c in required if c not in columns] for name, (required, _) in schemas.items()}
    if any(not missing for missing in lacking.values()):
        return
    expected = "; ".join(f"the {name} schema ({schemas[name][1]}) lacks {', '.join(map(repr, missing))}"
                         for name, missing in lacking.items())
    raise DataError(f"{source}: columns match no {kind} dataset schema: found columns {columns}; {expected}")


def _row_text(row: dict[str, Any]) -> dict[str, Any]:
    """question/chosen/rejected from RLHF-V's `text` JSON or from plain RLAIF-V columns."""
    if "text" in row and (row["text"] is not None or not all(key in row for key in PAIR_KEYS)):
        text = row["text"]
        if text is None:
            raise DataError("field 'text' is missing (null)")
        if not isinstance(text, dict):
            try:
                text = json.loads(text)
            except (TypeError, json.JSONDecodeError) as err:
                raise DataError(f"field 'text' is not JSON: {err}") from err
        if not isinstance(text, dict):
            raise DataError("field 'text' is not a JSON object")
    else:
        text = row
    missing = [key for key in PAIR_KEYS if key not in text]
    if missing:
        raise DataError(f"field {missing[0]!r} is missing")
    return {key: text[key] for key in PAIR_KEYS}


def _row_id(row: dict[str, Any], index: int) -> str:
    for key in ("uid", "idx", "id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _normalise(
    ds: datasets.Dataset,
    source: str,
    on_bad_row: str,
    parse: Callable[[dict[str, Any]], dict[str, Any]],
    schemas: dict[str, tuple[tuple[str, ...], str]],
    kind: str,
    content_keys: tuple[str, ...],
    max_image_pixels: int | None,
) -> tuple[list[dict], BadRows]:
    """Rows `{"uid", "image", **parse(row)}` with a decodable image of at most `max_image_pixels` pixels; rows
    that raise `DataError` are reported by reason and id (`on_bad_row="skip"`) or stop with the source, row and
    field (`"error"`). Columns of no schema, no rows or no valid row raise `DataError` naming the source."""
    check_columns(ds.column_names, source, schemas, kind)
    if len(ds) == 0:
        raise DataError(f"{source}: holds no rows")
    bad = BadRows(source)
    rows = []
    for index, row in enumerate(ds):
        checked = _checked_row(row, index, source, parse, max_image_pixels, on_bad_row, bad)
        if checked is not None:
            rows.append(checked)
    if not rows:
        counts = "\n".join(bad._reason_lines(max_ids=5))
        raise DataError(f"{source}: no valid rows: all {len(ds)} rows are bad, by reason (count and ids):\n{counts}")
    bad.reused_ids = make_uids_unique(rows, source, content_keys)
    return rows, bad


def _checked_row(row: dict[str, Any], index: int, source: str, parse: Callable[[dict[str, Any]], dict[str, Any]],
                 max_image_pixels: int | None, on_bad_row: str, bad: BadRows) -> dict[str, Any] | None:
    """`{"uid", "image", **parse(row)}` if the row is good (its image decodes, within `max_image_pixels`); a bad
    row is counted in `bad` (None) or, with `on_bad_row="error"`, raises naming the source, row and field."""
    row_id = _row_id(row, index)
    try:
        if row.get(ROW_ERROR):
            raise DataError(row[ROW_ERROR])
        fields = parse(row)
        data = image_bytes(row.get("image"))
        decode_image(data, max_image_pixels)  # as training will decode it
    except (DataError, OSError) as err:
        if on_bad_row == "error":
            raise DataError(f"{source}: row {index} (id {row_id}): {err}") from err
        bad.add(_reason(err), row_id)
        return None
    return {"uid": row_id, "image": data, **fields}


def content_hash(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    """12 hex digits of SHA-256 over the row's `keys` values (bytes or text), each length-prefixed."""
    digest = hashlib.sha256()
    for key in keys:
        value = row[key]
        data = value if isinstance(value, bytes) else str(value).encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:12]


def make_uids_unique(rows: list[dict[str, Any]], source: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Give every row whose uid is shared with a row of different content (`keys`) the uid `<uid>#<content hash>`,
    in place; identical rows keep sharing one uid. Returns {reused id: number of different rows under it}.

    The new uids depend only on each row's id and content, so they are the same on every run over the same data
    (the reference cache stays valid) and whatever the order of files or rows.
    """
    hashes = [content_hash(row, keys) for row in rows]
    contents: dict[str, set[str]] = {}
    for row, digest in zip(rows, hashes):
        contents.setdefault(row["uid"], set()).add(digest)
    reused = {uid: len(digests) for uid, digests in contents.items() if len(digests) > 1}
    for row, digest in zip(rows, hashes):
        if row["uid"] in reused:
            row["uid"] = f"{row['uid']}#{digest}"
    owner: dict[str, str] = {}
    for row, digest in zip(rows, hashes):
        if owner.setdefault(row["uid"], digest) != digest:  # a data id that looks like `<id>#<hash>`
            raise DataError(f"{source}: uid {row['uid']!r} names two different rows even after making reused ids "
                            "unique; rename the id column's values")
    if reused:
        shown = ", ".join(list(reused)[:10]) + (" ..." if len(reused) > 10 else "")
        log.warning("%s: %d id(s) are shared by different rows (shards numbering from 0?); their uids are now "
                    "<id>#<content hash>: %s", source, len(reused), shown)
    return reused


def _non_empty(fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if value is None:
            raise DataError(f"field {key!r} is missing (null)")
        if not isinstance(value, str):
            raise DataError(f"field {key!r} has the wrong type ({type(value).__name__}, expected text)")
        if not value.strip():
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


def normalise_preferences(ds: datasets.Dataset, source: str, on_bad_row: str = "skip",
                          max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[list[dict], BadRows]:
    """Rows in the normalised preference schema plus the rows left out and why.

    The columns must hold the RLHF-V-Dataset schema (`image`, `text` JSON) or the flat one (`image`, `question`,
    `chosen`, `rejected`), else `DataError` names the source, the columns found and what each schema lacks.
    A row is left out for a missing, undecodable or too large (> `max_image_pixels`) image, a `text` that is not
    JSON or lacks a key, a question/chosen/rejected that is empty or not text, or chosen identical to rejected.
    With `on_bad_row="error"` the first such row raises `DataError` naming source, row and field; with no valid
    row at all `DataError` names the source and the bad rows by reason. Uids are unique per pair
    (`make_uids_unique`).
    """
    return _normalise(ds, source, on_bad_row, _preference_fields, PREFERENCE_SCHEMAS, "preference",
                      ("image", *PAIR_KEYS), max_image_pixels)


def _reason(err: Exception) -> str:
    """A short reason key: the message without row-specific detail (a parser's or PIL's text after ': ')."""
    return str(err).split(": ")[0]


def normalise_sft(ds: datasets.Dataset, source: str, on_bad_row: str = "skip",
                  max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[list[dict], BadRows]:
    """SFT rows (`question`, `answer`) from a dataset with those columns or a preference dataset's chosen; checks
    as `normalise_preferences`."""
    return _normalise(ds, source, on_bad_row, _sft_fields, SFT_SCHEMAS, "SFT", ("image", "question", "answer"),
                      max_image_pixels)


def _prompt_fields(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("question") is None and row.get("text") is not None:  # RLHF-V-Dataset: the question in `text`
        return _non_empty({"question": _row_text(row)["question"]})
    return _non_empty({"question": row.get("question")})


def distinct_prompts(ds: datasets.Dataset, source: str, count: int, seed: int, on_bad_row: str = "skip",
                     max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[dict[str, Any]]:
    """`count` distinct prompts (`uid`: a hash of image and question, `image`, `question`) from a dataset with
    `image` and `question` columns (a prompt file, an SFT or a preference dataset, whose prompts repeat over their
    pairs), taken in a random order seeded by `seed`: the first n of them are the same whatever `count` is.

    Rows are checked as `normalise_preferences` checks them, only as many as needed. `DataError` names the source
    when its columns hold no prompts or it has fewer than `count` distinct good ones."""
    check_columns(ds.column_names, source, PROMPT_SCHEMAS, "prompt")
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    bad, prompts = BadRows(source), {}
    for index in order:
        if len(prompts) == count:
            break
        row = _checked_row(ds[index], index, source, _prompt_fields, max_image_pixels, on_bad_row, bad)
        if row is not None:
            uid = content_hash(row, ("image", "question"))
            prompts.setdefault(uid, {**row, "uid": uid})
    if bad.count:
        log.warning("%s", bad.summary())
    if len(prompts) < count:
        raise DataError(f"{source}: {len(prompts)} distinct prompts (image and question) in {len(ds)} rows "
                        f"({bad.count} bad), {count} needed")
    return list(prompts.values())


# ---------------------------------------------------------------- writing
def rlhfv_records(items: Iterable[dict[str, Any]], ds_name: str) -> list[dict[str, Any]]:
    """Rows in the exact RLHF-V-Dataset schema (`text` JSON column) from dicts with image/question/..."""
    records = []
    for index, item in enumerate(items):
        text = {key: item[key] for key in PAIR_KEYS}
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
    """Write rows to a self-contained parquet (image bytes embedded), atomically. No rows is a `DataError`: a
    parquet written from no rows has no columns and cannot be read back."""
    path = Path(path)
    if not rows:
        raise DataError(f"{path}: no rows to write")
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
