"""A tiny run folder for the demo tests: world data, a random tiny base, and two random LoRA adapters on it
in the places of the SFT and the DDPO model."""

from __future__ import annotations

import socket

import torch
from peft import LoraConfig, get_peft_model
from tiny_run import CPU_TINY, SHAPE

from rlhfv_nb import pipeline
from rlhfv_nb.config import Config, load_config
from rlhfv_nb.modeling import load_model, load_processor


def save_adapter(cfg: Config, base: str, out: str, seed: int) -> str:
    """A randomly initialised (non-identity) LoRA adapter on `base`, saved with the processor."""
    torch.manual_seed(seed)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                      init_lora_weights=False)
    get_peft_model(load_model(base, cfg.model), lora).save_pretrained(out)
    load_processor(base, cfg.model).save_pretrained(out)
    return out


def make_demo_run(run_dir) -> Config:
    """Data (3 held-out world images), the tiny base, SFT and DDPO adapters where the pipeline expects them."""
    cfg = load_config(CPU_TINY, **{"run_dir": str(run_dir), "model": {"tiny": vars(SHAPE)},
                       "data": {"sft_images": 8, "feedback_images": 1, "eval_images": 3},
                       "demo": {"max_new_tokens": 12}})
    pipeline.prepare_data(cfg)
    base = pipeline.build_base_model(cfg)
    save_adapter(cfg, base, pipeline.sft_model_path(cfg), seed=1)
    save_adapter(cfg, base, str(cfg.layout.ddpo(cfg.ddpo.gamma).final), seed=2)
    return cfg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
