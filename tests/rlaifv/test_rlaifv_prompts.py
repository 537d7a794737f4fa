"""A dataset's prompts for the loop: distinct prompts (a preference dataset repeats them over its pairs), a seeded
order whose first n do not depend on how many are asked, bad rows, and files with no prompts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from rlhfv_nb.config import load_config
from rlhfv_nb.data import DataError, distinct_prompts, encode_image, load_raw, rlhfv_records, write_parquet
from rlhfv_nb.rlaifv.prompts import round_items
from tests.tiny_run import CPU_TINY


def _image(shade: int) -> bytes:
    return encode_image(Image.new("RGB", (8, 8), (shade, 60, 90)))


def _pairs(prompts: int, pairs_each: int) -> list[dict]:
    """RLAIF-V-Dataset-like rows: every prompt (image i, question i) in `pairs_each` pairs."""
    return [{"image": _image(10 * i), "question": f"What is in picture {i}?", "chosen": f"A ball {i} {k}.",
             "rejected": f"A dog {i} {k}.", "idx": 100 * i + k} for i in range(prompts) for k in range(pairs_each)]


def test_prompts_are_distinct_and_their_order_does_not_depend_on_the_count(tmp_path: Path) -> None:
    path = write_parquet(_pairs(6, 3), tmp_path / "pairs.parquet")
    ds = load_raw(str(path))
    four = distinct_prompts(ds, "pairs.parquet", 4, seed=7)
    six = distinct_prompts(ds, "pairs.parquet", 6, seed=7)
    assert [p["uid"] for p in six[:4]] == [p["uid"] for p in four]
    assert sorted(p["question"] for p in six) == sorted(f"What is in picture {i}?" for i in range(6))
    assert {p["image"] for p in six} == {_image(10 * i) for i in range(6)}
    assert [p["uid"] for p in distinct_prompts(ds, "pairs.parquet", 6, seed=8)] != [p["uid"] for p in six]
    with pytest.raises(DataError, match=r"pairs.parquet: 6 distinct prompts \(image and question\) in 18 rows "
                                        r"\(0 bad\), 7 needed"):
        distinct_prompts(ds, "pairs.parquet", 7, seed=7)


def test_rlhfv_schema_prompts_bad_rows_and_files_without_prompts(tmp_path: Path) -> None:
    records = rlhfv_records([{**row, "question": row["question"]} for row in _pairs(3, 1)], "x")
    records[1]["image"] = None
    ds = load_raw(str(write_parquet(records, tmp_path / "rlhfv.parquet")))
    prompts = distinct_prompts(ds, "rlhfv.parquet", 2, seed=0)  # the question read from `text`; row 1 left out
    assert sorted(p["question"] for p in prompts) == ["What is in picture 0?", "What is in picture 2?"]
    with pytest.raises(DataError, match=r"rlhfv.parquet: row 1 \(id 100\): field 'image' is missing"):
        distinct_prompts(ds, "rlhfv.parquet", 3, seed=0, on_bad_row="error")
    answers = load_raw(str(write_parquet([{"image": _image(1), "answer": "A ball."}], tmp_path / "sft.parquet")))
    with pytest.raises(DataError, match="sft.parquet: columns match no prompt dataset schema.*lacks 'question'"):
        distinct_prompts(answers, "sft.parquet", 1, seed=0)


def test_rounds_take_the_next_prompts(tmp_path: Path) -> None:
    path = write_parquet(_pairs(7, 2), tmp_path / "pairs.parquet")
    cfg = load_config(CPU_TINY, rlaifv={"prompts": str(path), "prompts_per_round": 3})
    first, second = round_items(cfg, 1), round_items(cfg, 2)
    assert len(first) == len(second) == 3
    assert not {i["question"] for i in first} & {i["question"] for i in second}
    assert all(item["id"].startswith("round2-") for item in second)
    with pytest.raises(DataError, match="7 distinct prompts .* 9 needed"):
        round_items(cfg, 3)
    smaller = dataclasses.replace(cfg, rlaifv=dataclasses.replace(cfg.rlaifv, prompts_per_round=2))
    assert [i["question"] for i in round_items(smaller, 1)] == [i["question"] for i in first[:2]]
