"""Preference data: both hub schemas normalise to the same rows; every kind of bad row is reported and
skipped, or stops the run with an error naming source, row and field; over-long pairs are left out."""

from __future__ import annotations

import json
import re

import datasets
import pytest
from PIL import Image
from tiny_run import CPU_TINY, SHAPE

from rlhfv_nb.config import load_config
from rlhfv_nb.data import (
    DataError,
    encode_image,
    load_raw,
    normalise_preferences,
    read_parquet,
    rlhfv_records,
    write_parquet,
)
from rlhfv_nb.layout import RunLayout

ORIGIN = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")


def _items(n: int) -> list[dict]:
    return [
        {
            "image": encode_image(Image.new("RGB", (8, 8), (30 * i % 256, 100, 200))),
            "question": f"What is in picture {i}?",
            "chosen": f"A red ball number {i}.",
            "rejected": f"A blue ball and a dog number {i}.",
        }
        for i in range(n)
    ]


def _break(record: dict, kind: str) -> dict:
    """An RLHF-V-schema record made bad in one way."""
    record = dict(record)
    text = json.loads(record["text"])
    if kind == "missing image":
        record["image"] = None
    elif kind == "undecodable image":
        record["image"] = {"bytes": b"\x89PNG but not really an image", "path": None}
    elif kind == "text not JSON":
        record["text"] = "{question: 'unquoted'"
    elif kind == "text not JSON (other error)":
        record["text"] = '["a", "b"'
    elif kind == "text lacks a key":
        del text["rejected"]
        record["text"] = json.dumps(text)
    elif kind == "empty chosen":
        record["text"] = json.dumps({**text, "chosen": ""})
    elif kind == "empty rejected":
        record["text"] = json.dumps({**text, "rejected": "  \n"})
    elif kind == "chosen identical to rejected":
        record["text"] = json.dumps({**text, "chosen": "A cat.", "rejected": " A cat. "})
    else:
        raise AssertionError(kind)
    return record


# bad kind -> the field its error must name
BAD_KINDS = {
    "missing image": "image",
    "undecodable image": "image",
    "text not JSON": "text",
    "text not JSON (other error)": "text",
    "text lacks a key": "rejected",
    "empty chosen": "chosen",
    "empty rejected": "rejected",
    "chosen identical to rejected": "chosen",
}


@pytest.fixture()
def rlhfv_file(tmp_path):
    """Two good rows (idx 0 and 9) around one row of every bad kind (idx 1..8), in the RLHF-V schema."""
    records = rlhfv_records(_items(len(BAD_KINDS) + 2), "test-ds")
    for index, kind in enumerate(BAD_KINDS, start=1):
        records[index] = _break(records[index], kind)
    return write_parquet(records, tmp_path / "rlhfv.parquet")


def test_bad_rows_are_reported_and_skipped(rlhfv_file):
    rows, bad = normalise_preferences(load_raw(str(rlhfv_file)), str(rlhfv_file), on_bad_row="skip")
    assert [r["uid"] for r in rows] == ["0", "9"]
    assert bad.source == str(rlhfv_file)
    assert bad.count == len(BAD_KINDS) == 8
    reason_of = {row_id: reason for reason, ids in bad.reasons.items() for row_id in ids}
    assert sorted(reason_of, key=int) == [str(i) for i in range(1, 9)]
    for row_id, (kind, field) in zip(map(str, range(1, 9)), BAD_KINDS.items()):
        assert f"'{field}'" in reason_of[row_id], (kind, reason_of[row_id])
    # reasons are grouping keys: two different JSON parse errors share one reason without the parser detail
    assert reason_of["3"] == reason_of["4"] and "line 1" not in reason_of["3"]
    assert "missing" in reason_of["1"] and "decod" in reason_of["2"] and "JSON" in reason_of["3"]
    assert "missing" in reason_of["5"] and "empty" in reason_of["6"] and "empty" in reason_of["7"]
    assert "identical" in reason_of["8"]
    summary = bad.summary()
    assert f"{rlhfv_file}: 8 row(s) skipped" in summary and "(3, 4)" in summary
    assert bad.to_dict()["count"] == 8


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_bad_row_raises_naming_file_row_and_field(tmp_path, kind):
    good, broken = rlhfv_records(_items(2), "test-ds")
    path = write_parquet([good, _break(broken, kind)], tmp_path / "pairs.parquet")
    with pytest.raises(DataError) as err:
        normalise_preferences(load_raw(str(path)), str(path), on_bad_row="error")
    message = str(err.value)
    assert message.startswith(f"{path}: row 1 (id 1): "), message
    assert f"'{BAD_KINDS[kind]}'" in message, message


def _rlaif_rows(items: list[dict]) -> list[dict]:
    """RLAIF-V-Dataset layout: question/chosen/rejected as plain columns, same origin columns."""
    return [{"ds_name": "test-ds", "image": item["image"], "question": item["question"], "chosen": item["chosen"],
             "rejected": item["rejected"], "origin_dataset": "test-ds", "origin_split": "train", "idx": index,
             "image_path": f"test-ds/{index}.png"} for index, item in enumerate(items)]


def test_both_schemas_normalise_to_the_same_rows(tmp_path):
    items = _items(4)
    rlhfv = write_parquet(rlhfv_records(items, "test-ds"), tmp_path / "rlhfv.parquet")
    rlaif = write_parquet(_rlaif_rows(items), tmp_path / "rlaif.parquet")
    rows_a, bad_a = normalise_preferences(load_raw(str(rlhfv)), "rlhfv")
    rows_b, bad_b = normalise_preferences(load_raw(str(rlaif)), "rlaif")
    assert bad_a.count == bad_b.count == 0
    assert rows_a == rows_b
    assert [r["uid"] for r in rows_a] == ["0", "1", "2", "3"]
    assert rows_a[2]["image"] == items[2]["image"] and rows_a[2]["chosen"] == items[2]["chosen"]
    assert set(json.loads(rows_a[0]["source"])) == set(ORIGIN)
    # an in-memory Dataset with raw image bytes reads the same as the parquet file
    rows_c, _ = normalise_preferences(datasets.Dataset.from_list(_rlaif_rows(items)), "memory")
    assert rows_c == rows_a


def test_plain_columns_bad_rows(tmp_path):
    rows = _rlaif_rows(_items(3))
    rows[1]["chosen"] = ""
    rows[2]["rejected"] = rows[2]["chosen"]
    ds = datasets.Dataset.from_list(rows)
    good, bad = normalise_preferences(ds, "rlaif")
    assert [r["uid"] for r in good] == ["0"]
    assert {row_id: reason for reason, ids in bad.reasons.items() for row_id in ids} == {
        "1": "field 'chosen' is empty", "2": "field 'chosen' is identical to 'rejected'"}
    # a column missing from every row is a schema error, checked up front, not one "field missing" per row
    without_rejected = ds.remove_columns("rejected")
    for on_bad_row in ("skip", "error"):
        with pytest.raises(DataError, match=r"^rlaif: columns match no preference dataset schema: .*lacks 'rejected'"):
            normalise_preferences(without_rejected, "rlaif", on_bad_row=on_bad_row)


def test_load_raw_reads_a_folder_of_parquet_files(tmp_path):
    items = _items(5)
    write_parquet(rlhfv_records(items[:2], "a"), tmp_path / "pairs" / "part-0.parquet")
    write_parquet(rlhfv_records(items[2:], "b"), tmp_path / "pairs" / "part-1.parquet")
    ds = load_raw(str(tmp_path / "pairs"))
    assert len(ds) == 5 and set(ds["ds_name"]) == {"a", "b"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder holds no .parquet files"):
        load_raw(str(tmp_path / "empty"))


# ---------------------------------------------------------------- pipeline.tokenise_pairs and max_length
@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from rlhfv_nb.modeling import build_tiny_model, load_processor

    corpus = [f"USER: <image>\n{i['question']} ASSISTANT: {i['chosen']} {i['rejected']}</s>" for i in _items(6)]
    path = build_tiny_model(corpus * 3, SHAPE, tmp_path_factory.mktemp("tok") / "base", seed=0)
    return load_processor(path, load_config(CPU_TINY).model)


def _write_preferences(run_dir, long_index: int) -> list[dict]:
    items = _items(4)
    items[long_index]["chosen"] = " ".join(["a red ball"] * 30)
    rows, _ = normalise_preferences(datasets.Dataset.from_list(_rlaif_rows(items)), "test")
    write_parquet(rows, RunLayout(run_dir).feedback_preferences)  # cpu-tiny trains on collected pairs
    return rows


def test_tokenise_pairs_skips_pairs_longer_than_max_length(tmp_path, processor):
    from rlhfv_nb.features import prompt_length, response_ids
    from rlhfv_nb.pipeline import tokenise_pairs

    rows = _write_preferences(tmp_path, long_index=2)
    lengths = [prompt_length(processor, r["question"], r["image"])
               + max(len(response_ids(processor, r["question"], r[k])) for k in ("chosen", "rejected")) for r in rows]
    limit = max(lengths[i] for i in (0, 1, 3))  # the longest short pair fits exactly
    assert lengths[2] > limit
    cfg = load_config(CPU_TINY, run_dir=str(tmp_path), data={"max_length": limit})
    pairs, bad = tokenise_pairs(cfg, processor)
    assert [p["uid"] for p in pairs] == ["0", "1", "3"]
    assert bad.count == 1 and bad.reasons == {f"longer than data.max_length ({limit})": ["2"]}
    assert pairs[0]["chosen_ids"] == response_ids(processor, rows[0]["question"], rows[0]["chosen"])
    assert pairs[0]["image"] == rows[0]["image"]

    cfg = load_config(CPU_TINY, run_dir=str(tmp_path), data={"max_length": limit, "on_bad_row": "error"})
    with pytest.raises(DataError, match=re.escape(f"preferences.parquet: row 2 (id 2): {lengths[2]} tokens exceed")):
        tokenise_pairs(cfg, processor)


def test_written_preferences_read_back_unchanged(tmp_path):
    rows, _ = normalise_preferences(datasets.Dataset.from_list(_rlaif_rows(_items(3))), "test")
    ds = read_parquet(write_parquet(rows, tmp_path / "p.parquet"))
    assert [r["image"]["bytes"] for r in ds] == [r["image"] for r in rows]
    assert ds["chosen"] == [r["chosen"] for r in rows] and ds["uid"] == ["0", "1", "2"]


# ---------------------------------------------------------------- whole-file problems (issue 13.7)
def test_a_file_with_no_valid_rows_is_an_error_naming_file_and_reasons(tmp_path):
    rows = _rlaif_rows(_items(3))
    rows[0]["chosen"] = ""
    rows[1]["chosen"] = "  "
    rows[2]["rejected"] = rows[2]["chosen"]
    path = write_parquet(rows, tmp_path / "all-bad.parquet")
    with pytest.raises(DataError) as err:
        normalise_preferences(load_raw(str(path)), str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: no valid rows: all 3 rows are bad"), message
    assert "field 'chosen' is empty: 2 (0, 1)" in message and "identical to 'rejected': 1 (2)" in message


def test_prepare_data_stops_on_a_file_with_no_valid_rows_before_writing(tmp_path):
    from rlhfv_nb.pipeline import prepare_data

    sft = write_parquet([{"image": i["image"], "question": i["question"], "answer": i["chosen"]} for i in _items(2)],
                        tmp_path / "sft.parquet")
    rows = _rlaif_rows(_items(2))
    for row in rows:
        row["chosen"] = ""
    pairs = write_parquet(rows, tmp_path / "pairs.parquet")
    cfg = load_config(CPU_TINY, run_dir=str(tmp_path / "run"), data={"sft_source": str(sft), "preferences": str(pairs)})
    with pytest.raises(DataError, match=re.escape(f"{pairs}: no valid rows")):
        prepare_data(cfg)
    assert not cfg.layout.loaded_preferences.exists()  # no column-less parquet for a later stage to trip on


def test_write_parquet_refuses_no_rows(tmp_path):
    with pytest.raises(DataError, match="no rows to write"):
        write_parquet([], tmp_path / "empty.parquet")
    assert not (tmp_path / "empty.parquet").exists()


@pytest.mark.parametrize("columns, lacking", [
    ({"image": "image", "chosen": "chosen", "rejected": "rejected"}, "'question'"),  # no question column
    ({"image": "image", "question": "prompt", "chosen": "good", "rejected": "bad"}, "'question', 'chosen', 'rejected'"),
    ({"image": "picture", "question": "question", "chosen": "chosen", "rejected": "rejected"}, "'image'"),
])
def test_wrong_schema_is_one_message_naming_missing_and_found_columns(tmp_path, columns, lacking):
    items = _items(3)
    path = write_parquet([{new: item[old] for old, new in columns.items()} for item in items],
                         tmp_path / "renamed.parquet", image_column=False)
    for on_bad_row in ("skip", "error"):
        with pytest.raises(DataError) as err:
            normalise_preferences(load_raw(str(path)), str(path), on_bad_row=on_bad_row)
        message = str(err.value)
        assert message.startswith(f"{path}: columns match no preference dataset schema"), message
        assert f"found columns {sorted(columns.values(), key=list(columns.values()).index)}" in message
        assert "RLHF-V-Dataset schema (`image` + `text`, a JSON object with question/chosen/rejected)" in message
        assert f"flat schema (`image`, `question`, `chosen`, `rejected` columns, as RLAIF-V-Dataset) lacks {lacking}" \
            in message, message
        assert "row" not in message


def test_sft_schema_is_checked_up_front(tmp_path):
    from rlhfv_nb.data import normalise_sft

    ds = datasets.Dataset.from_list([{"image": i["image"], "prompt": i["question"], "reply": i["chosen"]}
                                     for i in _items(2)])
    with pytest.raises(DataError) as err:
        normalise_sft(ds, "sft.parquet")
    message = str(err.value)
    assert message.startswith("sft.parquet: columns match no SFT dataset schema: found columns "
                              "['image', 'prompt', 'reply']"), message
    assert "the SFT schema (`image`, `question`, `answer` columns) lacks 'question', 'answer'" in message
    assert "RLHF-V-Dataset schema" in message and "flat schema" in message
    # the three accepted SFT layouts load
    good = datasets.Dataset.from_list([{"image": i["image"], "question": i["question"], "answer": i["chosen"]}
                                       for i in _items(2)])
    assert [r["answer"] for r in normalise_sft(good, "sft")[0]] == [i["chosen"] for i in _items(2)]
    assert len(normalise_sft(datasets.Dataset.from_list(_rlaif_rows(_items(2))), "flat")[0]) == 2
    assert len(normalise_sft(datasets.Dataset.from_list(rlhfv_records(_items(2), "x")), "rlhfv")[0]) == 2


def _good_parquet_bytes(tmp_path) -> bytes:
    return write_parquet(rlhfv_records(_items(2), "x"), tmp_path / "good.parquet").read_bytes()


@pytest.mark.parametrize("name, content, expected", [
    ("empty.parquet", b"", "file is empty (0 bytes), not a parquet file"),
    ("pairs.parquet", b'[{"question": "q", "chosen": "a", "rejected": "b"}]', "not a parquet file (it looks like JSON"),
    ("pairs.json", b'{"question": "q"}\n', "columns match no known dataset schema: found columns ['question']"),
    ("notes.parquet", b"just some text\n", "not a parquet file (it starts with b'just some text"),
    ("lfs.parquet", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n",
     "not a parquet file (it is a Git LFS pointer"),
    ("page.parquet", b"<!DOCTYPE html><html>Sign in</html>", "not a parquet file (it looks like HTML"),
    ("truncated.parquet", "good[:half]", "truncated parquet file"),
    ("corrupt.parquet", b"PAR1" + b"\x00" * 100 + b"PAR1", "unreadable parquet file"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, content, expected):
    if content == "good[:half]":
        good = _good_parquet_bytes(tmp_path)
        content = good[: len(good) // 2]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_raw(str(path))
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


def test_a_parquet_without_rows_or_columns_is_named(tmp_path):
    datasets.Dataset.from_list([]).to_parquet(str(tmp_path / "no-columns.parquet"))  # what stage 01 used to write
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'no-columns.parquet'}: parquet file has no columns")):
        load_raw(str(tmp_path / "no-columns.parquet"))
    datasets.Dataset.from_list(_rlaif_rows(_items(1))).select([]).to_parquet(str(tmp_path / "no-rows.parquet"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'no-rows.parquet'}: holds no rows")):
        load_raw(str(tmp_path / "no-rows.parquet"))
    # normalising an in-memory dataset without rows says so too
    with pytest.raises(DataError, match="^memory: holds no rows"):
        normalise_preferences(datasets.Dataset.from_list(_rlaif_rows(_items(1))).select([]), "memory")


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = write_parquet(rlhfv_records(_items(1), "x"), tmp_path / "locked.parquet")
    real_open = type(path).open

    def refuse(self, *args, **kwargs):
        if self.name == "locked.parquet":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot be read (Permission denied)")):
        load_raw(str(path))


def test_a_folder_of_mismatched_or_broken_files_names_the_file(tmp_path):
    folder = tmp_path / "shards"
    write_parquet(rlhfv_records(_items(2), "a"), folder / "part-0.parquet")
    write_parquet(_rlaif_rows(_items(2)), folder / "part-1.parquet")
    with pytest.raises(DataError) as err:
        load_raw(str(folder))
    message = str(err.value)
    assert message.startswith(f"{folder}: files have different columns"), message
    assert str(folder / "part-0.parquet") in message and str(folder / "part-1.parquet") in message
    (folder / "part-1.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'part-1.parquet'}: file is empty")):
        load_raw(str(folder))


# ---------------------------------------------------------------- a mistyped path is not a hub id
@pytest.fixture()
def no_hub(monkeypatch):
    """datasets.load_dataset that records hub calls instead of going to the network (local parquet still loads)."""
    calls = []
    real = datasets.load_dataset

    def fake(path, *args, **kwargs):
        if path == "parquet":
            return real(path, *args, **kwargs)
        calls.append(path)
        return datasets.Dataset.from_list(_rlaif_rows(_items(2)))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


@pytest.mark.parametrize("source", [
    "data/pairs",            # the folder `data` exists: a mistyped file in it
    "data/pairs/train",      # more than one '/': never a hub id
    "./pairs", "../pairs", "~/no-such-rlhfv-pairs", "/no/such/pairs",
    "pairs.parquet", "pairs.jsonl", "owner/pairs.parquet",
    "data\\pairs", ".hidden", "my pairs",
])
def test_a_missing_path_is_an_error_not_a_hub_lookup(tmp_path, monkeypatch, no_hub, source):
    from rlhfv_nb.config import looks_like_local_path as looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert looks_like_path(source)
    with pytest.raises(DataError, match=rf"^{re.escape(source)}: no such file or folder"):
        load_raw(source)
    assert no_hub == []


def test_a_missing_path_suggests_close_names(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    write_parquet(rlhfv_records(_items(1), "x"), tmp_path / "data" / "pairs.parquet")
    with pytest.raises(DataError, match=re.escape("data holds pairs.parquet")):
        load_raw("data/pairs")  # the suffix forgotten


@pytest.mark.parametrize("source", ["openbmb/RLHF-V-Dataset", "openbmb/RLAIF-V-Dataset", "owner/dclm-baseline-1.0",
                                    "squad"])
def test_a_hub_id_goes_to_the_hub(tmp_path, monkeypatch, no_hub, source):
    from rlhfv_nb.config import looks_like_local_path as looks_like_path

    monkeypatch.chdir(tmp_path)
    assert not looks_like_path(source)
    assert len(load_raw(source)) == 2 and no_hub == [source]


def test_a_hub_failure_names_the_source(tmp_path, monkeypatch):
    def offline(path, *args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"^owner/name: not a local file or folder .* hub dataset .*failed: "
                                        r"ConnectionError: Couldn't reach the hub"):
        load_raw("owner/name")


def test_a_relative_path_is_also_looked_for_under_the_project_root(tmp_path, monkeypatch):
    """Config validation resolves relative paths against the project root; notebooks run in `notebooks/`."""
    write_parquet(rlhfv_records(_items(2), "x"), tmp_path / "data" / "pairs.parquet")
    for folder in ("notebooks", "params"):  # what makes tmp_path a project root
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert len(load_raw("data/pairs.parquet")) == 2


# ---------------------------------------------------------------- row checks: wrong types, image size
def test_a_field_of_the_wrong_type_says_so(tmp_path):
    records = rlhfv_records(_items(4), "x")
    text = json.loads(records[1]["text"])
    records[1]["text"] = json.dumps({**text, "chosen": 123})
    records[2]["text"] = json.dumps({**text, "question": ["a", "list"]})
    records[3]["text"] = json.dumps({**text, "rejected": None})
    path = write_parquet(records, tmp_path / "types.parquet")
    rows, bad = normalise_preferences(load_raw(str(path)), str(path))
    assert [r["uid"] for r in rows] == ["0"]
    assert bad.reasons == {"field 'chosen' has the wrong type (int, expected text)": ["1"],
                           "field 'question' has the wrong type (list, expected text)": ["2"],
                           "field 'rejected' is missing (null)": ["3"]}
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1 (id 1): field 'chosen' has the wrong type (int, "
                                                  "expected text)")):
        normalise_preferences(load_raw(str(path)), str(path), on_bad_row="error")


def test_images_over_max_image_pixels_are_bad_rows_checked_from_the_header(tmp_path, monkeypatch):
    from PIL import ImageFile

    items = _items(3)
    huge = Image.new("1", (10000, 10000))  # 100 M pixels, a 12 kB PNG
    items[1]["image"] = encode_image(huge)
    path = write_parquet(rlhfv_records(items, "x"), tmp_path / "big.parquet")

    real_load = ImageFile.ImageFile.load

    def load(self):
        assert self.size != (10000, 10000), "the over-size image's pixels were decoded"
        return real_load(self)

    # only the header is read for the over-size image: decoding its pixels would fail this test
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    rows, bad = normalise_preferences(load_raw(str(path)), str(path))  # the default cap, data.max_image_pixels
    assert [r["uid"] for r in rows] == ["0", "2"]
    assert bad.reasons == {"field 'image' is larger than data.max_image_pixels (25,000,000 pixels)": ["1"]}
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1 (id 1): field 'image' is larger than "
                                                  "data.max_image_pixels (25,000,000 pixels): 10000x10000 = "
                                                  "100,000,000 pixels")):
        normalise_preferences(load_raw(str(path)), str(path), on_bad_row="error")
    monkeypatch.undo()
    # over twice PIL's own limit PIL refuses the header itself: the same reason
    items[1]["image"] = encode_image(Image.new("1", (15000, 15000)))
    bomb = write_parquet(rlhfv_records(items, "x"), tmp_path / "bomb.parquet")
    assert normalise_preferences(load_raw(str(bomb)), "x")[1].reasons == {
        "field 'image' is larger than data.max_image_pixels (25,000,000 pixels)": ["1"]}
    # the cap comes from the caller (pipeline: cfg.data.max_image_pixels); 8x8 images pass 64 and fail 63
    assert len(normalise_preferences(load_raw(str(path)), "x", max_image_pixels=64)[0]) == 2
    with pytest.raises(DataError, match=r"(?s)no valid rows.*larger than data.max_image_pixels \(63 pixels\): 3"):
        normalise_preferences(load_raw(str(path)), "x", max_image_pixels=63)


# ---------------------------------------------------------------- unique uids (issue 13.2)
def _shards(folder, items: list[dict]) -> None:
    """Two shards that each number `idx` from 0, as sharded exports do."""
    write_parquet(rlhfv_records(items[:3], "a"), folder / "part-0.parquet")
    write_parquet(rlhfv_records(items[3:], "b"), folder / "part-1.parquet")


def test_ids_shared_by_different_pairs_get_unique_stable_uids(tmp_path):
    items = _items(5)
    _shards(tmp_path / "pairs", items)
    rows, bad = normalise_preferences(load_raw(str(tmp_path / "pairs")), "pairs")
    uids = [r["uid"] for r in rows]
    assert len(set(uids)) == 5  # idx 0 and 1 are in both shards
    assert uids[2] == "2"  # an id used once is kept as it is
    assert all(re.fullmatch(r"[01]#[0-9a-f]{12}", uid) for uid in uids[:2] + uids[3:]), uids
    assert bad.reused_ids == {"0": 2, "1": 2} and bad.count == 0
    assert "2 id(s) shared by different pairs" in bad.summary() and bad.to_dict()["reused_ids"] == {"0": 2, "1": 2}
    # each uid names one pair's content: a uid's reference log-probs can only be that pair's
    by_uid = {r["uid"]: (r["image"], r["question"], r["chosen"], r["rejected"]) for r in rows}
    assert len(set(by_uid.values())) == 5
    # the same data gives the same uids on every run and whatever the order of the files (the cache stays valid)
    again, _ = normalise_preferences(load_raw(str(tmp_path / "pairs")), "pairs")
    assert [r["uid"] for r in again] == uids
    write_parquet(rlhfv_records(items[:3], "a"), tmp_path / "swapped" / "part-1.parquet")
    write_parquet(rlhfv_records(items[3:], "b"), tmp_path / "swapped" / "part-0.parquet")
    swapped, _ = normalise_preferences(load_raw(str(tmp_path / "swapped")), "swapped")
    assert {r["uid"]: r["chosen"] for r in swapped} == {r["uid"]: r["chosen"] for r in rows}


def test_identical_pairs_share_a_uid_and_unique_ids_are_unchanged(tmp_path):
    items = _items(3)
    records = rlhfv_records(items, "x") + rlhfv_records(items[:1], "x")  # row 3 repeats row 0 exactly (idx 0)
    rows, bad = normalise_preferences(datasets.Dataset.from_list(records), "dupes")
    assert [r["uid"] for r in rows] == ["0", "1", "2", "0"] and bad.reused_ids == {}
    # an id carried by the `uid` column is checked the same way
    pairs = [{"uid": "p", **item} for item in items[:2]]
    rows, bad = normalise_preferences(datasets.Dataset.from_list(pairs), "uids")
    assert rows[0]["uid"] != rows[1]["uid"] and all(r["uid"].startswith("p#") for r in rows)
