"""RLAIF-V's iterative alignment (notebook 06; `rlaifv:` in the params).

Round K (`<run>/rlaifv/round-K/`, a `RoundFolder`) starts from the newest policy (round 1: the SFT model; round K:
round K-1's picked model), samples `feedback.candidates` answers on the round's `rlaifv.prompts_per_round` prompts
(`rlhfv_nb.rlaifv.prompts`: fresh world images, or a dataset's next prompts), scores them with the AI feedback
(`rlhfv_nb.rlaifv.scoring`), pairs them (`pairs`) in the RLAIF-V-Dataset schema, and trains DDPO/DPO on them with
the round's starting policy as reference, as stage 03 trains (`launch.ddpo_inputs`, `launch.launch_stage`: in
this process, or under `accelerate launch` as `launch` asks), on the round folder seen as a run folder. The
round's model is picked among its gammas' final models (and, with `rlaifv.select_checkpoints: epochs`, their
models after each earlier epoch) by `rlaifv.select_by` (`rlhfv_nb.rlaifv.select`, measured by `measure`), and on a
cpu-tiny run evaluated by world CHAIR on the run's held-out images.

A finished round writes its manifest (`round.json`), keyed by the config values the loop depends on, the run's
data and SFT manifests and the previous round's hash: a re-run skips it while those are unchanged, and a round
killed midway resumes from its answer files, reference cache and checkpoints. Changing `rlaifv.rounds` alone keeps
the finished rounds.

Seeds: round K's world images are fresh scenes seeded `seed + ROUND_SEED + K`; the labeler trains on `seed +
LABELER_SEED` and is checked on `seed + CHECK_SEED`; world selection uses `seed + SELECT_SEED`; all apart from the
run's feedback (`seed + 1`) and evaluation (`seed + 2`) images.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfv_nb import world
from rlhfv_nb.config import Config
from rlhfv_nb.data import DataError, load_raw, normalise_preferences, write_parquet
from rlhfv_nb.evaluate.suite import Sources, model_slug
from rlhfv_nb.files import read_json, write_json
from rlhfv_nb.generate import HFBackend
from rlhfv_nb.launch import ddpo_inputs, launch_stage
from rlhfv_nb.layout import RoundFolder
from rlhfv_nb.manifests import current_inputs, digest, stage_values
from rlhfv_nb.pipeline import ddpo_gammas, sft_model_path, update_metrics, world_config
from rlhfv_nb.portable import portable
from rlhfv_nb.rlaifv.audit import audit_feedback
from rlhfv_nb.rlaifv.build import build_claims, build_labeler
from rlhfv_nb.rlaifv.claims import WorldClaims
from rlhfv_nb.rlaifv.config import RlaifvFeedbackConfig
from rlhfv_nb.rlaifv.labeler import Labeler
from rlhfv_nb.rlaifv.measure import Measured, held_out_chair, measure
from rlhfv_nb.rlaifv.pairs import Prompt, keep_pairs, length_balanced, pair_records, select_pairs
from rlhfv_nb.rlaifv.prompts import ROUND_SEED, round_items
from rlhfv_nb.rlaifv.scoring import score_answers
from rlhfv_nb.rlaifv.select import Candidate, best, parse_metrics
from rlhfv_nb.rlaifv.world_labeler import LabelerTraining, train_or_load

log = logging.getLogger(__name__)

STAGE = "06_rlaifv"
LABELER_SEED, CHECK_SEED = 200, 300
CHECK_IMAGES = 200  # fresh images the world labeler's cell accuracy is measured on


def feedback_config(cfg: Config) -> RlaifvFeedbackConfig:
    """The feedback settings of the loop (`rlaifv.feedback` over `RlaifvFeedbackConfig`'s defaults)."""
    return RlaifvFeedbackConfig(**cfg.rlaifv.feedback)


def round_config(cfg: Config, folder: RoundFolder, policy: str) -> Config:
    """The config the stage functions see for a round: the round folder as the run folder, the round's starting
    policy as the SFT model (the DDPO start and the reference), the round's pairs as the collected feedback, and
    the models after each epoch kept when the round selects among them."""
    ddpo = dataclasses.replace(cfg.ddpo, save_epochs=cfg.rlaifv.select_checkpoints == "epochs")
    return dataclasses.replace(
        cfg, run_dir=str(folder.root), model=dataclasses.replace(cfg.model, base=policy), ddpo=ddpo,
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
    origin = "synthetic-world" if cfg.rlaifv.prompts == "world" else portable(cfg.rlaifv.prompts, cfg.run_path)
    rows = pair_records(prompts, candidates, pairs, f"rlaifv-round-{number}", origin, f"round-{number}")
    if not rows:
        raise DataError(f"rlaifv round {number}: no candidates of a prompt scored differently, so no pairs; sample "
                        "more candidates (rlaifv.feedback.candidates) or prompts (rlaifv.prompts_per_round)")
    write_parquet(rows, folder.pairs)
    loaded, bad = normalise_preferences(load_raw(str(folder.pairs)), folder.pairs.name, cfg.data.on_bad_row,
                                        cfg.data.max_image_pixels)
    write_parquet(loaded, folder.run.feedback_preferences)
    return bad.count


def candidate_path(folder: RoundFolder, candidate: Candidate) -> Path:
    """A round's model: its gamma's final model, or its model after an earlier epoch."""
    training = folder.run.ddpo(candidate.gamma)
    return training.final if candidate.epoch is None else training.epoch(candidate.epoch)


def _train(cfg: Config, folder: RoundFolder, policy: str) -> tuple[dict[Candidate, str], int]:
    """DDPO (every gamma of the run) on the round's pairs from `policy`, each trained as stage 03 trains
    (`launch.launch_stage`: in this process, or `accelerate launch` processes as `launch` asks); the models it can
    hand on, in order of preference (the configured gamma first; each gamma's final model, then its later epochs
    first), and how many pairs trained."""
    rcfg = round_config(cfg, folder, policy)
    rows, _ = ddpo_inputs(rcfg, compute_missing=True)  # the pairs that train (launch_stage finds their reference)
    models: dict[Candidate, str] = {}
    for gamma in ddpo_gammas(rcfg):
        launch_stage(rcfg, "ddpo", gamma=gamma)
        epochs = reversed(rcfg.layout.ddpo(gamma).saved_epochs()) if rcfg.ddpo.save_epochs else ()
        for candidate in (Candidate(gamma), *(Candidate(gamma, epoch) for epoch in epochs)):
            models[candidate] = str(candidate_path(folder, candidate))
    return models, len(rows)


def _pick(cfg: Config, folder: RoundFolder, models: dict[Candidate, str], sources: Sources | None,
          progress: bool) -> tuple[Candidate, Measured]:
    """The round's model: the best on `rlaifv.select_by` (`select.best`), or `ddpo.gamma`'s final model when
    nothing selects; with every candidate's selection metrics."""
    metrics = parse_metrics(cfg.rlaifv.select_by)
    if not metrics:
        return Candidate(cfg.ddpo.gamma), {}
    named = {candidate.name: candidate for candidate in models}
    measured = measure(cfg, folder, {c.name: path for c, path in models.items()}, metrics, sources, progress)
    return named[best(measured, metrics)], measured


def run_round(cfg: Config, number: int, policy: str, previous: str | None, sources: Sources | None = None,
              progress: bool = True) -> dict[str, Any]:
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
    feedback = feedback_config(cfg)
    items = round_items(cfg, number)
    candidates = _candidates(cfg, feedback, folder, policy, items, progress)
    claims = build_claims(feedback, world_config(cfg), cfg.layout.rlaifv / "judge_cache")
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
    picked, selection = _pick(cfg, folder, models, sources, progress)
    chair = held_out_chair(cfg, folder, models[picked], model_slug(picked.name), progress)
    truth = (audit_feedback([item["scene"] for item in items], scored, pairs, claims)
             if isinstance(claims, WorldClaims) and "scene" in items[0] else {})
    summary = {"round": number, "hash": key, "policy": portable(policy, cfg.run_path), "gamma": picked.gamma,
               "epoch": picked.epoch, "model": portable(models[picked], cfg.run_path),
               "prompts": len(items), "candidates": feedback.candidates, "pairs": sum(map(len, pairs)),
               "length_filter_ratio": length_ratio, "pairs_left_out": left_out, "trained_pairs": trained, **truth,
               **chair, "select": selection.get(picked.name, {}), "selection": selection,
               "seconds": round(time.time() - started, 1)}
    write_json(folder.manifest, summary)
    return summary


def policy_after(cfg: Config, summary: dict[str, Any]) -> str:
    """The model a round hands to the next: its picked model."""
    picked = Candidate(summary["gamma"], summary["epoch"])
    return str(candidate_path(cfg.layout.rlaifv_round(summary["round"]), picked))


def start_row(cfg: Config, start: str, sources: Sources | None, progress: bool) -> dict[str, Any]:
    """Round 0: the start (SFT) model on the held-out world images and the selection metrics (answers named by
    round 0's hash, so another SFT model is answered again)."""
    folder, label = cfg.layout.rlaifv_round(0), f"sft-{round_hash(cfg, 0, None)}"
    metrics = parse_metrics(cfg.rlaifv.select_by)
    select = measure(cfg, folder, {label: start}, metrics, sources, progress)[label] if metrics else {}
    return {"round": 0, **held_out_chair(cfg, folder, start, label, progress), "select": select}


def run_loop(cfg: Config, progress: bool = True, sources: Sources | None = None) -> dict[str, Any]:
    """`rlaifv.rounds` rounds from the SFT model, finished ones skipped; writes and returns the `rlaifv` section of
    `metrics.json`: the labeler's report and one row per round (round 0: the SFT model). `sources`: where the
    selection benchmarks' data comes from (default: the public originals)."""
    if cfg.rlaifv.rounds < 1:
        raise ValueError("rlaifv.rounds is 0: the loop is off; set rlaifv.rounds (e.g. params/cpu-tiny-rlaifv.yaml)")
    start = sft_model_path(cfg)
    rows = [start_row(cfg, start, sources, progress)]
    policy, previous = start, None
    for number in range(1, cfg.rlaifv.rounds + 1):
        summary = run_round(cfg, number, policy, previous, sources, progress)
        rows.append(summary)
        policy, previous = policy_after(cfg, summary), summary["hash"]
    labeler = world_labeler(cfg)[1] if feedback_config(cfg).labeler == "world" else None
    return update_metrics(cfg, "rlaifv", {"labeler": labeler, "rounds": rows})["rlaifv"]
