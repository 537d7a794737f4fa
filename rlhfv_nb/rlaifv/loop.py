"""RLAIF-V's iterative alignment on the synthetic world (notebook 06; `rlaifv:` in the params).

Round K (`<run>/rlaifv/round-K/`, a `RoundFolder`) starts from the newest policy (round 1: the SFT model; round K:
round K-1's picked model), samples `feedback.candidates` answers on `rlaifv.prompts_per_round` fresh world images,
scores them with the AI feedback (`rlhfv_nb.rlaifv.scoring`), pairs them (`pairs`) in the RLAIF-V-Dataset schema,
and trains DDPO/DPO on them with the round's starting policy as reference, through the pipeline's own stage
functions (`tokenise_pairs`, `compute_reference`, `run_ddpo`) on the round folder seen as a run folder. The round's
model is picked among its gammas by a world CHAIR on selection images of their own (`rlaifv.select_images`), and
evaluated by world CHAIR on the run's held-out images.

A finished round writes its manifest (`round.json`), keyed by the config values the loop depends on, the run's
data and SFT manifests and the previous round's hash: a re-run skips it while those are unchanged, and a round
killed midway resumes from its answer files, reference cache and checkpoints. Changing `rlaifv.rounds` alone keeps
the finished rounds.

Seeds: round K's images are fresh scenes seeded `seed + ROUND_SEED + K`; the labeler trains on `seed +
LABELER_SEED` and is checked on `seed + CHECK_SEED`; selection uses `seed + SELECT_SEED`; all apart from the
run's feedback (`seed + 1`) and evaluation (`seed + 2`) images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfv_nb import world
from rlhfv_nb.config import Config
from rlhfv_nb.data import DataError, load_raw, normalise_preferences, write_parquet
from rlhfv_nb.evaluate.chair import score_responses
from rlhfv_nb.files import read_json, write_json
from rlhfv_nb.generate import HFBackend, eval_settings
from rlhfv_nb.layout import RoundFolder
from rlhfv_nb.manifests import current_inputs, digest, stage_values
from rlhfv_nb.modeling import load_processor
from rlhfv_nb.pipeline import (
    compute_reference,
    ddpo_gammas,
    run_ddpo,
    sft_model_path,
    tokenise_pairs,
    update_metrics,
    world_config,
)
from rlhfv_nb.portable import portable
from rlhfv_nb.rlaifv.audit import audit_feedback
from rlhfv_nb.rlaifv.build import build_claims, build_labeler
from rlhfv_nb.rlaifv.claims import WorldClaims
from rlhfv_nb.rlaifv.config import RlaifvFeedbackConfig
from rlhfv_nb.rlaifv.labeler import Labeler
from rlhfv_nb.rlaifv.pairs import Prompt, keep_pairs, length_balanced, pair_records, select_pairs
from rlhfv_nb.rlaifv.scoring import score_answers
from rlhfv_nb.rlaifv.world_labeler import LabelerTraining, scene_images, train_or_load
from rlhfv_nb.world import Scene
from rlhfv_nb.world_eval import eval_items, world_vocabulary

log = logging.getLogger(__name__)

STAGE = "06_rlaifv"
ROUND_SEED, LABELER_SEED, CHECK_SEED, SELECT_SEED = 100, 200, 300, 400
CHECK_IMAGES = 200  # fresh images the world labeler's cell accuracy is measured on
CHAIR_KEYS = ("CHAIRs", "CHAIRi", "recall", "avg_len")


def feedback_config(cfg: Config) -> RlaifvFeedbackConfig:
    """The feedback settings of the loop (`rlaifv.feedback` over `RlaifvFeedbackConfig`'s defaults)."""
    return RlaifvFeedbackConfig(**cfg.rlaifv.feedback)


def round_config(cfg: Config, folder: RoundFolder, policy: str) -> Config:
    """The config the stage functions see for a round: the round folder as the run folder, the round's starting
    policy as the SFT model (the DDPO start and the reference), the round's pairs as the collected feedback."""
    return dataclasses.replace(
        cfg, run_dir=str(folder.root), model=dataclasses.replace(cfg.model, base=policy),
        sft=dataclasses.replace(cfg.sft, enabled=False), data=dataclasses.replace(cfg.data, preferences="feedback"))


def world_labeler(cfg: Config) -> tuple[Labeler, dict[str, Any]]:
    """The run's world labeler (trained once, on images of its own) and its report (cell accuracy on other
    fresh images)."""
    wcfg = world_config(cfg)
    training = LabelerTraining(images=cfg.rlaifv.labeler_images, steps=cfg.rlaifv.labeler_steps,
                               seed=cfg.seed + LABELER_SEED)
    check = world.make_fresh_scenes(wcfg, CHECK_IMAGES, cfg.seed + CHECK_SEED)
    return train_or_load(cfg.layout.rlaifv_labeler, wcfg, training, check)


def round_labeler(cfg: Config, feedback: RlaifvFeedbackConfig, policy: str) -> Labeler:
    """The labeler of a round: the world labeler, or `build_labeler`'s (a local policy labels itself)."""
    if feedback.labeler == "world":
        return world_labeler(cfg)[0]
    return build_labeler(feedback, cfg.model, policy, cfg.layout.rlaifv / "judge_cache")


def describe_items(scenes: Sequence[Scene], cfg: Config, name: str, seed: int) -> list[dict[str, Any]]:
    """One description prompt per scene (`id` "<name>-<i>"), with its image and scene."""
    rng = random.Random(f"rlaifv-{name}-{seed}")
    images = scene_images(scenes, world_config(cfg))
    return [{"id": f"{name}-{i}", "image": image, "question": rng.choice(world.DESCRIBE_PROMPTS), "scene": scene,
             "image_id": str(i)} for i, (scene, image) in enumerate(zip(scenes, images))]


def held_out_items(cfg: Config) -> list[dict[str, Any]]:
    """The run's held-out description prompts (`<run>/data/eval.parquet`, as stage 04 reads them)."""
    return [dict(item, scene=Scene.from_dict(json.loads(item["scene"])))
            for item in eval_items(cfg) if item["qtype"] == "describe"]


def world_chair(cfg: Config, model: str, items: Sequence[dict[str, Any]], path: Path, progress: bool = True
                ) -> dict[str, Any]:
    """World CHAIR of `model`'s descriptions of `items` (decoded as stage 04 decodes), answers kept in `path`."""
    with HFBackend.load(cfg, model) as backend:
        answers = backend.answer(items, eval_settings(cfg), path, progress)
    result = score_responses({i["image_id"]: a["answer"] for i, a in zip(items, answers)},
                             {i["image_id"]: i["scene"].kinds for i in items}, world_vocabulary(cfg))
    return {key: result.summary[key] for key in CHAIR_KEYS}


def round_hash(cfg: Config, number: int, previous: str | None) -> str:
    """What round `number`'s outputs depend on: the loop's config values (not `rlaifv.rounds`), the run's data and
    SFT manifests, and the previous round's hash."""
    values = {key: value for key, value in stage_values(cfg, STAGE).items() if key != "rlaifv.rounds"}
    return digest({**values, "round": number}, {**current_inputs(cfg, STAGE), "previous_round": previous})


def _candidates(cfg: Config, feedback: RlaifvFeedbackConfig, folder: RoundFolder, policy: str,
                items: Sequence[dict[str, Any]], progress: bool) -> list[list[str]]:
    """Every prompt's candidates from `policy`: candidate i of all prompts in `folder.candidates(i)` (resumable)."""
    with HFBackend.load(cfg, policy) as backend:
        per_candidate = [backend.answer(items, settings, folder.candidates(i), progress)
                         for i, settings in enumerate(feedback.candidate_settings())]
    return [[answers[p]["answer"] for answers in per_candidate] for p in range(len(items))]


def _write_pairs(cfg: Config, folder: RoundFolder, number: int, prompts: Sequence[Prompt],
                 candidates: Sequence[Sequence[str]], pairs: Sequence[Sequence[tuple[int, int]]]) -> int:
    """The round's pairs in the RLAIF-V-Dataset schema, then through the preference loader as hub data; returns how
    many the loader left out."""
    rows = pair_records(prompts, candidates, pairs, f"rlaifv-round-{number}", "synthetic-world", f"round-{number}")
    if not rows:
        raise DataError(f"rlaifv round {number}: no candidates of a prompt scored differently, so no pairs; sample "
                        "more candidates (rlaifv.feedback.candidates) or prompts (rlaifv.prompts_per_round)")
    write_parquet(rows, folder.pairs)
    loaded, bad = normalise_preferences(load_raw(str(folder.pairs)), folder.pairs.name, cfg.data.on_bad_row,
                                        cfg.data.max_image_pixels)
    write_parquet(loaded, folder.run.feedback_preferences)
    return bad.count


def _train(cfg: Config, folder: RoundFolder, policy: str) -> tuple[dict[float, str], int]:
    """DDPO (every gamma of the run) on the round's pairs from `policy`; the models and how many pairs trained."""
    rcfg = round_config(cfg, folder, policy)
    processor = load_processor(policy, cfg.model)
    rows, _ = tokenise_pairs(rcfg, processor)
    cache = compute_reference(rcfg, rows, processor)
    return {gamma: str(run_ddpo(rcfg, rows, cache, gamma)) for gamma in ddpo_gammas(rcfg)}, len(rows)


def _pick(cfg: Config, folder: RoundFolder, models: dict[float, str], progress: bool
          ) -> tuple[float, dict[str, float]]:
    """The round's model: the gamma whose model has the lowest `rlaifv.select_by` on the selection images (the
    first on ties, None last), or `ddpo.gamma` when there is one model or no selection images."""
    if len(models) == 1 or not cfg.rlaifv.select_images:
        return cfg.ddpo.gamma, {}
    scenes = world.make_fresh_scenes(world_config(cfg), cfg.rlaifv.select_images, cfg.seed + SELECT_SEED)
    items = describe_items(scenes, cfg, "select", cfg.seed + SELECT_SEED)
    measured = {f"gamma={gamma:g}": world_chair(cfg, path, items, folder.eval_answers("select", f"gamma{gamma:g}"),
                                                progress)[cfg.rlaifv.select_by]
                for gamma, path in models.items()}
    # A model naming no object has no CHAIRi (None): ranked last, it has shown nothing to measure.
    best = min(models, key=lambda gamma: (measured[f"gamma={gamma:g}"] is None, measured[f"gamma={gamma:g}"] or 0.0))
    return best, measured


def run_round(cfg: Config, number: int, policy: str, previous: str | None, progress: bool = True
              ) -> dict[str, Any]:
    """Round `number` from `policy` (skipped when its manifest matches; see the module docstring); its summary."""
    folder = cfg.layout.rlaifv_round(number)
    key = round_hash(cfg, number, previous)
    done = read_json(folder.manifest)
    if done is not None and done.get("hash") == key:
        log.info("rlaifv round %d: finished earlier with these inputs, skipped", number)
        return done
    if read_json(folder.started, {}).get("hash") not in (None, key):
        log.info("rlaifv round %d: its inputs changed since it started; starting it again", number)
        shutil.rmtree(folder.root)
    write_json(folder.started, {"hash": key})
    started = time.time()
    feedback, wcfg = feedback_config(cfg), world_config(cfg)
    scenes = world.make_fresh_scenes(wcfg, cfg.rlaifv.prompts_per_round, cfg.seed + ROUND_SEED + number)
    items = describe_items(scenes, cfg, f"round{number}", cfg.seed + ROUND_SEED + number)
    candidates = _candidates(cfg, feedback, folder, policy, items, progress)
    claims = build_claims(feedback, wcfg, cfg.layout.rlaifv / "judge_cache")
    scored = score_answers([i["image"] for i in items], candidates, claims, round_labeler(cfg, feedback, policy),
                           feedback.reject_below)
    pairs = [select_pairs([answer.score for answer in answers], feedback.pairs) for answers in scored]
    length_ratio = None
    if feedback.length_filter:
        pairs, length_ratio = length_balanced(pairs, candidates)
    if cfg.rlaifv.pairs_per_round:
        pairs = keep_pairs(pairs, cfg.rlaifv.pairs_per_round, cfg.seed + ROUND_SEED + number)
    write_json(folder.scores, [[answer.to_dict() for answer in answers] for answers in scored])
    prompts = [Prompt(item["id"], item["image"], item["question"]) for item in items]
    left_out = _write_pairs(cfg, folder, number, prompts, candidates, pairs)
    models, trained = _train(cfg, folder, policy)
    gamma, selection = _pick(cfg, folder, models, progress)
    chair = world_chair(cfg, models[gamma], held_out_items(cfg), folder.eval_answers("eval", f"gamma{gamma:g}"),
                        progress)
    truth = audit_feedback(scenes, scored, pairs, claims) if isinstance(claims, WorldClaims) else {}
    summary = {"round": number, "hash": key, "policy": portable(policy, cfg.run_path), "gamma": gamma,
               "prompts": len(items), "candidates": feedback.candidates, "pairs": sum(map(len, pairs)),
               "length_filter_ratio": length_ratio,
               "pairs_left_out": left_out, "trained_pairs": trained, **truth, **chair, "selection": selection,
               "seconds": round(time.time() - started, 1)}
    write_json(folder.manifest, summary)
    return summary


def policy_after(cfg: Config, summary: dict[str, Any]) -> str:
    """The model a round hands to the next: its picked gamma's DDPO model."""
    return str(cfg.layout.rlaifv_round(summary["round"]).run.ddpo(summary["gamma"]).final)


def run_loop(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """`rlaifv.rounds` rounds from the SFT model, finished ones skipped; writes and returns the `rlaifv` section of
    `metrics.json`: the labeler's report and one row per round (round 0: the SFT model's CHAIR)."""
    if cfg.rlaifv.rounds < 1:
        raise ValueError("rlaifv.rounds is 0: the loop is off; set rlaifv.rounds (e.g. params/cpu-tiny-rlaifv.yaml)")
    start = sft_model_path(cfg)
    sft_answers = cfg.layout.rlaifv_round(0).eval_answers("eval", f"sft-{round_hash(cfg, 0, None)}")
    rows = [{"round": 0, **world_chair(cfg, start, held_out_items(cfg), sft_answers, progress)}]
    policy, previous = start, None
    for number in range(1, cfg.rlaifv.rounds + 1):
        summary = run_round(cfg, number, policy, previous, progress)
        rows.append(summary)
        policy, previous = policy_after(cfg, summary), summary["hash"]
    labeler = world_labeler(cfg)[1] if feedback_config(cfg).labeler == "world" else None
    return update_metrics(cfg, "rlaifv", {"labeler": labeler, "rounds": rows})["rlaifv"]
