"""Synthetic inputs for the benchmarks: RLHF-V-shaped preference pairs and CHAIR-scorable responses."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from rlhfv_nb import world
from rlhfv_nb.data import encode_image
from rlhfv_nb.evaluate.chair import ChairVocabulary


def hallucinated_scene(scene: world.Scene, rng: random.Random, cfg: world.WorldConfig) -> world.Scene | None:
    """`scene` with one object's kind swapped for an absent one (the companion of a present kind if any)."""
    absent = [k for k in cfg.kind_names if k not in scene.kinds]
    if not absent:
        return None
    companions = dict(cfg.companions)
    traps = [companions[k] for k in scene.kinds if companions.get(k) in absent]
    wrong = rng.choice(traps or absent)
    index = rng.randrange(len(scene.objects))
    objects = list(scene.objects)
    objects[index] = replace(objects[index], kind=wrong)
    return world.Scene(tuple(objects))


def world_pairs(n: int, seed: int, cfg: world.WorldConfig | None = None) -> list[dict[str, Any]]:
    """`n` preference pairs in the `preferences.parquet` schema: a description that names one absent object is
    `rejected`; the simulated annotator's minimal correction (`world.correct_description`) is `chosen`."""
    cfg = cfg or world.WorldConfig()
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    for scene in world.make_fresh_scenes(cfg, 4 * n, seed):
        wrong = hallucinated_scene(scene, rng, cfg)
        if wrong is None:
            continue
        rejected = world.describe(wrong, random.Random(rng.random()), cfg)
        chosen = world.correct_description(rejected, scene, cfg)
        if chosen.strip() == rejected.strip():
            continue
        pairs.append({"uid": f"pair-{len(pairs)}", "image": encode_image(world.render(scene, cfg)),
                      "question": rng.choice(world.DESCRIBE_PROMPTS), "chosen": chosen, "rejected": rejected})
        if len(pairs) == n:
            return pairs
    raise ValueError(f"only {len(pairs)} of {n} pairs could be made; ask for fewer")


def world_responses(n: int, seed: int, cfg: world.WorldConfig | None = None) -> tuple[dict, dict, ChairVocabulary]:
    """`n` descriptions (about a third hallucinate one object), their ground truth and the world vocabulary."""
    cfg = cfg or world.WorldConfig()
    rng = random.Random(seed)
    responses, truth = {}, {}
    for index, scene in enumerate(world.make_fresh_scenes(cfg, n, seed)):
        said = hallucinated_scene(scene, rng, cfg) if rng.random() < 1 / 3 else None
        responses[index] = world.describe(said or scene, rng, cfg)
        truth[index] = set(scene.kinds)
    return responses, truth, ChairVocabulary.from_synonyms_text(world.synonyms_text(cfg), name="world")


_COCO_TEMPLATES = ("A {a} sitting next to a {b} on a sunny day.", "There are two {a}s and a {b} near the {c}.",
                   "The image shows a {a} beside a {b}, with a {c} in the background.",
                   "In this picture, a {a} is on top of the {b}.")


def coco_responses(n: int, seed: int) -> tuple[dict, dict, ChairVocabulary]:
    """`n` caption-like responses over COCO words (synonyms included) with per-response ground truth."""
    vocab = ChairVocabulary.coco()
    words = sorted(w for w in vocab.synonyms if " " not in w)
    rng = random.Random(seed)
    responses, truth = {}, {}
    for index in range(n):
        a, b, c = rng.sample(words, 3)
        responses[index] = rng.choice(_COCO_TEMPLATES).format(a=a, b=b, c=c)
        truth[index] = {vocab.synonyms[a], vocab.synonyms[b]} if rng.random() < 0.5 else {vocab.synonyms[a]}
    return responses, truth, vocab
