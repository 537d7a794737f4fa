"""The prompts a round samples its candidates on (`rlaifv.prompts`).

"world": `rlaifv.prompts_per_round` fresh world scenes per round, one description prompt each (the miniature).
Otherwise a dataset, a hub id or a local file/folder with `image` and `question` columns (RLAIF-V samples its
prompts from `openbmb/RLAIF-V-Dataset`; a user's own prompt file works the same): its distinct prompts in a seeded
random order, round K taking the K-th `prompts_per_round` of them, so no prompt comes back in a later round.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rlhfv_nb import world
from rlhfv_nb.config import Config
from rlhfv_nb.data import distinct_prompts, load_raw
from rlhfv_nb.pipeline import world_config
from rlhfv_nb.rlaifv.world_labeler import scene_images
from rlhfv_nb.world import Scene

WORLD = "world"
ROUND_SEED = 100  # round K's world scenes are seeded `seed + ROUND_SEED + K`, apart from the run's other images


def describe_items(scenes: Sequence[Scene], cfg: Config, name: str, seed: int) -> list[dict[str, Any]]:
    """One description prompt per scene (`id` "<name>-<i>"), with its image and scene."""
    rng = random.Random(f"rlaifv-{name}-{seed}")
    images = scene_images(scenes, world_config(cfg))
    return [{"id": f"{name}-{i}", "image": image, "question": rng.choice(world.DESCRIBE_PROMPTS), "scene": scene,
             "image_id": str(i)} for i, (scene, image) in enumerate(zip(scenes, images))]


def round_items(cfg: Config, number: int) -> list[dict[str, Any]]:
    """Round `number`'s prompts (`id`, `image` bytes, `question`; world prompts also `scene` and `image_id`)."""
    size = cfg.rlaifv.prompts_per_round
    if cfg.rlaifv.prompts == WORLD:
        seed = cfg.seed + ROUND_SEED + number
        return describe_items(world.make_fresh_scenes(world_config(cfg), size, seed), cfg, f"round{number}", seed)
    rows = distinct_prompts(load_raw(cfg.rlaifv.prompts, cfg.rlaifv.prompts_split), cfg.rlaifv.prompts,
                            number * size, cfg.seed, cfg.data.on_bad_row, cfg.data.max_image_pixels)
    return [{"id": f"round{number}-{row['uid']}", "image": row["image"], "question": row["question"]}
            for row in rows[(number - 1) * size:]]
