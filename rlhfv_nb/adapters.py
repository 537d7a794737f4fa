"""Own data: TRL, LLaMA-Factory and JSON/JSONL preference and SFT data, converted for `rlhfv_nb.data`.

`data.load_raw` hands every source here. Data already in a schema of `data` passes unchanged; other formats are
converted row by row to the flat schema (`image` bytes, `question`, and `chosen`/`rejected` or `answer`), which
`data.normalise_preferences` / `normalise_sft` then check exactly as they check parquet and hub data. A row that
cannot be converted keeps its reason, naming the data's own field, in `data.ROW_ERROR`: the normalisers report
it as a bad row (or stop on it with `on_bad_row: error`). Problems with a whole source (invalid JSON, an unknown
dataset name, no image column) raise `DataError` naming the file.

Sources (docs/own-data.md):
- a LLaMA-Factory dataset: `path/dataset_info.json#name`, or `path/dataset_info.json` or its folder when it
  defines one dataset; `formatting` alpaca, sharegpt or openai, `ranking` for pairs, `columns` and `tags` as
  LLaMA-Factory reads them, image paths relative to the folder of `dataset_info.json`;
- a `.json` (a list of rows, or JSON lines) or `.jsonl` file, image paths relative to the file or to the row's
  `image_folder`;
- any of these or a parquet/hub dataset, by its columns: TRL preference (`prompt`, `chosen`, `rejected`),
  conversational or standard; TRL prompt-completion; conversations (`messages` or `conversations`: TRL,
  ShareGPT/LLaVA; with `chosen`/`rejected` columns for pairs); the flat schema with image paths. The image is
  in `images` (a list) or `image`.

The pipeline trains on single-image, single-turn rows, so a row is bad, with its reason, when it has no image or
several, image placeholders (`<image>` in text, `{"type": "image"}` content parts) that do not match its images
(a prompt given as plain text may have none, except in LLaMA-Factory data, which counts them strictly), a
system prompt, or text in a turn before the question (empty earlier turns are dropped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from rlhfv_nb import data
from rlhfv_nb.data import ROW_ERROR, DataError

DATASET_INFO = "dataset_info.json"
JSON_SUFFIXES = (".json", ".jsonl")
DATA_FILE_SUFFIXES = (*JSON_SUFFIXES, ".parquet")
IMAGE_COLUMNS = ("images", "image")  # the first present holds a row's image(s)
DIALOGUE_COLUMNS = ("messages", "conversations")
ID_KEYS = ("uid", "idx", "id")
PLACEHOLDER = re.compile(r"\s*<image>\s*")

# Column sets of the formats detected from columns, for the message when none matches.
FORMATS = {
    "TRL preference": (("images", "prompt", "chosen", "rejected"),
                       "`images` (or `image`), `prompt` text or messages, `chosen`, `rejected`"),
    "TRL prompt-completion": (("images", "prompt", "completion"), "`images` (or `image`), `prompt`, `completion`"),
    "conversation": (("images", "messages"), "`images` (or `image`), `messages` or `conversations` (TRL, "
                                             "ShareGPT/LLaVA), plus `chosen` and `rejected` for pairs"),
    "flat": (("image", "question", "chosen", "rejected"), "`image` (a path, or `images`), `question`, `chosen`, "
                                                          "`rejected`"),
    "flat SFT": (("image", "question", "answer"), "`image` (a path, or `images`), `question`, `answer`"),
}


@dataclass(frozen=True)
class Tags:
    """The keys and role names of chat messages (LLaMA-Factory's `tags`)."""

    role: str = "role"
    content: str = "content"
    user: str = "user"
    assistant: str = "assistant"
    system: str = "system"

    def role_of(self, message: dict[str, Any], where: str) -> str:
        """`user`, `assistant` or `system` for this data's names of them, else the data's own role name."""
        role = message.get(self.role)
        if not isinstance(role, str):
            raise DataError(f"field {where!r} has a message without a {self.role!r} name: {message}")
        return {self.user: "user", self.assistant: "assistant", self.system: "system"}.get(role, role)


OPENAI_TAGS = Tags()
SHAREGPT_TAGS = Tags("from", "value", "human", "gpt", "system")


@dataclass(frozen=True)
class Layout:
    """Where a format keeps a row's parts.

    `prompt` holds the prompt as text or as messages; with no `answers` it holds the whole dialogue, whose last
    (assistant) turn is the SFT answer. `answers` maps output keys (`chosen`, `rejected` or `answer`) to columns.
    """

    name: str
    images: str | None
    prompt: str
    answers: dict[str, str] = field(default_factory=dict)
    query: str | None = None  # alpaca `input`, appended to the prompt on a new line
    history: str | None = None  # alpaca `[[question, answer], ...]` before the prompt
    system: str | None = None  # a system prompt column
    tags: Tags | None = None  # None: by each dialogue's keys (`from`/`value`, else `role`/`content`)
    strict: bool = False  # as many placeholders as images even in a plain-text prompt (LLaMA-Factory)

    @property
    def columns(self) -> tuple[str, ...]:
        """The flat rows' columns."""
        answers = ("chosen", "rejected") if "chosen" in self.answers else ("answer",)
        return ("id", "image", "image_path", "question", *answers, ROW_ERROR)

    @property
    def required(self) -> tuple[str, ...]:
        """The data columns every row is read from."""
        return tuple(column for column in (self.images, self.prompt, *self.answers.values()) if column)


@dataclass(frozen=True)
class Turn:
    """One message: role, text without image placeholders, placeholder count, and the field it came from."""

    role: str
    text: str
    images: int
    field: str


# ---------------------------------------------------------------- sources
def split_dataset_name(source: str) -> tuple[str, str | None]:
    """`path#name` -> (`path`, `name`), naming a dataset of a LLaMA-Factory `dataset_info.json`; else (`source`,
    None)."""
    path, hash_sign, name = source.rpartition("#")
    if not hash_sign or not path or not name or "/" in name or "\\" in name:
        return source, None
    return path, name


def load_local(path: Path, name: str | None, source: str) -> datasets.Dataset:
    """The local file or folder `path` (`source` as given, `name` after its `#`) in the flat schema, or as it is
    when already in a schema of `data`: a LLaMA-Factory dataset, a JSON/JSONL file, or parquet."""
    info = path / DATASET_INFO if path.is_dir() else path
    if name is not None or (info.name == DATASET_INFO and info.is_file()):
        if info.name != DATASET_INFO:
            raise DataError(f"{source}: `#{name}` names a dataset of a LLaMA-Factory {DATASET_INFO}, and {path} "
                            "is not one")
        return load_llamafactory(info, name)
    if path.is_file() and path.suffix.lower() in JSON_SUFFIXES:
        return load_json(path)
    return flatten(data.load_parquet(path, source), path if path.is_dir() else path.parent)


def flatten(ds: datasets.Dataset, base: Path | None) -> datasets.Dataset:
    """`ds` as it is when its columns hold a schema of `data`, or no known format with an image column (the
    normalisers then name the columns and what each schema lacks), else converted to the flat schema by the
    layout its columns show; image paths are relative to `base`."""
    if any(all(column in ds.column_names for column in required) for required, _ in data.SFT_SCHEMAS.values()):
        return ds
    layout = detect_layout(ds.column_names)
    if layout is None or layout.images is None:
        return ds
    return convert(ds, layout, [base] if base else [])


def load_json(path: Path) -> datasets.Dataset:
    """A JSON/JSONL file's rows in the flat schema, by the layout their keys show; `DataError` naming the file
    when they show none."""
    rows = read_json_rows(path)
    columns = _columns(rows)
    layout = detect_layout(columns)
    if layout is None:
        data.check_columns(columns, str(path), FORMATS, "known")  # raises: the columns hold no format
    return convert(rows, _with_images(layout, columns, str(path)), [path.parent])


def read_json_rows(path: Path) -> list[Any]:
    """The rows of a `.json` file (a list of rows, or JSON lines) or a `.jsonl` file; `DataError` naming the file
    (and line) when it cannot be read, is not JSON or holds no rows."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err})") from err
    if not text.strip():
        raise DataError(f"{path}: file is empty, no JSON rows")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
    else:
        rows = [_json_line(line, number, path) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: holds no rows")
    return rows


def _json_line(line: str, number: int, path: Path) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {number} is not JSON ({err}); a .json file holds a list of rows or one "
                        "JSON object per line, a .jsonl file one object per line") from err


def _columns(rows: list[Any]) -> list[str]:
    """The keys of the rows that are objects, in order of appearance."""
    return list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))


# ---------------------------------------------------------------- LLaMA-Factory
LLAMAFACTORY_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
LLAMAFACTORY_FORMATTING = ("alpaca", "sharegpt", "openai")
LLAMAFACTORY_REMOTE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


def load_llamafactory(info: Path, name: str | None) -> datasets.Dataset:
    """The dataset `name` of a LLaMA-Factory `dataset_info.json` (its only one when `name` is None) in the flat
    schema; `DataError` naming the file for an unknown name, an entry this package cannot read, or data that
    lacks the entry's columns."""
    entries = _dataset_info(info)
    name = _entry_name(entries, name, info)
    where = f"{info}#{name}"
    entry = entries[name]
    layout = _entry_layout(entry, where)
    path = _entry_file(entry, info.parent, where)
    rows = _data_rows(path)
    columns = rows.column_names if isinstance(rows, datasets.Dataset) else _columns(rows)
    missing = [column for column in layout.required if column not in columns]
    if missing:
        raise DataError(f"{path}: lacks the column(s) {missing} that {where} names (found columns {columns})")
    return convert(rows, layout, [info.parent])


def _dataset_info(info: Path) -> dict[str, dict[str, Any]]:
    try:
        entries = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{info}: not a readable JSON file ({err})") from err
    if not isinstance(entries, dict) or not entries or not all(isinstance(e, dict) for e in entries.values()):
        raise DataError(f"{info}: not a LLaMA-Factory {DATASET_INFO} (an object of dataset entries); a folder "
                        "written by `datasets`' save_to_disk has a file of this name too")
    return entries


def _entry_name(entries: dict[str, Any], name: str | None, info: Path) -> str:
    names = ", ".join(entries)
    if name is None:
        if len(entries) > 1:
            raise DataError(f"{info}: defines {len(entries)} datasets ({names}); name one as {info}#<name>")
        return next(iter(entries))
    if name not in entries:
        raise DataError(f"{info}: defines no dataset {name!r}; it defines {names}")
    return name


def _entry_layout(entry: dict[str, Any], where: str) -> Layout:
    """The layout of a LLaMA-Factory entry: its `formatting`, `ranking`, `columns` over LLaMA-Factory's
    defaults, and `tags` over the ShareGPT ones."""
    formatting = entry.get("formatting", "alpaca")
    if formatting not in LLAMAFACTORY_FORMATTING:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(LLAMAFACTORY_FORMATTING)}")
    columns = {**LLAMAFACTORY_COLUMNS, **entry.get("columns", {})}
    if not columns.get("images"):
        raise DataError(f"{where}: no columns.images; text-only data cannot train a vision-language model")
    if entry.get("ranking"):
        if not (columns.get("chosen") and columns.get("rejected")):
            raise DataError(f"{where}: ranking: true needs columns.chosen and columns.rejected")
        answers = {"chosen": columns["chosen"], "rejected": columns["rejected"]}
    else:
        answers = {"answer": columns["response"]} if formatting == "alpaca" else {}
    common = {"name": f"LLaMA-Factory {formatting}", "images": columns["images"], "answers": answers,
              "system": columns.get("system"), "strict": True}
    if formatting == "alpaca":
        return Layout(prompt=columns["prompt"], query=columns["query"], history=columns.get("history"), **common)
    names = {f"{tag.name}_tag": tag.name for tag in fields(Tags)}  # role_tag -> role, ...; others are not read
    tags = {names[key]: value for key, value in entry.get("tags", {}).items() if key in names}
    return Layout(prompt=columns["messages"], tags=replace(SHAREGPT_TAGS, **tags), **common)


def _entry_file(entry: dict[str, Any], folder: Path, where: str) -> Path:
    remote = next((key for key in LLAMAFACTORY_REMOTE if key in entry), None)
    if remote:
        raise DataError(f"{where}: loads {remote} {entry[remote]!r}; only entries with a local file_name are read "
                        "here (give a hub dataset's id as the data source instead: its columns are detected)")
    if "file_name" not in entry:
        raise DataError(f"{where}: has no file_name")
    path = folder / entry["file_name"]
    if not path.exists():
        raise DataError(f"{where}: file_name {entry['file_name']!r} does not exist (looked for {path})")
    return path


def _data_rows(path: Path) -> list[Any] | datasets.Dataset:
    """The rows of a LLaMA-Factory data file, or of all files in a data folder (one type)."""
    files = sorted(child for child in path.iterdir() if child.is_file()) if path.is_dir() else [path]
    suffixes = {file.suffix.lower() for file in files}
    if not suffixes or not suffixes <= set(DATA_FILE_SUFFIXES) or (".parquet" in suffixes and len(suffixes) > 1):
        raise DataError(f"{path}: data files must be all {' or '.join(JSON_SUFFIXES)}, or all .parquet (found "
                        f"{', '.join(sorted(suffixes)) or 'no files'})")
    if ".parquet" in suffixes:
        return data.load_parquet(path, str(path))
    return [row for file in files for row in read_json_rows(file)]


# ---------------------------------------------------------------- detection
def detect_layout(columns: Iterable[str]) -> Layout | None:
    """The format a dataset's columns show (`images` None when it has no image column), or None."""
    columns = set(columns)
    images = next((column for column in IMAGE_COLUMNS if column in columns), None)
    pair = {"chosen": "chosen", "rejected": "rejected"} if {"chosen", "rejected"} <= columns else None
    dialogue = next((column for column in DIALOGUE_COLUMNS if column in columns), None)
    if pair and "prompt" in columns:
        return Layout("TRL preference", images, "prompt", pair)
    if {"prompt", "completion"} <= columns:
        return Layout("TRL prompt-completion", images, "prompt", {"answer": "completion"})
    if dialogue:
        return Layout("conversation", images, dialogue, pair or {})
    if "question" in columns and (pair or "answer" in columns):
        return Layout("flat", images, "question", pair or {"answer": "answer"})
    return None


def _with_images(layout: Layout, columns: list[str], source: str) -> Layout:
    """`layout`, or `DataError` naming the source when the data has no image column."""
    if layout.images is None:
        raise DataError(f"{source}: {layout.name} columns but no image column ({' or '.join(IMAGE_COLUMNS)}; "
                        f"found columns {columns}): text-only data cannot train a vision-language model")
    return layout


# ---------------------------------------------------------------- rows
def convert(rows: datasets.Dataset | list[Any], layout: Layout, bases: list[Path]) -> datasets.Dataset:
    """`rows` in the flat schema of `layout.columns`; image paths are relative to `bases` (the first holding the
    file) or to a row's `image_folder`."""
    features = datasets.Features({key: datasets.Value("binary" if key == "image" else "string")
                                  for key in layout.columns})
    flat = partial(_flat_row, layout=layout, bases=bases)
    if isinstance(rows, datasets.Dataset):  # image files may have changed since a cached conversion: redo it
        return _undecoded(rows, layout.images).map(flat, remove_columns=rows.column_names, features=features,
                                                   load_from_cache_file=False, desc=f"Reading {layout.name} rows")
    return datasets.Dataset.from_list([flat(row) for row in rows], features=features)


def _undecoded(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """`ds` with the images of `column` (an image or a list of images) left encoded."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    if isinstance(getattr(feature, "feature", None), datasets.Image):
        return ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return ds


def _flat_row(row: Any, layout: Layout, bases: list[Path]) -> dict[str, Any]:
    """One row in the flat schema; a row that cannot be converted has only its id and its reason (`ROW_ERROR`)."""
    flat = dict.fromkeys(layout.columns)
    if isinstance(row, Mapping):  # `datasets` hands rows over as mappings
        flat["id"] = next((str(row[key]) for key in ID_KEYS if row.get(key) is not None), None)
    try:
        flat.update(_converted(row, layout, bases))
    except DataError as err:
        flat[ROW_ERROR] = str(err)
    return flat


def _converted(row: Any, layout: Layout, bases: list[Path]) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise DataError(f"row is a {type(row).__name__}, not an object")
    prompt, answers = _dialogue(row, layout)
    question = _question(prompt, layout.prompt)
    images = _listed(row.get(layout.images))
    strict = layout.strict or not isinstance(row.get(layout.prompt), str)
    _check_images(prompt, len(images), layout.images, strict)
    image, path = _image_data(images[0], layout.images, _image_bases(row, bases))
    return {"image": image, "image_path": path, "question": question, **answers}


def _dialogue(row: Mapping[str, Any], layout: Layout) -> tuple[list[Turn], dict[str, str]]:
    """The prompt's turns and the answer texts by output key."""
    turns = _context_turns(row, layout) + _prompt_turns(row, layout)
    if layout.answers:
        return turns, {key: _answer(row.get(column), layout, column) for key, column in layout.answers.items()}
    if not turns or turns[-1].role != "assistant":
        raise DataError(f"field {layout.prompt!r} does not end with an assistant turn (the answer)")
    return turns[:-1], {"answer": _required_text(turns[-1].text, layout.prompt)}


def _context_turns(row: Mapping[str, Any], layout: Layout) -> list[Turn]:
    """The system prompt and alpaca history before the prompt."""
    turns = []
    if layout.system and row.get(layout.system) is not None:
        turns.append(_text_turn("system", row[layout.system], layout.system))
    for pair in (row.get(layout.history) or []) if layout.history else []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(f"field {layout.history!r} holds {pair!r}, not a [question, answer] pair")
        turns += [_text_turn("user", pair[0], layout.history), _text_turn("assistant", pair[1], layout.history)]
    return turns


def _prompt_turns(row: Mapping[str, Any], layout: Layout) -> list[Turn]:
    value = row.get(layout.prompt)
    if isinstance(value, list):
        return [_message_turn(message, _tags(layout, value), layout.prompt) for message in value]
    query = _text(row.get(layout.query), layout.query) if layout.query else ""
    return [_text_turn("user", "\n".join(filter(None, (_required_text(value, layout.prompt), query))), layout.prompt)]


def _tags(layout: Layout, messages: list[Any]) -> Tags:
    if layout.tags is not None:
        return layout.tags
    first = messages[0] if messages else None
    return SHAREGPT_TAGS if isinstance(first, dict) and "from" in first else OPENAI_TAGS


def _message_turn(message: Any, tags: Tags, where: str) -> Turn:
    if not isinstance(message, dict):
        raise DataError(f"field {where!r} holds a {type(message).__name__} where a message belongs")
    role = tags.role_of(message, where)
    content = message.get(tags.content)
    if isinstance(content, list):
        return _parts_turn(role, content, where)
    return _text_turn(role, content, where)


def _text(value: Any, where: str) -> str:
    """`value` as text, "" for None; `DataError` naming the field for another type."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(f"field {where!r} has the wrong type ({type(value).__name__}, expected text)")


def _text_turn(role: str, value: Any, where: str) -> Turn:
    """A turn from text, its `<image>` placeholders counted and removed."""
    text = _text(value, where)
    return Turn(role, PLACEHOLDER.sub(" ", text).strip(), len(PLACEHOLDER.findall(text)), where)


def _parts_turn(role: str, parts: list[Any], where: str) -> Turn:
    """A turn from TRL content parts: `{"type": "text", "text": ...}` and `{"type": "image"}`."""
    texts, images = [], 0
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images += 1
        elif kind == "text":
            turn = _text_turn(role, part.get("text"), where)
            texts.append(turn.text)
            images += turn.images
        else:
            raise DataError(f"field {where!r} has a content part that is not text or an image: {part!r}")
    return Turn(role, "\n".join(text for text in texts if text), images, where)


def _answer(value: Any, layout: Layout, where: str) -> str:
    """An answer's text: plain text, one message, or a list of one assistant message."""
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"field {where!r} does not hold one message: {len(value)} messages")
        value = value[0]
    if isinstance(value, dict):
        turn = _message_turn(value, _tags(layout, [value]), where)
        if turn.role != "assistant":
            raise DataError(f"field {where!r} is not an assistant message: role {turn.role!r}")
        value = turn.text
    return _required_text(value, where)


def _required_text(value: Any, where: str) -> str:
    """`value` if it is non-empty text, else `DataError` naming the field (as the normalisers word it)."""
    return data._non_empty({where: value})[where]


def _question(turns: list[Turn], where: str) -> str:
    """The last user turn's text, if every earlier turn is empty: the pipeline trains single-turn rows."""
    if not turns or turns[-1].role != "user":
        raise DataError(f"field {where!r} does not end with a user turn: "
                        f"{'no turns' if not turns else 'the last is ' + repr(turns[-1].role)}")
    earlier = [turn for turn in turns[:-1] if turn.text]
    if any(turn.role != "system" for turn in earlier):
        roles = ", ".join(turn.role for turn in earlier)
        raise DataError(f"field {where!r} is multi-turn: turns before the question hold text ({roles}); the "
                        "pipeline trains single-turn rows")
    if earlier:
        raise DataError(f"field {earlier[0].field!r} holds a system prompt: the pipeline's prompts have none")
    return _required_text(turns[-1].text, where)


def _check_images(turns: list[Turn], count: int, where: str, strict: bool) -> None:
    """`DataError` unless there is one image and as many placeholders (or, not `strict`, none)."""
    placeholders = sum(turn.images for turn in turns)
    if placeholders != count and (strict or placeholders):
        prompt = next((turn.field for turn in turns if turn.images), turns[-1].field)
        raise DataError(f"field {prompt!r} does not match field {where!r}: {placeholders} image placeholder(s), "
                        f"{count} image(s)")
    if count > 1:
        raise DataError(f"field {where!r} holds more than one image: {count} images; the pipeline trains on one "
                        "image per row")
    if count == 0:
        raise DataError(f"field {where!r} is missing (no image)")


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _image_bases(row: Mapping[str, Any], bases: list[Path]) -> list[Path]:
    """Where a row's relative image paths are: its `image_folder` (relative to the first base), else `bases`."""
    folder = row.get("image_folder")
    if not isinstance(folder, str) or not folder:
        return bases
    folder_path = Path(folder).expanduser()
    return [folder_path if folder_path.is_absolute() or not bases else bases[0] / folder_path]


def _image_data(value: Any, where: str, bases: list[Path]) -> tuple[bytes, str | None]:
    """Encoded image bytes and the path they came from, for a path, bytes, a `datasets` image cell or a PIL
    image."""
    if isinstance(value, dict) and not value.get("bytes"):
        value = value.get("path")
    if isinstance(value, str):
        return _read_image_file(value, where, bases), value
    if isinstance(value, dict):
        return value["bytes"], value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, Image.Image):
        return data.encode_image(value), None
    raise DataError(f"field {where!r} holds a {type(value).__name__}, not an image (a path, bytes or an image)")


def _read_image_file(name: str, where: str, bases: list[Path]) -> bytes:
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() or not bases else [base / path for base in bases]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise DataError(f"field {where!r} names a missing image file: {name} (looked for "
                        f"{' and '.join(map(str, candidates))})")
    try:
        return found.read_bytes()
    except OSError as err:
        raise DataError(f"field {where!r} names an unreadable image file: {found} ({err.strerror or err})") from err
