"""Measuring the loop's models: world CHAIR (the miniature's held-out report, and its `world` selection benchmark)
and the selection metrics of `rlaifv.select_by` through stage 04's benchmark suite."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfv_nb import world
from rlhfv_nb.config import Config
from rlhfv_nb.evaluate.chair import score_responses
from rlhfv_nb.evaluate.suite import Sources, model_slug, run_benchmarks
from rlhfv_nb.generate import HFBackend, eval_settings
from rlhfv_nb.layout import RoundFolder
from rlhfv_nb.pipeline import world_config
from rlhfv_nb.rlaifv.prompts import describe_items
from rlhfv_nb.rlaifv.select import WORLD, SelectionError, SelectMetric
from rlhfv_nb.world import Scene
from rlhfv_nb.world_eval import eval_items, world_vocabulary

SELECT_SEED = 400  # the world selection images are seeded `seed + SELECT_SEED`, apart from the run's other images
CHAIR_KEYS = ("CHAIRs", "CHAIRi", "recall", "avg_len")

Measured = dict[str, dict[str, float | None]]  # model name -> selection metric name -> value


def has_world_eval(cfg: Config) -> bool:
    """Whether the run has the world's held-out images (`<run>/data/eval.parquet`: a cpu-tiny run)."""
    return cfg.data.sft_source == "synthetic"


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


def held_out_chair(cfg: Config, folder: RoundFolder, model: str, label: str, progress: bool) -> dict[str, Any]:
    """World CHAIR of `model` on the run's held-out images (answers `folder.eval_answers("eval", label)`), or
    nothing when the run has no world."""
    if not has_world_eval(cfg):
        return {}
    return world_chair(cfg, model, held_out_items(cfg), folder.eval_answers("eval", label), progress)


def _suite_config(cfg: Config, folder: RoundFolder, benchmarks: list[str]) -> Config:
    """The config stage 04's suite sees: the round folder as the run folder (answers under `<round>/eval/`), only
    the selection benchmarks, the models generating here (a model server would not hold the round's models)."""
    return dataclasses.replace(cfg, run_dir=str(folder.root),
                               evaluation=dataclasses.replace(cfg.evaluation, benchmarks=benchmarks, backend="hf"))


def measure(cfg: Config, folder: RoundFolder, models: Mapping[str, str], metrics: Sequence[SelectMetric],
            sources: Sources | None = None, progress: bool = True) -> Measured:
    """Every selection metric of every model (name -> folder). World metrics on `rlaifv.select_images` fresh world
    images (answers `folder.eval_answers("select", <slug of the name>)`), the others through
    `evaluate.suite.run_benchmarks` with the round folder as the run folder. SelectionError when a benchmark could
    not score a model (no judge key, data that cannot be fetched...): a round is never picked on missing numbers.
    """
    measured: Measured = {name: {} for name in models}
    world_metrics = [metric for metric in metrics if metric.benchmark == WORLD]
    if world_metrics:
        seed = cfg.seed + SELECT_SEED
        items = describe_items(world.make_fresh_scenes(world_config(cfg), cfg.rlaifv.select_images, seed), cfg,
                               "select", seed)
        for name, path in models.items():
            chair = world_chair(cfg, path, items, folder.eval_answers("select", model_slug(name)), progress)
            measured[name].update({metric.name: metric.value(chair) for metric in world_metrics})
    suite_metrics = [metric for metric in metrics if metric.benchmark != WORLD]
    if suite_metrics:
        benchmarks = list(dict.fromkeys(metric.benchmark for metric in suite_metrics))
        suite = run_benchmarks(_suite_config(cfg, folder, benchmarks), dict(models), sources)
        for name in models:
            for bench in benchmarks:
                result = suite.results[name][bench]
                if not result.scored:
                    raise SelectionError(f"rlaifv {folder.root.name}: selection benchmark {bench} of model {name}: "
                                         f"{result.status}")
            measured[name].update({metric.name: metric.value(suite.results[name][metric.benchmark].metrics)
                                   for metric in suite_metrics})
    return measured
