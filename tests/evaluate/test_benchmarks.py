"""Data helpers against a local HTTP server on 127.0.0.1 (no real network)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURES

from rlhfv_nb.evaluate import benchmarks
from rlhfv_nb.evaluate.chair import evaluate_chair


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _no_partials(folder: Path) -> bool:
    return not any(p.name.endswith((".part", ".tmp")) for p in folder.rglob("*"))


def test_download_is_atomic_and_cached(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    (root / "a.txt").write_text("hello")
    dest = benchmarks.download(f"{url}/a.txt", tmp_path / "cache" / "a.txt")
    assert dest.read_text() == "hello"
    (root / "a.txt").write_text("changed")
    assert benchmarks.download(f"{url}/a.txt", dest).read_text() == "hello"  # not fetched again
    with pytest.raises(OSError):
        benchmarks.download(f"{url}/missing.txt", tmp_path / "cache" / "missing.txt")
    assert not (tmp_path / "cache" / "missing.txt").exists() and _no_partials(tmp_path / "cache")


def test_object_halbench_rows_verified(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    rows = [{"image_id": i, "question": "Describe the image.", "image": "aGk="} for i in range(300)]
    _jsonl(root / "full.jsonl", rows)
    assert len(benchmarks.fetch_object_halbench(tmp_path, url=f"{url}/full.jsonl")) == 300
    _jsonl(root / "short.jsonl", rows[:299])
    with pytest.raises(ValueError, match=r"short\.jsonl: expected 300 rows, found 299"):
        benchmarks.fetch_object_halbench(tmp_path, url=f"{url}/short.jsonl")
    _jsonl(root / "bad.jsonl", rows[:5] + [{"image_id": 5, "image": "aGk="}] + rows[6:])
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 6: missing field 'question'"):
        benchmarks.fetch_object_halbench(tmp_path, url=f"{url}/bad.jsonl")


def test_coco_annotations_from_zip(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    with zipfile.ZipFile(root / "annotations_trainval2014.zip", "w") as zf:
        for name in benchmarks.COCO_FILES:
            zf.write(FIXTURES / "coco" / "annotations" / name, f"annotations/{name}")
        zf.writestr("annotations/instances_train2014.json", "{}")
    coco_dir = benchmarks.fetch_coco_annotations(tmp_path, url=f"{url}/annotations_trainval2014.zip")
    assert sorted(p.name for p in (coco_dir / "annotations").iterdir()) == sorted(benchmarks.COCO_FILES)
    assert evaluate_chair({1: "A dog and a car."}, coco_dir).summary["CHAIRi"] == pytest.approx(0.5)
    assert _no_partials(tmp_path)


def llava_repository(root: Path) -> None:
    """LLaVA-Bench (COCO) files where the haotian-liu/LLaVA repository keeps them."""
    qa = root / "playground" / "data" / "coco2014_val_qa_eval"
    table = root / "llava" / "eval" / "table"
    for folder in (qa, table):
        folder.mkdir(parents=True)
    _jsonl(qa / "qa90_questions.jsonl",
           [{"question_id": i, "image": "x.jpg", "text": "Q?", "category": "conv"} for i in range(90)])
    _jsonl(qa / "qa90_gpt4_answer.jsonl", [{"question_id": i, "text": "A."} for i in range(90)])
    _jsonl(table / "caps_boxes_coco2014_val_80.jsonl",
           [{"image": f"{i}.jpg", "captions": [], "instances": []} for i in range(80)])


def test_llava_bench_files_at_their_upstream_paths(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    assert benchmarks.LLAVA_BENCH_URL == "https://raw.githubusercontent.com/haotian-liu/LLaVA/main/"
    assert benchmarks.LLAVA_BENCH_FILES["contexts"][0] == "llava/eval/table/caps_boxes_coco2014_val_80.jsonl"
    llava_repository(root)
    data = benchmarks.fetch_llava_bench(tmp_path, base_url=url)
    assert {k: len(v) for k, v in data.items()} == {"questions": 90, "references": 90, "contexts": 80}
    # the contexts file at the path the old code asked for does not exist upstream: a clear error, no file left
    (root / "llava" / "eval" / "table" / "caps_boxes_coco2014_val_80.jsonl").unlink()
    with pytest.raises(ConnectionError, match="caps_boxes_coco2014_val_80.jsonl"):
        benchmarks.fetch_llava_bench(tmp_path / "other", base_url=url)
    assert _no_partials(tmp_path)


def pope_repository(root: Path) -> Path:
    """RUCAIBox/POPE's released COCO files (the real ones, kept gzipped in the fixtures) at `output/coco/`."""
    folder = root / "output" / "coco"
    folder.mkdir(parents=True)
    for split in ("random", "popular", "adversarial"):
        name = f"coco_pope_{split}.json"
        (folder / name).write_bytes(gzip.decompress((FIXTURES / "pope" / f"{name}.gz").read_bytes()))
    return folder


def test_official_pope_files_are_fetched_and_verified(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    folder = pope_repository(root)
    splits = benchmarks.fetch_pope(tmp_path, base_url=f"{url}/output/coco/")
    assert {split: len(rows) for split, rows in splits.items()} == {"random": 3000, "popular": 3000,
                                                                    "adversarial": 3000}
    assert splits["random"][0] == {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
                                   "text": "Is there a snowboard in the image?", "label": "yes"}
    assert len({r["image"] for r in splits["adversarial"]}) == 500
    # a mirror serving an altered file: the checksum refuses it and the cached copy is removed
    altered = folder / "coco_pope_popular.json"
    altered.write_text(altered.read_text().replace('"label": "no"', '"label": "yes"', 1))
    with pytest.raises(benchmarks.BenchmarkDataError, match="coco_pope_popular.json: SHA-256 .* is not the released"):
        benchmarks.fetch_pope(tmp_path / "other", base_url=f"{url}/output/coco/")
    assert not (tmp_path / "other" / "pope" / "coco_pope_popular.json").exists()


def test_mmhal_template_checked(tmp_path: Path) -> None:
    item = json.loads((FIXTURES / "mmhal_template.json").read_text())[0]
    path = tmp_path / "response_template.json"
    path.write_text(json.dumps([item] * 96))
    assert len(benchmarks.load_mmhal_template(path)) == 96
    path.write_text(json.dumps([item] * 95))
    with pytest.raises(ValueError, match="expected 96 rows, found 95"):
        benchmarks.load_mmhal_template(path)
    broken = {k: v for k, v in item.items() if k != "gt_answer"}
    path.write_text(json.dumps([item] * 10 + [broken] + [item] * 85))
    with pytest.raises(ValueError, match="item 10: missing field 'gt_answer'"):
        benchmarks.load_mmhal_template(path)


def test_coco_image_url() -> None:
    assert benchmarks.coco_image_url("000000296284") == (
        "http://images.cocodataset.org/val2014/COCO_val2014_000000296284.jpg")


def test_coco_image_downloaded_once_into_val2014(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = file_server
    (root / "COCO_val2014_000000000042.jpg").write_bytes(b"jpeg")
    template = url + "/COCO_val2014_{image_id:012d}.jpg"
    path = benchmarks.coco_image("42", tmp_path / "coco", template)
    assert path == tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg" and path.read_bytes() == b"jpeg"
    (root / "COCO_val2014_000000000042.jpg").unlink()
    assert benchmarks.coco_image(42, tmp_path / "coco", template).read_bytes() == b"jpeg"  # cached
    with pytest.raises(ConnectionError, match="could not download .*000000000043.jpg"):
        benchmarks.coco_image(43, tmp_path / "coco", template)


def test_mmhal_from_hub(hub_server: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    endpoint, files = hub_server
    item = json.loads((FIXTURES / "mmhal_template.json").read_text())[0]
    files["response_template.json"] = json.dumps([item] * 96).encode()
    files["images/a1_o.jpg"] = b"\xff\xd8 not really a jpeg"
    items = benchmarks.fetch_mmhal_bench(tmp_path, endpoint=endpoint)
    assert len(items) == 96
    image = benchmarks.fetch_mmhal_image(items[0], tmp_path, endpoint=endpoint)
    assert image.read_bytes() == files["images/a1_o.jpg"]
