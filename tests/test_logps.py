"""Reference log-prob cache: resumes after a kill computing only what is missing, keyed by model and data."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_run import CPU_TINY, make_run

from rlhfv_nb.config import load_config
from rlhfv_nb.logps import cache_path, data_fingerprint, model_fingerprint, read_cache, reference_logps
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.pipeline import tokenise_pairs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config(CPU_TINY, **make_run(tmp_path_factory.mktemp("logps") / "run", pairs=6))
    processor = load_processor(cfg.run_path / "base", cfg.model)
    model = load_model(cfg.run_path / "base", cfg.model)
    rows, _ = tokenise_pairs(cfg, processor)
    assert len(rows) == 6
    return cfg, model, processor, rows


class ForwardRows:
    """Counts the rows the model runs forward (one per pair: its prompt, then chosen and rejected)."""

    def __init__(self, model: torch.nn.Module):
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.rows += kwargs["input_ids"].shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_rerun_after_a_partial_run_computes_only_the_missing_rows(tiny, tmp_path):
    _, model, processor, rows = tiny
    path = cache_path(tmp_path, tiny[0].run_path / "base", rows)
    with ForwardRows(model) as first:
        partial = reference_logps(model, processor, rows[:2], path, batch_size=4, progress=False)
    assert first.rows == 2 and len(_lines(path)) == 2  # "killed" after two pairs (one row each: shared prefix)
    head = _lines(path)
    with ForwardRows(model) as second:
        full = reference_logps(model, processor, rows, path, batch_size=4, progress=False)
    assert second.rows == 4  # only the 4 missing pairs went forward
    assert _lines(path)[:2] == head and len(_lines(path)) == 6
    assert list(full) == [r["uid"] for r in rows]
    assert full[rows[0]["uid"]] == partial[rows[0]["uid"]]
    with ForwardRows(model) as third:
        again = reference_logps(model, processor, rows, path, batch_size=4, progress=False)
    assert third.rows == 0 and again == full


def test_cached_values_are_per_response_token_and_batch_independent(tiny, tmp_path):
    _, model, processor, rows = tiny
    one_by_one = reference_logps(model, processor, rows, tmp_path / "a.jsonl", batch_size=1, progress=False)
    batched = reference_logps(model, processor, rows, tmp_path / "b.jsonl", batch_size=6, progress=False)
    for row in rows:
        a, b = one_by_one[row["uid"]], batched[row["uid"]]
        assert len(a["chosen"]) == len(row["chosen_ids"]) and len(a["rejected"]) == len(row["rejected_ids"])
        assert all(v < 0 for v in a["chosen"] + a["rejected"])
        assert a["chosen"] == pytest.approx(b["chosen"], abs=1e-5)
        assert a["rejected"] == pytest.approx(b["rejected"], abs=1e-5)


def test_truncated_last_line_is_ignored_and_recomputed_once(tiny, tmp_path):
    _, model, processor, rows = tiny
    path = tmp_path / "ref.jsonl"
    full = reference_logps(model, processor, rows, path, batch_size=6, progress=False)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a kill in the middle of writing the last entry
    cached = read_cache(path)
    assert list(cached) == [r["uid"] for r in rows[:-1]]
    with ForwardRows(model) as resumed:
        again = reference_logps(model, processor, rows, path, batch_size=6, progress=False)
    assert resumed.rows == 1  # just the pair whose line was cut (one row: shared prefix)
    assert again[rows[-1]["uid"]]["chosen"] == pytest.approx(full[rows[-1]["uid"]]["chosen"], abs=1e-6)
    # the repaired file now holds every entry: nothing is computed a second time
    assert list(read_cache(path)) == [r["uid"] for r in rows]
    with ForwardRows(model) as after:
        reference_logps(model, processor, rows, path, batch_size=6, progress=False)
    assert after.rows == 0


def test_cache_path_changes_with_model_weights_and_data(tiny, tmp_path):
    cfg, model, processor, rows = tiny
    base = cfg.run_path / "base"
    path = cache_path(tmp_path, base, rows)
    assert cache_path(tmp_path, base, [dict(r) for r in rows]) == path  # deterministic
    assert path.parent == tmp_path and path.name.startswith("ref-") and path.suffix == ".jsonl"

    # same architecture and files, one weight changed
    other = tmp_path / "other-model"
    shutil.copytree(base, other)
    assert model_fingerprint(other) == model_fingerprint(base)
    changed = load_model(other, cfg.model)
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1.0
    changed.save_pretrained(other)
    assert cache_path(tmp_path, other, rows) != path

    # different data: a row left out, other token ids, another image
    assert cache_path(tmp_path, base, rows[:-1]) != path
    edited = [dict(r) for r in rows]
    edited[0]["chosen_ids"] = edited[0]["chosen_ids"][:-2] + edited[0]["chosen_ids"][-1:]
    assert cache_path(tmp_path, base, edited) != path
    swapped = [dict(r) for r in rows]
    swapped[0]["image"] = rows[1]["image"] if rows[1]["image"] != rows[0]["image"] else b"x" + rows[0]["image"]
    assert data_fingerprint(swapped) != data_fingerprint(rows)
    # a hub id is keyed by its name
    assert model_fingerprint("org/model-a") != model_fingerprint("org/model-b")


def test_corrupt_cache_lines_are_recomputed_not_trusted(tiny, tmp_path):
    import json

    _, model, processor, rows = tiny
    path = tmp_path / "ref.jsonl"
    full = reference_logps(model, processor, rows, path, batch_size=6, progress=False)
    lines = _lines(path)
    altered = json.loads(lines[2])
    altered["chosen"][0] += 0.5  # a number changed on disk: the line's checksum no longer holds
    short = json.loads(lines[3])
    short["chosen"] = short["chosen"][:-1]  # another pair's (shorter) values under this uid
    from rlhfv_nb.logps import entry_checksum

    short["check"] = entry_checksum(short["uid"], short["chosen"], short["rejected"])  # even with a good checksum
    corrupt = [json.dumps([1, 2]), json.dumps({"chosen": [-1.0]}), json.dumps(altered), json.dumps(short),
               lines[4].replace('"uid"', '"uuid"')]
    path.write_text("\n".join([lines[0], lines[1], *corrupt, lines[5]]) + "\n")
    assert set(read_cache(path, rows)) == {rows[i]["uid"] for i in (0, 1, 5)}
    with ForwardRows(model) as resumed:
        again = reference_logps(model, processor, rows, path, batch_size=6, progress=False)
    assert resumed.rows == 3  # rows 2, 3 and 4 are computed again (one row each)
    for row in rows:
        assert again[row["uid"]]["chosen"] == pytest.approx(full[row["uid"]]["chosen"], abs=1e-6)
    assert set(read_cache(path, rows)) == {r["uid"] for r in rows}


def test_fingerprint_covers_every_weight_byte_and_the_chat_template(tiny, tmp_path):
    from safetensors import safe_open

    base = tiny[0].run_path / "base"
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    key = model_fingerprint(copy)
    assert key == model_fingerprint(base)
    weights = copy / "model.safetensors"
    # one tensor in the middle of the file scaled in place: same size, first and last MiB untouched
    with safe_open(str(weights), "pt") as handle:
        names = sorted(handle.keys())
    header = int.from_bytes(weights.read_bytes()[:8], "little")
    import json

    meta = json.loads(weights.read_bytes()[8 : 8 + header])
    name = sorted(names, key=lambda n: meta[n]["data_offsets"][0])[len(names) // 2]
    start, end = (8 + header + o for o in meta[name]["data_offsets"])
    tensor = torch.frombuffer(bytearray(weights.read_bytes()[start:end]), dtype=torch.float32) * 1.5
    with weights.open("r+b") as handle:
        handle.seek(start)
        handle.write(tensor.numpy().tobytes())
    assert weights.stat().st_size == (base / "model.safetensors").stat().st_size
    scaled = model_fingerprint(copy)
    assert scaled != key
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text() + " ") if template.exists() else template.write_text("{{ x }}")
    edited = model_fingerprint(copy)
    assert edited not in (key, scaled)
    (copy / "README.md").write_text("notes")  # documentation does not change what the model computes
    assert model_fingerprint(copy) == edited


def test_cache_path_changes_with_the_image_preprocessing(tiny, tmp_path):
    from rlhfv_nb.pipeline import reference_cache
    from rlhfv_nb.processing import with_image_aspect_ratio

    cfg, _, processor, rows = tiny
    padded = with_image_aspect_ratio(load_processor(cfg.run_path / "base", cfg.model), "pad")
    native = with_image_aspect_ratio(load_processor(cfg.run_path / "base", cfg.model), "native")
    # the model sees other pixels when images are padded: its log-probs are cached apart
    assert reference_cache(cfg, rows, padded) != reference_cache(cfg, rows, native)
    assert reference_cache(cfg, rows, padded) == reference_cache(cfg, rows, processor)  # the tiny LLaVA pads
