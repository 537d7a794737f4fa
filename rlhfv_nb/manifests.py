"""Stage manifests: what each finished stage was run with, so a changed config is never skipped silently.

A stage's manifest (`<run>/stages/<stage>.json`) records the config values the stage depends on and the hashes
of the manifests of the stages it reads from. A stage is done when its manifest matches the current config and
inputs; otherwise the runner re-runs it and says which keys changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from rlhfv_nb.config import Config
from rlhfv_nb.files import read_json, write_json
from rlhfv_nb.portable import portable

# The config keys (dotted prefixes) each stage's outputs depend on, and the stages whose outputs it reads.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "01_data": ("seed", "data.sft_source", "data.preferences", "data.world", "data.sft_images",
                "data.feedback_images", "data.eval_images", "data.max_pairs", "data.on_bad_row", "data.split"),
    "02_sft": ("seed", "model", "data.max_length", "data.on_bad_row", "sft", "feedback"),
    "03_ddpo": ("seed", "model", "data.max_length", "data.on_bad_row", "ddpo"),
    "04_evaluate": ("seed", "model", "evaluation", "ddpo.gamma", "ddpo.ablation_gammas"),
    "05_demo": ("model", "demo", "ddpo.gamma"),
    # every evaluation setting but stage 04's benchmark list and model server: the loop's selection benchmarks run
    # on its own local models
    "06_rlaifv": ("seed", "model", "data.max_length", "data.on_bad_row", "data.max_image_pixels", "ddpo",
                  "evaluation.max_new_tokens", "evaluation.num_beams", "evaluation.repetition_penalty",
                  "evaluation.limit", "evaluation.batch_size", "evaluation.judge", "evaluation.coco_dir",
                  "evaluation.object_halbench_extraction", "evaluation.pope_source", "evaluation.pope_seed",
                  "evaluation.amber_images", "rlaifv"),
}
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "01_data": (),
    "02_sft": ("01_data",),
    "03_ddpo": ("01_data", "02_sft"),
    "04_evaluate": ("01_data", "02_sft", "03_ddpo"),
    "05_demo": ("01_data", "02_sft", "03_ddpo"),
    "06_rlaifv": ("01_data", "02_sft"),
}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        out.update(_flatten(value, dotted + ".") if isinstance(value, dict) and value else {dotted: value})
    return out


def stage_values(cfg: Config, stage: str) -> dict[str, Any]:
    """The dotted config values `stage` depends on (paths made portable: a moved run folder stays done).

    Evaluation also depends on whether the judge's key is set (judged benchmarks and Object HalBench's LLM
    extraction run only then): a run with a key after one without re-runs it. The key itself is never recorded.
    """
    flat = _flatten(portable(cfg.to_dict(), cfg.run_path))
    if stage == "04_evaluate":
        flat["evaluation.judge.key_set"] = bool(os.environ.get(cfg.evaluation.judge.api_key_env))
    prefixes = STAGE_KEYS[stage]
    return {key: value for key, value in flat.items()
            if any(key == p or key.startswith(p + ".") for p in prefixes)}


def digest(values: dict[str, Any], inputs: dict[str, str | None]) -> str:
    """A short hash of config values and input hashes: equal exactly when both are."""
    return hashlib.sha256(json.dumps([values, inputs], sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_inputs(cfg: Config, stage: str) -> dict[str, str | None]:
    """The hash of each input stage's manifest as it is on disk now (None: that stage has not finished)."""
    return {name: read_json(cfg.layout.manifest(name), {}).get("hash") for name in STAGE_INPUTS[stage]}


def write_manifest(cfg: Config, stage: str, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record that `stage` finished with the current config and inputs (plus its summary)."""
    values, inputs = stage_values(cfg, stage), current_inputs(cfg, stage)
    manifest = {"stage": stage, "hash": digest(values, inputs), "values": values, "inputs": inputs,
                **portable(summary or {}, cfg.run_path)}
    write_json(cfg.layout.manifest(stage), manifest)
    return manifest


@dataclass(frozen=True)
class StageStatus:
    """Whether a stage's outputs match the config: "missing", "done" or "changed" (with what changed)."""

    stage: str
    state: str
    changes: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.state == "done"

    def describe(self) -> str:
        return "; ".join(self.changes) if self.changes else self.state


def stage_status(cfg: Config, stage: str) -> StageStatus:
    """Compare `stage`'s manifest with the current config and its input stages' manifests."""
    found = read_json(cfg.layout.manifest(stage), None)
    if found is None:
        return StageStatus(stage, "missing")
    old, new = found.get("values", {}), stage_values(cfg, stage)
    changes = [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
               for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    recorded = found.get("inputs", {})
    for name, digest in current_inputs(cfg, stage).items():
        if recorded.get(name) != digest:
            changes.append(f"{name} was re-run since" if digest else f"{name} has not finished")
    return StageStatus(stage, "changed" if changes else "done", tuple(changes))
