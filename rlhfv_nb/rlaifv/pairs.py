"""Pairs: within a prompt, a higher-scored candidate is chosen over a lower-scored one; written in the
RLAIF-V-Dataset schema.

Upstream (`utils/get_preference_pairs.py`) takes every two candidates whose scores differ by at least 1, then
samples 2 such pairs per prompt at random. Here the choice is deterministic: candidates are ranked by score
(ties by their order), the pairs of a prompt are ordered by score gap, widest first (the labeler is least likely
to have the order wrong), then by the chosen and the rejected answer's rank. Candidates with equal scores are
never paired.

- `best_vs_worst`: the first of those pairs only (the best answer against the worst, earliest on ties).
- `all_ordered`: all of them whose gap is at least `min_gap`, the first `max_pairs` when set
  (`all_ordered`, `min_gap` 1, `max_pairs` 2 is upstream's rule without its random sampling).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfv_nb.data import image_bytes

PAIR_RULES = ("best_vs_worst", "all_ordered")
RLAIFV_COLUMNS = ("ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx",
                  "image_path")


@dataclass(frozen=True)
class PairRule:
    """How a prompt's scored candidates become pairs (see the module docstring)."""

    kind: str = "best_vs_worst"
    min_gap: int = 1  # least score difference between chosen and rejected (>= 1: ties are never paired)
    max_pairs: int | None = None  # most pairs per prompt (None: no limit); best_vs_worst makes one at most

    def __post_init__(self) -> None:
        if self.kind not in PAIR_RULES:
            raise ValueError(f"unknown pair rule {self.kind!r}; choose one of {PAIR_RULES}")
        if self.min_gap < 1:
            raise ValueError(f"pair rule min_gap must be >= 1 (equal scores are never paired), got {self.min_gap}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"pair rule max_pairs must be >= 1 or null, got {self.max_pairs}")


def select_pairs(scores: Sequence[int], rule: PairRule) -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices of one prompt under `rule`, from the candidates' scores."""
    ranking = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    rank = {candidate: position for position, candidate in enumerate(ranking)}
    pairs = [(chosen, rejected) for position, chosen in enumerate(ranking) for rejected in ranking[position + 1:]
             if scores[chosen] - scores[rejected] >= rule.min_gap]
    pairs.sort(key=lambda pair: (scores[pair[1]] - scores[pair[0]], rank[pair[0]], rank[pair[1]]))
    limit = 1 if rule.kind == "best_vs_worst" else rule.max_pairs
    return pairs[:limit]


def keep_pairs(pairs: Sequence[Sequence[tuple[int, int]]], total: int, seed: int) -> list[list[tuple[int, int]]]:
    """`total` of all prompts' pairs, drawn at random (seeded) and kept in their order within each prompt; all of
    them when there are no more. Equal pair counts for runs that prompt differently (one-shot vs iterative)."""
    every = [(prompt, position) for prompt, chosen in enumerate(pairs) for position in range(len(chosen))]
    kept = set(random.Random(seed).sample(every, total)) if total < len(every) else set(every)
    return [[pair for position, pair in enumerate(chosen) if (prompt, position) in kept]
            for prompt, chosen in enumerate(pairs)]


def length_balanced(pairs: Sequence[Sequence[tuple[int, int]]], candidates: Sequence[Sequence[str]]
                    ) -> tuple[list[list[tuple[int, int]]], float | None]:
    """Upstream's length filter (`utils/get_pairs_filter_shorten.py`): a score that counts rejected claims never
    prefers the longer of two answers, so pairs push the policy towards saying less. Pairs whose chosen answer is
    shorter than the rejected one by more than a share r of its words are dropped, with r (0, 0.02, ..., 0.98) the
    first that brings the kept pairs' mean chosen and rejected word counts closest together. Returns the kept
    pairs (each prompt's in their order) and r (None without pairs)."""
    # (prompt, pair, chosen words, rejected words, shortening: the share of the rejected words the chosen lacks)
    flat = []
    for prompt, chosen_rejected in enumerate(pairs):
        for pair in chosen_rejected:
            chosen, rejected = (len(candidates[prompt][i].split()) for i in pair)
            flat.append((prompt, pair, chosen, rejected, (rejected - chosen) / rejected if rejected else 0.0))
    best: tuple[float, float] | None = None
    for step in range(50):
        ratio = step / 50
        kept = [(chosen, rejected) for *_, chosen, rejected, shortening in flat if shortening <= ratio]
        if not kept:
            continue
        chosen_words, rejected_words = (sum(words) / len(kept) for words in zip(*kept))
        gap = abs(chosen_words - rejected_words) / rejected_words if rejected_words else 0.0
        if best is None or gap < best[0]:
            best = (gap, ratio)
    if best is None:
        return [list(chosen) for chosen in pairs], None
    kept_pairs = {(prompt, pair) for prompt, pair, *_, shortening in flat if shortening <= best[1]}
    return [[pair for pair in chosen if (prompt, pair) in kept_pairs] for prompt, chosen in enumerate(pairs)], best[1]


@dataclass(frozen=True)
class Prompt:
    """One prompt of the feedback stage: its id, image and question."""

    uid: str
    image: Any  # encoded bytes, a `datasets` image cell or a PIL image
    question: str
    image_path: str | None = None  # where the image came from; None: "<origin_dataset>/<uid>"


def pair_records(
    prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]],
    pairs: Sequence[Sequence[tuple[int, int]]],
    ds_name: str,
    origin_dataset: str,
    origin_split: str = "train",
    first_idx: int = 0,
) -> list[dict[str, Any]]:
    """Rows in the RLAIF-V-Dataset schema (`RLAIFV_COLUMNS`), one per pair: `pairs[i]` indexes `candidates[i]`,
    the answers to `prompts[i]`. `idx` numbers the rows from `first_idx` (the loader's row id).

    `rlhfv_nb.data.write_parquet(rows, path)` writes them (atomically, images embedded), and the project's
    preference loader (`load_raw` + `normalise_preferences`) reads that file as it reads the hub's RLAIF-V-Dataset.
    """
    if not len(prompts) == len(candidates) == len(pairs):
        raise ValueError(f"{len(prompts)} prompts, {len(candidates)} candidate lists and {len(pairs)} pair lists: "
                         "need one of each per prompt")
    rows = []
    for prompt, answers, chosen_rejected in zip(prompts, candidates, pairs):
        for chosen, rejected in chosen_rejected:
            if not (0 <= chosen < len(answers) and 0 <= rejected < len(answers)) or chosen == rejected:
                raise ValueError(f"prompt {prompt.uid!r}: pair ({chosen}, {rejected}) does not name two of its "
                                 f"{len(answers)} candidates")
            rows.append({
                "ds_name": ds_name,
                "image": {"bytes": image_bytes(prompt.image), "path": None},
                "question": prompt.question,
                "chosen": answers[chosen],
                "rejected": answers[rejected],
                "origin_dataset": origin_dataset,
                "origin_split": origin_split,
                "idx": first_idx + len(rows),
                "image_path": prompt.image_path or f"{origin_dataset}/{prompt.uid}",
            })
    return rows

