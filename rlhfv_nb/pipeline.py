"""The stages of a run, each reading the previous stage's artifacts from the run folder and writing its own.

params -> data -> SFT model -> (synthetic feedback) -> reference log-probs -> DDPO model -> evaluation.
Notebooks call these functions; so can a script or `accelerate launch -m rlhfv_nb.launch`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import datasets

from rlhfv_nb import world
from rlhfv_nb.config import Config
from rlhfv_nb.data import (
    BadRows,
    DataError,
    encode_image,
    load_raw,
    normalise_preferences,
    normalise_sft,
    read_parquet,
    rlhfv_records,
    write_parquet,
)
from rlhfv_nb.ddpo import diff_token_weights
from rlhfv_nb.features import prompt_length, response_ids
from rlhfv_nb.files import file_sha256, read_json, write_json
from rlhfv_nb.generate import GenerationSettings, generate_answers
from rlhfv_nb.logps import cache_path, model_fingerprint, reference_logps
from rlhfv_nb.manifests import write_manifest
from rlhfv_nb.modeling import build_tiny_model, load_model, load_processor
from rlhfv_nb.portable import portable
from rlhfv_nb.processing import image_aspect_ratio_of

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- run folder bookkeeping
def update_metrics(cfg: Config, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge one stage's numbers into `<run>/metrics.json` (paths in them made portable)."""
    metrics = read_json(cfg.layout.metrics, {})
    metrics[section] = portable(values, cfg.run_path)
    write_json(cfg.layout.metrics, metrics)
    return metrics


def mark_done(cfg: Config, stage: str, summary: dict[str, Any] | None = None) -> None:
    """Record that a stage finished, with the config values and inputs it used (`rlhfv_nb.manifests`): the runner
    skips it while they are unchanged."""
    write_manifest(cfg, stage, summary)


def world_config(cfg: Config) -> world.WorldConfig:
    return world.WorldConfig(**cfg.data.world)


# ---------------------------------------------------------------- stage 01: data
def _world_eval_rows(wcfg: world.WorldConfig, scenes: list[world.Scene], seed: int) -> list[dict[str, Any]]:
    """Held-out items: one description prompt and the short questions of every scene."""
    rng = random.Random(seed)
    rows = []
    for index, scene in enumerate(scenes):
        image = encode_image(world.render(scene, wcfg))
        scene_json = json.dumps(scene.to_dict())
        rows.append({"uid": f"eval-{index}-describe", "image": image, "question": rng.choice(world.DESCRIBE_PROMPTS),
                     "qtype": "describe", "answer": world.describe(scene, rng, wcfg), "scene": scene_json,
                     "image_id": str(index), "label": ""})
        for q_index, qa in enumerate(world.short_questions(scene, rng, wcfg)):
            rows.append({"uid": f"eval-{index}-{qa.type}-{q_index}", "image": image, "question": qa.question,
                         "qtype": qa.type, "answer": qa.answer, "scene": scene_json, "image_id": str(index),
                         "label": qa.label or ""})
    return rows


def prepare_data(cfg: Config) -> dict[str, Any]:
    """Write the SFT rows, held-out evaluation items and preference pairs (or feedback scenes) to `<run>/data`."""
    layout = cfg.layout
    reports: list[BadRows] = []
    if cfg.data.sft_source == "synthetic":
        wcfg = world_config(cfg)
        sft_rows = [
            {"uid": f"sft-{i}", "image": encode_image(row["image"]), "question": row["question"],
             "answer": row["answer"], "qtype": row["qtype"], "scene": json.dumps(row["scene"])}
            for i, row in enumerate(world.make_sft_rows(wcfg, cfg.data.sft_images, cfg.seed))
        ]
        eval_scenes = world.make_fresh_scenes(wcfg, cfg.data.eval_images, cfg.seed + 2)
        write_parquet(_world_eval_rows(wcfg, eval_scenes, cfg.seed + 3), layout.eval_rows)
        feedback_scenes = world.make_fresh_scenes(wcfg, cfg.data.feedback_images, cfg.seed + 1)
        write_json(layout.feedback_scenes, [scene.to_dict() for scene in feedback_scenes])
        layout.world_synonyms.write_text(world.synonyms_text(wcfg))
    else:
        sft_rows, bad = normalise_sft(load_raw(cfg.data.sft_source, cfg.data.split), cfg.data.sft_source,
                                      cfg.data.on_bad_row, cfg.data.max_image_pixels)
        reports.append(bad)
    write_parquet(sft_rows, layout.sft_rows)
    if cfg.data.preferences != "feedback":
        pairs, bad = normalise_preferences(load_raw(cfg.data.preferences, cfg.data.split), cfg.data.preferences,
                                           cfg.data.on_bad_row, cfg.data.max_image_pixels)
        reports.append(bad)
        if cfg.data.max_pairs:
            pairs = pairs[: cfg.data.max_pairs]
        write_parquet(pairs, layout.loaded_preferences)
    report = {"sft_rows": len(sft_rows), "bad_rows": [r.to_dict() for r in reports]}
    write_json(layout.data_report, report)
    for r in reports:
        log.info(r.summary())
    return report


# ---------------------------------------------------------------- stage 02: SFT (+ synthetic feedback)
def base_model_path(cfg: Config) -> str:
    """The base model: a hub id/folder, or the run's tiny model (built by `build_base_model`, never here)."""
    if cfg.model.base != "tiny":
        return cfg.model.base
    if not cfg.layout.base_built:
        raise FileNotFoundError(f"the tiny base model is not built yet ({cfg.layout.base}): stage 02 builds it "
                                "(pipeline.build_base_model)")
    return str(cfg.layout.base)


def base_recipe(cfg: Config) -> dict[str, Any]:
    """What the tiny base model is built from: its shape and pretraining settings, the seed, the SFT corpus."""
    return {"tiny": dataclasses.asdict(cfg.model.tiny), "seed": cfg.seed, "sft_rows": file_sha256(cfg.layout.sft_rows),
            "world": cfg.data.world}


def base_is_current(cfg: Config) -> bool:
    """Whether the run's tiny base model is complete and was built from what the config and data say now."""
    layout = cfg.layout
    return layout.base_built and read_json(layout.base_recipe) == base_recipe(cfg)


def build_base_model(cfg: Config) -> str:
    """The base model, building the tiny one from the run's SFT corpus and pretraining its vision tower; built again
    when its recipe (`base_recipe`: shape, seed, SFT data) changed since."""
    layout = cfg.layout
    if cfg.model.base == "tiny" and not base_is_current(cfg):
        # Built and pretrained in a side folder, renamed when complete: a kill mid-way leaves no half-made base.
        shutil.rmtree(layout.base_partial, ignore_errors=True)
        rows = read_parquet(layout.sft_rows)
        corpus = [f"USER: <image>\n{q} ASSISTANT: {a}</s>" for q, a in zip(rows["question"], rows["answer"])]
        build_tiny_model(corpus, cfg.model.tiny, layout.base_partial, cfg.seed)
        if cfg.model.tiny.vision_pretrain_steps and "scene" in rows.column_names:
            pretrain_world_vision(cfg, rows, layout.base_partial)
        write_json(layout.base_partial / layout.base_recipe.name, base_recipe(cfg))
        shutil.rmtree(layout.base, ignore_errors=True)
        layout.base_partial.rename(layout.base)
    return base_model_path(cfg)


def pretrain_world_vision(cfg: Config, rows: datasets.Dataset, path: Path) -> list[float]:
    """Pretrain the tiny base model's vision tower on the SFT images' object tags (`rlhfv_nb.vision_pretrain`)."""
    from rlhfv_nb.vision_pretrain import pretrain_vision_tower

    wcfg = world_config(cfg)
    first = {}  # one row per image: the SFT split repeats each image for its questions
    for image, scene in zip(rows["image"], rows["scene"]):
        first.setdefault(scene, image["bytes"])
    cells = [world.cell_classes(world.Scene.from_dict(json.loads(s)), wcfg) for s in first]
    model, processor = load_model(path, cfg.model), load_processor(path, cfg.model)
    tiny = cfg.model.tiny
    losses = pretrain_vision_tower(model, processor, list(first.values()), cells, world.num_cell_classes(wcfg),
                                   tiny.vision_pretrain_steps, tiny.vision_pretrain_lr, seed=cfg.seed)
    model.save_pretrained(path)
    write_json(path / "vision_pretrain.json", {"steps": len(losses), "losses": losses})
    return losses


def sft_model_path(cfg: Config) -> str:
    """The SFT model: `<run>/sft/final` after stage 02, or the base model when SFT is disabled."""
    return str(cfg.layout.sft.final) if cfg.sft.enabled else base_model_path(cfg)


def run_sft(cfg: Config) -> str:
    """Fine-tune the base model on `<run>/data/sft.parquet`; returns the SFT model folder."""
    from rlhfv_nb.train import train_sft

    base = build_base_model(cfg)
    if not cfg.sft.enabled:
        return base
    processor = load_processor(base, cfg.model)
    rows = read_parquet(cfg.layout.sft_rows)
    rows = rows.map(lambda r: {"answer_ids": response_ids(processor, r["question"], r["answer"])},
                    desc="tokenising SFT answers")
    too_long = [u for u, ids in zip(rows["uid"], rows["answer_ids"]) if len(ids) >= cfg.data.max_length]
    if too_long:
        raise DataError(f"sft.parquet: {len(too_long)} answers exceed data.max_length "
                        f"({cfg.data.max_length}), e.g. rows {too_long[:5]}")
    model = load_model(base, cfg.model)
    train_sft(model, processor, rows, cfg.sft, cfg.model, cfg.layout.sft.root, cfg.seed, cfg.tracking)
    return sft_model_path(cfg)


def collect_feedback(cfg: Config, model=None, processor=None) -> dict[str, Any]:
    """RLHF-V-style correctional feedback on the synthetic world, written in the RLHF-V-Dataset schema.

    The SFT model answers description prompts (and `feedback.exists_questions` existence and
    `feedback.short_questions` other short questions) on fresh images; the simulated annotator corrects the
    hallucinated segments against the known objects (a wrong short answer is replaced by the right one); the
    original is `rejected`, the correction `chosen`. A right short answer of a type in
    `feedback.right_answer_pairs` is `chosen` against a wrong one of the annotator's. The pairs then go through
    the same loader as hub data.
    """
    wcfg = world_config(cfg)
    path = sft_model_path(cfg)
    processor = processor or load_processor(path, cfg.model)
    model = model or load_model(path, cfg.model)
    scenes = [world.Scene.from_dict(s) for s in read_json(cfg.layout.feedback_scenes)]
    rng, short_rng = random.Random(cfg.seed + 4), random.Random(cfg.seed + 5)
    images = [encode_image(world.render(scene, wcfg)) for scene in scenes]
    items = [
        {"id": f"{i}-{k}", "image": images[i], "question": rng.choice(world.DESCRIBE_PROMPTS), "scene": i, "qa": None}
        for i in range(len(scenes)) for k in range(cfg.feedback.samples_per_image)
    ]
    for i, scene in enumerate(scenes):
        asked = world.pick_questions(world.short_questions(scene, short_rng, wcfg), short_rng,
                                     cfg.feedback.exists_questions, cfg.feedback.short_questions)
        items += [{"id": f"{i}-q{k}", "image": images[i], "question": qa.question, "scene": i, "qa": qa}
                  for k, qa in enumerate(asked)]
    settings = GenerationSettings(max_new_tokens=cfg.feedback.max_new_tokens, do_sample=True,
                                  temperature=cfg.feedback.temperature, top_p=cfg.feedback.top_p, seed=cfg.seed)
    layout = cfg.layout
    model_id = model_fingerprint(path)  # the SFT model's: answers of an earlier SFT model are never reused
    answers = generate_answers(model, processor, items, settings, layout.feedback_answers(settings, model_id),
                               cfg.feedback.batch_size, model_id=model_id)
    pairs = []
    corrected_by_type: Counter[str] = Counter()
    right_by_type: Counter[str] = Counter()
    for item, answer in zip(items, answers):
        qa = item["qa"]
        if qa is None:
            qtype, corrected = "describe", world.correct_description(answer["answer"], scenes[item["scene"]], wcfg)
        else:
            qtype, corrected = qa.type, world.correct_short_answer(answer["answer"], qa)
        rejected = answer["answer"]
        if corrected.strip() != rejected.strip():
            corrected_by_type[qtype] += 1
        elif qtype in cfg.feedback.right_answer_pairs:
            rejected = world.wrong_short_answer(qa, short_rng, wcfg)
            right_by_type[qtype] += 1
        else:
            continue
        pairs.append({"image": item["image"], "question": item["question"], "chosen": corrected,
                      "rejected": rejected, "idx": len(pairs), "image_path": f"world/{item['scene']}.png"})
    if not pairs:
        raise DataError("feedback: the SFT model made no mistakes to correct; no preference pairs")
    write_parquet(rlhfv_records(pairs, "synthetic-world"), layout.feedback_records)
    normalised, bad = normalise_preferences(load_raw(str(layout.feedback_records)), "feedback", cfg.data.on_bad_row,
                                            cfg.data.max_image_pixels)
    write_parquet(normalised, layout.feedback_preferences)
    corrected = sum(corrected_by_type.values())
    stats = {"answers": len(answers), "pairs": len(pairs), "corrected": corrected,
             "already_correct": len(answers) - corrected, "correction_rate": corrected / len(answers),
             "corrected_by_type": dict(corrected_by_type), "right_answer_pairs_by_type": dict(right_by_type),
             "bad_rows": bad.to_dict()}
    write_json(layout.feedback_stats, stats)
    return stats


# ---------------------------------------------------------------- stage 03: reference log-probs + DDPO
def preferences_path(cfg: Config) -> Path:
    """The pairs DDPO trains on: collected in stage 02 (`data.preferences: feedback`), else loaded in stage 01."""
    return cfg.layout.feedback_preferences if cfg.data.preferences == "feedback" else cfg.layout.loaded_preferences


def tokenise_pairs(cfg: Config, processor, path: Path | None = None) -> tuple[list[dict[str, Any]], BadRows]:
    """Preference pairs (the run's, or those in `path`) with token ids; pairs longer than `data.max_length` are
    reported and skipped."""
    bad = BadRows("preferences.parquet")
    rows = []
    path = path or preferences_path(cfg)
    ds = read_parquet(path)
    if len(set(ds["uid"])) != len(ds):
        raise DataError(f"{path}: pair ids (uid) repeat, so pairs would share reference log-probs; this file was "
                        "written before uids were made unique: run stage 01 (or 02 for collected feedback) again")
    prompt_lengths: dict[str, int] = {}
    for index, row in enumerate(ds):
        image = row["image"]["bytes"]
        chosen = response_ids(processor, row["question"], row["chosen"])
        rejected = response_ids(processor, row["question"], row["rejected"])
        key = row["question"] if cfg.model.base == "tiny" else row["uid"]
        if key not in prompt_lengths:
            prompt_lengths[key] = prompt_length(processor, row["question"], image)
        length = prompt_lengths[key] + max(len(chosen), len(rejected))
        if length > cfg.data.max_length:
            if cfg.data.on_bad_row == "error":
                raise DataError(f"preferences.parquet: row {index} (id {row['uid']}): {length} tokens "
                                f"exceed data.max_length {cfg.data.max_length}")
            bad.add(f"longer than data.max_length ({cfg.data.max_length})", row["uid"])
            continue
        rows.append({"uid": row["uid"], "image": image, "question": row["question"],
                     "chosen_ids": chosen, "rejected_ids": rejected})
    return rows, bad


# (data file, its mtime and size, SFT model fingerprint, length settings, cache folder, image preprocessing)
# -> tokenised pairs
_PREPARED: dict[tuple, tuple[list[dict[str, Any]], BadRows, Path]] = {}


def prepared_pairs(cfg: Config, processor) -> tuple[list[dict[str, Any]], BadRows, Path]:
    """Tokenised pairs, their skip report and their reference cache path, made once per process for the same data
    file, SFT model and length settings: every gamma of a run reuses them instead of tokenising again."""
    data = preferences_path(cfg)
    stat = data.stat()
    key = (str(data.resolve()), stat.st_mtime_ns, stat.st_size, model_fingerprint(sft_model_path(cfg)),
           cfg.data.max_length, cfg.data.on_bad_row, str(cfg.layout.reference_cache_dir),
           image_aspect_ratio_of(processor))
    if key not in _PREPARED:
        rows, bad = tokenise_pairs(cfg, processor)
        _PREPARED[key] = (rows, bad, reference_cache(cfg, rows, processor))
    return _PREPARED[key]


def reference_cache(cfg: Config, rows: list[dict[str, Any]], processor) -> Path:
    """Where the reference log-probs of `rows` under the run's SFT model and image preprocessing live
    (`<run>/data/logps`)."""
    return cache_path(cfg.layout.reference_cache_dir, sft_model_path(cfg), rows, image_aspect_ratio_of(processor))


def reference_settings_path(cache: Path) -> Path:
    """How the reference cache `cache` was computed (device, autocast, quantisation), beside it."""
    return cache.with_name(cache.stem + ".settings.json")


def compute_reference(cfg: Config, rows: list[dict[str, Any]], processor=None, cache: Path | None = None) -> Path:
    """Per-token reference log-probs of `rows` under the frozen SFT model, cached in `<run>/data/logps`.

    The one place the reference is computed: notebook 03, `rlhfv-nb ddpo` and `launch_stage` (before its launched
    processes start) call it. The model goes to the GPU when there is one, is prepared exactly as training
    prepares it (k-bit preparation, LoRA adapters at their identity start) and runs under the training's bf16
    autocast, so at step 0 the policy scores exactly what is cached.
    """
    import torch

    from rlhfv_nb.train import prepare_for_training

    path = sft_model_path(cfg)
    processor = processor or load_processor(path, cfg.model)
    cache = cache or reference_cache(cfg, rows, processor)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = prepare_for_training(load_model(path, cfg.model, device_map=device if device == "cuda" else None),
                                 cfg.model)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.ddpo.bf16):
        reference_logps(model, processor, rows, cache, cfg.ddpo.ref_batch_size, share_prefix=cfg.ddpo.share_prefix,
                        family=cfg.model.family)
    write_json(reference_settings_path(cache), {
        "computed_by": "rlhfv_nb.pipeline.compute_reference", "device": device,
        "autocast": "bfloat16" if cfg.ddpo.bf16 else None, "load_in_4bit": cfg.model.load_in_4bit,
        "lora_at_identity": cfg.model.lora.enabled, "batch_size": cfg.ddpo.ref_batch_size,
        "image_aspect_ratio": image_aspect_ratio_of(processor)})
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # give the memory back before training (or its launched processes) starts
    return cache


def ddpo_dataset(rows: list[dict[str, Any]], reference: dict[str, dict[str, list[float]]], gamma: float,
                 min_match: int) -> datasets.Dataset:
    """Training rows: ids, dense weights for `gamma`, and the cached reference log-probs."""
    missing = [row["uid"] for row in rows if row["uid"] not in reference]
    if missing:
        raise ValueError(f"no valid reference log-probs for {len(missing)} pair(s) (e.g. {missing[:3]}): "
                         "run compute_reference first (it recomputes missing or corrupt cache lines)")
    out = []
    for row in rows:
        chosen_w, rejected_w = diff_token_weights(row["chosen_ids"], row["rejected_ids"], gamma, min_match)
        ref = reference[row["uid"]]
        out.append({**row, "chosen_weights": chosen_w, "rejected_weights": rejected_w,
                    "ref_chosen_logps": ref["chosen"], "ref_rejected_logps": ref["rejected"]})
    return datasets.Dataset.from_list(out)


def ddpo_gammas(cfg: Config) -> list[float]:
    """The configured gamma first, then the ablation gammas (1 = plain DPO)."""
    return [cfg.ddpo.gamma] + [g for g in cfg.ddpo.ablation_gammas if g != cfg.ddpo.gamma]


def model_label(gamma: float) -> str:
    return "DPO (gamma=1)" if gamma == 1 else f"DDPO gamma={gamma:g}"


def trained_models(cfg: Config) -> dict[str, str]:
    """Display name -> folder of the SFT model and every DDPO/DPO model of the run."""
    models = {"SFT": sft_model_path(cfg)}
    models.update({model_label(g): str(cfg.layout.ddpo(g).final) for g in ddpo_gammas(cfg)})
    return models


def run_ddpo(cfg: Config, rows: list[dict[str, Any]], cache: Path, gamma: float) -> Path:
    """DDPO from the SFT model with the given gamma (1 = plain DPO); returns the trained model folder."""
    from rlhfv_nb.logps import read_cache
    from rlhfv_nb.train import train_ddpo

    path = sft_model_path(cfg)
    processor = load_processor(path, cfg.model)
    model = load_model(path, cfg.model)
    pairs = ddpo_dataset(rows, read_cache(cache, rows), gamma, cfg.ddpo.min_match)
    ddpo = dataclasses.replace(cfg.ddpo, gamma=gamma)  # the gamma these pairs are weighted with (an ablation's too)
    return train_ddpo(model, processor, pairs, ddpo, cfg.model, cfg.layout.ddpo(gamma).root, cfg.seed, cfg.tracking)

