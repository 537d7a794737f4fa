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
    without_rejected = ds.remove_columns("rejected")
    with pytest.raises(DataError, match=r"^rlaif: row 0 \(id 0\): field 'rejected' is missing"):
        normalise_preferences(without_rejected, "rlaif", on_bad_row="error")


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
