"""Own data (issue 17): TRL, LLaMA-Factory and JSON/JSONL sources go through `load_raw` and the same normalisers as
parquet data; rows the single-image, single-turn pipeline cannot use are bad rows naming row and field, whole-source
problems name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image
from tiny_run import CPU_TINY

from rlhfv_nb.adapters import split_dataset_name
from rlhfv_nb.config import load_config
from rlhfv_nb.data import DataError, decode_image, encode_image, load_raw, normalise_preferences, normalise_sft

PAIRS = [(f"What is in picture {i}?", f"A red ball number {i}.", f"A blue dog number {i}.") for i in range(3)]


def _png(index: int) -> bytes:
    return encode_image(Image.new("RGB", (8, 8), (40 * index, 100, 200)))


def _image_files(folder: Path, count: int = len(PAIRS)) -> list[str]:
    """PNG files `img/<i>.png` under `folder`; their paths relative to it."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / "img" / f"{index}.png").write_bytes(_png(index))
    return [f"img/{index}.png" for index in range(count)]


def _write_json(path: Path, rows: list, lines: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(map(json.dumps, rows)) if lines else json.dumps(rows, indent=1))
    return path


def _preferences(source: str | Path, **kwargs) -> tuple[list[dict], dict[str, list[str]]]:
    rows, bad = normalise_preferences(load_raw(str(source)), str(source), **kwargs)
    return rows, {row_id: reason for reason, ids in bad.reasons.items() for row_id in ids}


def _content(rows: list[dict]) -> list[tuple]:
    """What training sees of each row: question, answers, the image's first pixel."""
    return [(row["question"], row.get("chosen", row.get("answer")), row.get("rejected"),
             decode_image(row["image"]).getpixel((0, 0))) for row in rows]


EXPECTED = [(q, c, r, (40 * i, 100, 200)) for i, (q, c, r) in enumerate(PAIRS)]


def _error_row(source: str | Path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        _preferences(source, on_bad_row="error", **kwargs)
    return str(err.value)


# ---------------------------------------------------------------- TRL
def _trl_message(role: str, text: str, images: int = 0) -> dict:
    return {"role": role, "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def _trl_row(index: int, images: int = 1, parts: int = 1) -> dict:
    question, chosen, rejected = PAIRS[index]
    return {"images": [{"bytes": _png(index), "path": None}] * images,
            "prompt": [_trl_message("user", question, parts)],
            "chosen": [_trl_message("assistant", chosen)], "rejected": [_trl_message("assistant", rejected)]}


def _trl_parquet(path: Path, rows: list[dict]) -> Path:
    ds = datasets.Dataset.from_list(rows)
    ds.cast_column("images", datasets.List(datasets.Image())).to_parquet(str(path))
    return path


def test_trl_conversational_preferences_read_as_flat_pairs(tmp_path):
    """As HuggingFaceH4/rlaif-v_formatted: `images` (a list) and prompt/chosen/rejected messages with parts."""
    path = _trl_parquet(tmp_path / "trl.parquet", [_trl_row(i) for i in range(len(PAIRS))])
    rows, bad = _preferences(path)
    assert bad == {} and _content(rows) == EXPECTED
    assert [row["uid"] for row in rows] == ["0", "1", "2"] and rows[1]["image"] == _png(1)
    sft, _ = normalise_sft(load_raw(str(path)), str(path))
    assert [row["answer"] for row in sft] == [chosen for _, chosen, _ in PAIRS]


def test_trl_standard_preferences_with_one_image_column(tmp_path):
    """TRL's standard format: plain-text prompt/chosen/rejected with `image`; an `<image>` in the prompt is
    optional and removed."""
    rows = [{"image": {"bytes": _png(i), "path": None}, "prompt": ("<image>\n" if i == 1 else "") + q,
             "chosen": c, "rejected": r} for i, (q, c, r) in enumerate(PAIRS)]
    path = tmp_path / "standard.parquet"
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(path))
    pairs, bad = _preferences(path)
    assert bad == {} and _content(pairs) == EXPECTED


def test_trl_rows_the_pipeline_cannot_use_are_bad_rows_naming_the_field(tmp_path):
    good = _trl_row(0)
    broken = {
        "two images": _trl_row(1, images=2, parts=2),
        "two image parts, one image": _trl_row(1, parts=2),
        "no image part": _trl_row(1, parts=0),
        "no image": _trl_row(1, images=0, parts=0),
        "multi-turn": {**good, "prompt": [_trl_message("user", "Hi", 1), _trl_message("assistant", "Hello"),
                                          _trl_message("user", "What is it?")]},
        "system prompt": {**good, "prompt": [_trl_message("system", "Be brief."), *good["prompt"]]},
        "two chosen messages": {**good, "chosen": good["chosen"] * 2},
        "chosen by the user": {**good, "chosen": [_trl_message("user", "A cat.")]},
        "ends with the assistant": {**good, "prompt": [*good["prompt"], _trl_message("assistant", "Hm")]},
    }
    reasons = {
        "two images": "field 'images' holds more than one image",
        "two image parts, one image": "field 'prompt' does not match field 'images'",
        "no image part": "field 'prompt' does not match field 'images'",
        "no image": "field 'images' is missing (no image)",
        "multi-turn": "field 'prompt' is multi-turn",
        "system prompt": "field 'prompt' holds a system prompt",
        "two chosen messages": "field 'chosen' does not hold one message",
        "chosen by the user": "field 'chosen' is not an assistant message",
        "ends with the assistant": "field 'prompt' does not end with a user turn",
    }
    path = _trl_parquet(tmp_path / "bad.parquet", [good, *broken.values()])
    rows, reason_of = _preferences(path)
    assert [row["uid"] for row in rows] == ["0"]
    assert reason_of == {str(index): reasons[kind] for index, kind in enumerate(broken, start=1)}
    message = _error_row(path)
    assert message == (f"{path}: row 1 (id 1): field 'images' holds more than one image: 2 images; the pipeline "
                       "trains on one image per row"), message


def test_a_trl_hub_dataset_is_converted_too(tmp_path, monkeypatch):
    ds = datasets.Dataset.from_list([_trl_row(i) for i in range(len(PAIRS))])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split: ds)  # no network: the hub's answer
    rows, bad = _preferences("trl-lib/rlaif-v")
    assert bad == {} and _content(rows) == EXPECTED


# ---------------------------------------------------------------- LLaMA-Factory
def _sharegpt_row(index: int, image: str, placeholders: int = 1) -> dict:
    question, chosen, rejected = PAIRS[index]
    return {"conversations": [{"from": "human", "value": "<image>" * placeholders + question}],
            "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected},
            "images": [image]}


SHAREGPT_PAIRS = {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                              "images": "images"}}


def _llamafactory(folder: Path, rows: list[dict], **entries: dict) -> Path:
    """`folder/dataset_info.json` with `entries` (default: `pairs`, ShareGPT pairs) and `rows` in pairs.json."""
    _write_json(folder / "pairs.json", rows)
    info = folder / "dataset_info.json"
    info.write_text(json.dumps(entries or {"pairs": SHAREGPT_PAIRS}))
    return info


def test_llamafactory_sharegpt_pairs_by_name_or_folder(tmp_path):
    folder = tmp_path / "lf"
    images = _image_files(folder)
    info = _llamafactory(folder, [_sharegpt_row(i, images[i]) for i in range(len(PAIRS))],
                         pairs=SHAREGPT_PAIRS, other={**SHAREGPT_PAIRS, "file_name": "other.json"})
    rows, bad = _preferences(f"{info}#pairs")
    assert bad == {} and _content(rows) == EXPECTED
    assert json.loads(rows[2]["source"]) == {"image_path": "img/2.png"}
    # a dataset_info.json that defines one dataset needs no name: the file or its folder will do
    info.write_text(json.dumps({"pairs": SHAREGPT_PAIRS}))
    for source in (info, folder):
        assert _content(_preferences(source)[0]) == EXPECTED


def test_llamafactory_sharegpt_bad_rows(tmp_path):
    folder = tmp_path / "lf"
    image = _image_files(folder, 1)[0]
    good = _sharegpt_row(0, image)
    question = good["conversations"][0]
    rows = [
        good,
        _sharegpt_row(1, image, placeholders=2),  # two <image> placeholders, one image
        _sharegpt_row(2, "img/missing.png"),
        {**good, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, question]},
        {**good, "conversations": [{"from": "system", "value": "Be brief."}, question]},
        {**good, "rejected": {"from": "human", "value": "A dog."}},
        {**good, "images": [image, image], "conversations": [_sharegpt_row(0, image, 2)["conversations"][0]]},
        "not an object",
    ]
    info = _llamafactory(folder, rows)
    pairs, reason_of = _preferences(info)
    assert [row["question"] for row in pairs] == [PAIRS[0][0]]
    assert reason_of == {
        "1": "field 'conversations' does not match field 'images'",
        "2": "field 'images' names a missing image file",
        "3": "field 'conversations' is multi-turn",
        "4": "field 'conversations' holds a system prompt",
        "5": "field 'rejected' is not an assistant message",
        "6": "field 'images' holds more than one image",
        "7": "row is a str, not an object",
    }
    assert _error_row(info) == (f"{info}: row 1 (id 1): field 'conversations' does not match field 'images': "
                                "2 image placeholder(s), 1 image(s)")
    rows[1] = good
    info = _llamafactory(folder, rows)
    assert _error_row(info) == (f"{info}: row 2 (id 2): field 'images' names a missing image file: img/missing.png "
                                f"(looked for {folder / 'img/missing.png'})")


def test_llamafactory_empty_earlier_turns_are_dropped(tmp_path):
    folder = tmp_path / "lf"
    image = _image_files(folder, 1)[0]
    row = _sharegpt_row(0, image)
    row["conversations"] = [{"from": "human", "value": " "}, {"from": "gpt", "value": ""}, *row["conversations"]]
    pairs, bad = _preferences(_llamafactory(folder, [row]))
    assert bad == {} and pairs[0]["question"] == PAIRS[0][0]


def test_llamafactory_openai_tags_sft_and_alpaca_pairs(tmp_path):
    """SFT conversations with role/content tags (as LLaMA-Factory's mllm_demo), and alpaca-formatted pairs."""
    folder = tmp_path / "lf"
    images = _image_files(folder)
    sft = [{"messages": [{"role": "user", "content": f"<image>{q}"}, {"role": "assistant", "content": c}],
            "images": [images[i]]} for i, (q, c, _) in enumerate(PAIRS)]
    alpaca = [{"instruction": f"<image>{q}", "chosen": c, "rejected": r, "images": [images[i]]}
              for i, (q, c, r) in enumerate(PAIRS)]
    _write_json(folder / "sft.jsonl", sft, lines=True)
    _write_json(folder / "alpaca.json", alpaca)
    info = _llamafactory(folder, [], sft={
        "file_name": "sft.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }, alpaca={"file_name": "alpaca.json", "ranking": True,
               "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected", "images": "images"}})
    rows, bad = normalise_sft(load_raw(f"{info}#sft"), "sft")
    assert bad.count == 0 and [(row["question"], row["answer"]) for row in rows] == [(q, c) for q, c, _ in PAIRS]
    assert _content(_preferences(f"{info}#alpaca")[0]) == EXPECTED


def test_llamafactory_file_name_as_parquet_or_a_folder_of_json_shards(tmp_path):
    folder = tmp_path / "lf"
    images = _image_files(folder)
    rows = [_sharegpt_row(i, images[i]) for i in range(len(PAIRS))]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "pairs.parquet"))
    _write_json(folder / "shards" / "0.jsonl", rows[:2], lines=True)
    _write_json(folder / "shards" / "1.json", rows[2:])
    info = _llamafactory(folder, [], parquet={**SHAREGPT_PAIRS, "file_name": "pairs.parquet"},
                         shards={**SHAREGPT_PAIRS, "file_name": "shards"})
    for name in ("parquet", "shards"):
        assert _content(_preferences(f"{info}#{name}")[0]) == EXPECTED, name
    (folder / "shards" / "2.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'shards'}: data files must be all .json or .jsonl, "
                                                  "or all .parquet (found .csv, .json, .jsonl)")):
        load_raw(f"{info}#shards")


@pytest.mark.parametrize("entry, name, expected", [
    (SHAREGPT_PAIRS, "nope", "{info}: defines no dataset 'nope'; it defines pairs, more"),
    (SHAREGPT_PAIRS, None, "{info}: defines 2 datasets (pairs, more); name one as {info}#<name>"),
    ({**SHAREGPT_PAIRS, "hf_hub_url": "llamafactory/RLHF-V"}, "more",
     "{info}#more: loads hf_hub_url 'llamafactory/RLHF-V'; only entries with a local file_name are read"),
    ({**SHAREGPT_PAIRS, "file_name": "gone.json"}, "more",
     "{info}#more: file_name 'gone.json' does not exist (looked for {folder}/gone.json)"),
    ({**SHAREGPT_PAIRS, "columns": {"messages": "conversations"}}, "more",
     "{info}#more: no columns.images; text-only data cannot train a vision-language model"),
    ({**SHAREGPT_PAIRS, "formatting": "alpacca"}, "more", "{info}#more: formatting 'alpacca' is not one of"),
    ({**SHAREGPT_PAIRS, "columns": {**SHAREGPT_PAIRS["columns"], "messages": "dialogue"}}, "more",
     "{folder}/pairs.json: lacks the column(s) ['dialogue'] that {info}#more names (found columns ['conversations',"),
])
def test_llamafactory_entry_problems_name_the_file(tmp_path, entry, name, expected):
    folder = tmp_path / "lf"
    info = _llamafactory(folder, [_sharegpt_row(0, "img/0.png")], pairs=SHAREGPT_PAIRS, more=entry)
    with pytest.raises(DataError) as err:
        load_raw(f"{info}#{name}" if name else str(info))
    assert str(err.value).startswith(expected.format(info=info, folder=folder)), str(err.value)


def test_a_broken_or_misnamed_dataset_info_is_named(tmp_path):
    folder = tmp_path / "lf"
    info = _llamafactory(folder, [])
    info.write_text("{not json")
    with pytest.raises(DataError, match=rf"^{re.escape(str(info))}: not a readable JSON file"):
        load_raw(str(folder))
    info.write_text(json.dumps({"citation": "", "features": {}}))  # what `datasets`' save_to_disk writes
    with pytest.raises(DataError, match="not a LLaMA-Factory dataset_info.json"):
        load_raw(str(info))
    with pytest.raises(DataError, match=re.escape(f"{folder / 'pairs.json'}#pairs: `#pairs` names a dataset of a "
                                                  f"LLaMA-Factory dataset_info.json, and {folder / 'pairs.json'} is "
                                                  "not one")):
        load_raw(f"{folder / 'pairs.json'}#pairs")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'gone/dataset_info.json'}: no such file or folder")):
        load_raw(f"{tmp_path / 'gone/dataset_info.json'}#pairs")


def test_split_dataset_name():
    assert split_dataset_name("data/lf/dataset_info.json#rlhf_v") == ("data/lf/dataset_info.json", "rlhf_v")
    assert split_dataset_name("data/lf#rlhf_v") == ("data/lf", "rlhf_v")
    for source in ("data/pairs.jsonl", "a#b/c", "#name", "data/lf#"):
        assert split_dataset_name(source) == (source, None)


# ---------------------------------------------------------------- JSON / JSONL with image files
def test_jsonl_pairs_with_image_paths_relative_to_the_file_or_an_image_folder(tmp_path):
    images = _image_files(tmp_path / "pictures")
    rows = [{"id": f"p{i}", "image": images[i], "image_folder": "pictures", "question": q, "chosen": c,
             "rejected": r} for i, (q, c, r) in enumerate(PAIRS)]
    rows[0] = {**rows[0], "image": f"pictures/{images[0]}", "image_folder": None}  # relative to the file
    path = _write_json(tmp_path / "pairs.jsonl", rows, lines=True)
    pairs, bad = _preferences(path)
    assert bad == {} and _content(pairs) == EXPECTED
    assert [row["uid"] for row in pairs] == ["p0", "p1", "p2"]
    # the same rows as a JSON list, and an SFT file of question/answer rows
    assert _content(_preferences(_write_json(tmp_path / "pairs.json", rows))[0]) == EXPECTED
    sft = [{"image": f"pictures/{images[i]}", "question": q, "answer": c} for i, (q, c, _) in enumerate(PAIRS)]
    sft_rows, _ = normalise_sft(load_raw(str(_write_json(tmp_path / "sft.json", sft))), "sft")
    assert [(row["question"], row["answer"]) for row in sft_rows] == [(q, c) for q, c, _ in PAIRS]


def test_llava_style_json_conversations_for_sft(tmp_path):
    images = _image_files(tmp_path)
    rows = [{"id": str(i), "image": images[i], "conversations": [
        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": c}]} for i, (q, c, _) in enumerate(PAIRS)]
    rows.append({"id": "3", "image": images[0], "conversations": [{"from": "human", "value": "<image>\nHi"}]})
    sft, bad = normalise_sft(load_raw(str(_write_json(tmp_path / "llava.json", rows))), "llava")
    assert [(row["question"], row["answer"]) for row in sft] == [(q, c) for q, c, _ in PAIRS]
    assert bad.reasons == {"field 'conversations' does not end with an assistant turn (the answer)": ["3"]}


def test_json_bad_rows(tmp_path):
    images = _image_files(tmp_path, 1)
    rows = [{"image": images[0], "question": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]
    rows[1]["image"] = "img/nope.png"
    rows[2]["chosen"] = 42
    path = _write_json(tmp_path / "pairs.jsonl", [*rows, ["a", "list"]], lines=True)
    pairs, reason_of = _preferences(path)
    assert [row["question"] for row in pairs] == [PAIRS[0][0]]
    assert reason_of == {"1": "field 'image' names a missing image file",
                         "2": "field 'chosen' has the wrong type (int, expected text)",
                         "3": "row is a list, not an object"}


@pytest.mark.parametrize("name, text, expected", [
    ("pairs.jsonl", '{"question": "q"}\n{"question": \n', "line 2 is not JSON"),
    ("pairs.json", '[{"question": "q"},\n', "not valid JSON: "),
    ("pairs.json", "  \n", "file is empty, no JSON rows"),
    ("pairs.json", "[]", "holds no rows"),
    ("pairs.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}',
     "TRL preference columns but no image column (images or image; found columns ['prompt', 'chosen', 'rejected'])"),
    ("pairs.jsonl", '{"picture": "a.png", "question": "q", "good": "a", "bad": "b"}',
     "columns match no known dataset schema: found columns ['picture', 'question', 'good', 'bad']; the TRL "
     "preference schema"),
])
def test_json_file_problems_name_the_file(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_raw(str(path))
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


# ---------------------------------------------------------------- stage 01
def test_prepare_data_reads_own_data_unchanged_downstream(tmp_path):
    """Stage 01 with LLaMA-Factory pairs (a folder) and a JSONL SFT file writes the usual normalised files."""
    from rlhfv_nb.data import read_parquet
    from rlhfv_nb.pipeline import prepare_data

    folder = tmp_path / "lf"
    images = _image_files(folder)
    _llamafactory(folder, [_sharegpt_row(i, images[i]) for i in range(len(PAIRS))])
    sft = _write_json(folder / "sft.jsonl", [{"image": images[i], "question": q, "answer": c}
                                             for i, (q, c, _) in enumerate(PAIRS)], lines=True)
    cfg = load_config(CPU_TINY, run_dir=str(tmp_path / "run"), data={"sft_source": str(sft),
                                                                      "preferences": str(folder)})
    report = prepare_data(cfg)
    assert report["sft_rows"] == 3 and [r["count"] for r in report["bad_rows"]] == [0, 0]
    pairs = read_parquet(cfg.layout.loaded_preferences)
    assert pairs["chosen"] == [c for _, c, _ in PAIRS] and pairs["uid"] == ["0", "1", "2"]
    assert pairs[0]["image"]["bytes"] == _png(0)
