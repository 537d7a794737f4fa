"""Locate and download the real benchmark data into a cache folder (atomic writes, row counts checked)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

from rlhfv_nb.files import cache_root as default_cache_dir

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
COCO_VAL2014_IMAGE_URL = "http://images.cocodataset.org/val2014/COCO_val2014_{image_id:012d}.jpg"
COCO_FILES = ("instances_val2014.json", "captions_val2014.json")
OBJECT_HALBENCH_URL = (
    "https://raw.githubusercontent.com/RLHF-V/RLHF-V/main/eval/data/obj_halbench_300_with_image.jsonl"
)
OBJECT_HALBENCH_ROWS = 300
MMHAL_REPO_ID = "Shengcao1006/MMHal-Bench"
MMHAL_TEMPLATE = "response_template.json"
MMHAL_ROWS = 96
MMHAL_FIELDS = ("question_type", "question_topic", "image_id", "image_src", "image_content", "question",
                "gt_answer")
# the LLaVA repository; LLaVA-Bench (COCO) files at their paths in it
LLAVA_BENCH_URL = "https://raw.githubusercontent.com/haotian-liu/LLaVA/main/"
# name -> (path in the repository, rows, required fields)
LLAVA_BENCH_FILES = {
    "questions": ("playground/data/coco2014_val_qa_eval/qa90_questions.jsonl", 90,
                  ("question_id", "image", "text", "category")),
    "references": ("playground/data/coco2014_val_qa_eval/qa90_gpt4_answer.jsonl", 90, ("question_id", "text")),
    "contexts": ("llava/eval/table/caps_boxes_coco2014_val_80.jsonl", 80, ("image", "captions", "instances")),
}
# RUCAIBox/POPE's released COCO question files, behind every published POPE number
POPE_URL = "https://raw.githubusercontent.com/RUCAIBox/POPE/main/output/coco/"
POPE_ROWS = 3000
POPE_FIELDS = ("question_id", "image", "text", "label")
# split -> SHA-256 of the file at RUCAIBox/POPE commit 3df3ba1
POPE_SHA256 = {
    "random": "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994",
    "popular": "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753",
    "adversarial": "420b3407db1fa9f1187a805dca41cb7b97fd91504e6c2179706188c107fb8ef8",
}


class BenchmarkDataError(ValueError):
    """A benchmark file is not what the benchmark needs (wrong rows, fields, checksum): names the file."""


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def download(url: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` unless it exists; the file only appears once complete."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, dest)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise ConnectionError(f"could not download {url} to {dest} (offline?): {err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def read_jsonl(path: str | Path, expected_rows: int | None = None, fields: Iterable[str] = ()) -> list[dict]:
    """Rows of a JSON-lines file; errors name the file, row (1-based line) and field."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkDataError(f"{path}: row {lineno}: not valid JSON ({err})") from err
        check_fields(row, fields, f"{path}: row {lineno}")
        rows.append(row)
    check_rows(rows, expected_rows, path)
    return rows


def check_fields(row: object, fields: Iterable[str], where: str) -> None:
    if not isinstance(row, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in fields:
        if name not in row:
            raise BenchmarkDataError(f"{where}: missing field {name!r}")


def check_rows(rows: list, expected: int | None, path: str | Path) -> None:
    if expected is not None and len(rows) != expected:
        raise BenchmarkDataError(f"{path}: expected {expected} rows, found {len(rows)} (incomplete or wrong file?)")


def verify_sha256(path: Path, expected: str) -> Path:
    """`path` if its SHA-256 is `expected`; otherwise it is removed (a re-run downloads it again) and an error
    names both digests."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        path.unlink()
        raise BenchmarkDataError(f"{path}: SHA-256 {digest} is not the released file's {expected} (removed; a "
                                 "re-run downloads it again; a mirror must serve the released file unchanged)")
    return path


# -- COCO ------------------------------------------------------------------------------------------
def coco_annotation_path(coco_dir: str | Path, name: str) -> Path:
    """`<coco_dir>/annotations/<name>`, or a FileNotFoundError saying how to get it."""
    path = Path(coco_dir) / "annotations" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. COCO 2014 annotations are needed: run "
            "rlhfv_nb.evaluate.benchmarks.fetch_coco_annotations(cache_dir) "
            f"(downloads {COCO_ANNOTATIONS_URL}, about 250 MB) and pass its result as coco_dir, "
            "or unzip that file so that "
            f"{Path(coco_dir) / 'annotations'} holds {name}."
        )
    return path


def fetch_coco_annotations(cache_dir: str | Path | None = None, url: str = COCO_ANNOTATIONS_URL) -> Path:
    """Download the COCO 2014 annotation zip once and extract the val2014 instances and captions.

    Returns the `coco_dir` to give to `chair.evaluate_chair` (it holds `annotations/`).
    """
    coco_dir = _cache(cache_dir) / "coco2014"
    ann_dir = coco_dir / "annotations"
    if all((ann_dir / name).is_file() for name in COCO_FILES):
        return coco_dir
    archive = download(url, coco_dir / "annotations_trainval2014.zip")
    with zipfile.ZipFile(archive) as zf:
        members = {Path(n).name: n for n in zf.namelist()}
        for name in COCO_FILES:
            if name not in members:
                raise BenchmarkDataError(f"{archive}: no member {name} (is this the COCO 2014 annotations zip?)")
            ann_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=ann_dir, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(members[name]) as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
                os.replace(tmp, ann_dir / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return coco_dir


def coco_image_url(image_id: int | str, template: str = COCO_VAL2014_IMAGE_URL) -> str:
    return template.format(image_id=int(image_id))


def coco_image(image_id: int | str, coco_dir: str | Path, template: str = COCO_VAL2014_IMAGE_URL) -> Path:
    """`<coco_dir>/val2014/COCO_val2014_<id>.jpg`, downloaded there from COCO when it is missing."""
    name = f"COCO_val2014_{int(image_id):012d}.jpg"
    return download(coco_image_url(image_id, template), Path(coco_dir) / "val2014" / name)


# -- Object HalBench -------------------------------------------------------------------------------
def fetch_object_halbench(cache_dir: str | Path | None = None, url: str = OBJECT_HALBENCH_URL) -> list[dict]:
    """The 300 Object HalBench prompts (COCO val2014 image id, question, base64 image)."""
    path = download(url, _cache(cache_dir) / "object_halbench" / Path(url).name)
    return read_jsonl(path, OBJECT_HALBENCH_ROWS, fields=("image_id", "question", "image"))


# -- LLaVA-Bench (COCO, qa90) ----------------------------------------------------------------------
def fetch_llava_bench(
    cache_dir: str | Path | None = None, base_url: str = LLAVA_BENCH_URL
) -> dict[str, list[dict]]:
    """LLaVA-Bench COCO files from the LLaVA repository at `base_url`: `questions` (90), `references` (90 GPT-4
    answers), `contexts` (captions and boxes of the 80 images)."""
    folder = _cache(cache_dir) / "llava_bench"
    out = {}
    for key, (repo_path, rows, fields) in LLAVA_BENCH_FILES.items():
        path = download(base_url.rstrip("/") + "/" + repo_path, folder / Path(repo_path).name)
        out[key] = read_jsonl(path, rows, fields)
    return out


# -- POPE ------------------------------------------------------------------------------------------
def fetch_pope(cache_dir: str | Path | None = None, base_url: str = POPE_URL) -> dict[str, list[dict]]:
    """The released POPE COCO questions per split (random, popular, adversarial: 3,000 each), checksums verified."""
    folder = _cache(cache_dir) / "pope"
    out = {}
    for split, sha256 in POPE_SHA256.items():
        name = f"coco_pope_{split}.json"
        path = verify_sha256(download(base_url.rstrip("/") + "/" + name, folder / name), sha256)
        out[split] = read_jsonl(path, POPE_ROWS, POPE_FIELDS)
    return out


# -- MMHal-Bench -----------------------------------------------------------------------------------
def load_mmhal_template(path: str | Path) -> list[dict]:
    """The 96 MMHal-Bench items of a response template JSON file, fields checked."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(items, list):
        raise BenchmarkDataError(f"{path}: expected a JSON list of items")
    for i, item in enumerate(items):
        check_fields(item, MMHAL_FIELDS, f"{path}: item {i}")
    check_rows(items, MMHAL_ROWS, path)
    return items


def fetch_mmhal_bench(
    cache_dir: str | Path | None = None, repo_id: str = MMHAL_REPO_ID, endpoint: str | None = None
) -> list[dict]:
    """MMHal-Bench items, read from the hub dataset's `response_template.json`."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, MMHAL_TEMPLATE, repo_type="dataset",
                           cache_dir=_cache(cache_dir) / "hf", endpoint=endpoint)
    return load_mmhal_template(path)


def fetch_mmhal_image(
    item: dict, cache_dir: str | Path | None = None, repo_id: str = MMHAL_REPO_ID, endpoint: str | None = None
) -> Path:
    """Local path of an item's image (`images/<file name of image_src>` in the hub dataset)."""
    from huggingface_hub import hf_hub_download

    name = item["image_src"].rsplit("/", 1)[-1]
    return Path(hf_hub_download(repo_id, f"images/{name}", repo_type="dataset",
                                cache_dir=_cache(cache_dir) / "hf", endpoint=endpoint))
