"""A tiny DDPO-ready run folder (base model + preference pairs) for the launch and QLoRA tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from PIL import Image

from rlhfv_nb.config import TinyModelConfig
from rlhfv_nb.data import encode_image, write_parquet
from rlhfv_nb.layout import RunLayout
from rlhfv_nb.modeling import build_tiny_model

# The miniature's preset: the config defaults are the 7B recipe's, so tests on tiny models start from this file.
CPU_TINY = Path(__file__).resolve().parents[1] / "params" / "cpu-tiny.yaml"
SHAPE = TinyModelConfig(image_size=24, patch_size=12, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                        hidden_size=32, layers=2, heads=2, intermediate_size=64, vocab_size=320,
                        max_position_embeddings=128)
COLOURS = ["red", "green", "blue", "yellow"]
THINGS = ["ball", "tent", "cup", "star"]


def _pair(rng: random.Random, index: int) -> dict[str, Any]:
    colour, thing, wrong = rng.choice(COLOURS), rng.choice(THINGS), rng.choice(THINGS)
    rgb = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}[colour]
    return {
        "uid": f"pair-{index}",
        "image": encode_image(Image.new("RGB", (SHAPE.image_size, SHAPE.image_size), rgb)),
        "question": "Describe the image.",
        "chosen": f"There is a {colour} {thing} in the middle of the picture.",
        "rejected": f"There is a {colour} {wrong} and a small dog in the middle of the picture.",
        "source": "{}",
    }


def make_run(run_dir: Path, pairs: int = 8, seed: int = 0) -> dict[str, Any]:
    """Write `<run_dir>/base` (tiny LLaVA) and the preference pairs where stage 02 leaves them; returns params."""
    rng = random.Random(seed)
    rows = [_pair(rng, i) for i in range(pairs)]
    corpus = [f"USER: <image>\n{r['question']} ASSISTANT: {r[k]}</s>" for r in rows for k in ("chosen", "rejected")]
    build_tiny_model(corpus * 4, SHAPE, Path(run_dir) / "base", seed)
    write_parquet(rows, RunLayout(Path(run_dir)).feedback_preferences)  # as stage 02 leaves collected pairs
    return {
        "name": "test-tiny",
        "seed": seed,
        "run_dir": str(run_dir),
        "model": {"base": "tiny", "tiny": vars(SHAPE)},
        "sft": {"enabled": False},
        "data": {"max_length": 96},
        "ddpo": {"gamma": 2.0, "beta": 0.5, "max_steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0,
                 "logging_steps": 1, "ref_batch_size": 8},
    }
