"""Every params preset loads and validates; the GPU presets fail fast on a machine without CUDA."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from test_planner import LLAVA_15_7B

from rlhfv_nb.config import load_config
from rlhfv_nb.families import lora_modules
from rlhfv_nb.launch import launch_stage, main, parse_command
from rlhfv_nb.planner import HardwareError, ModelShape

PRESETS = sorted(Path("params").glob("*.yaml"))
GPU_PRESETS = [Path("params/qlora-1gpu.yaml"), Path("params/full-8xa100.yaml")]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.run_dir == f"runs/{path.stem}"


@pytest.mark.parametrize("path", GPU_PRESETS, ids=lambda p: p.stem)
def test_gpu_presets_fail_fast_without_cuda(path, no_cuda, tmp_path):
    cfg = load_config(path, run_dir=str(tmp_path / "run"))
    assert cfg.launch.require_cuda
    with pytest.raises(HardwareError, match="need a CUDA GPU"):
        launch_stage(cfg, "ddpo")
    assert not (tmp_path / "run").exists()  # failed before loading or writing anything
    with pytest.raises(HardwareError, match="need a CUDA GPU"):
        main(["ddpo", str(path)])


# RLHF-V's two recipes (../shared/DESIGN.md section 1): the paper (v1, Dec 2023) and the README since Feb 2024.
UPSTREAM = {
    "paper-v1": {"gamma": 5.0, "beta": 0.5, "use_average": True, "global_batch": 32, "lr": 5e-7, "warmup_ratio": 0.1,
                 "sft_weight": 0.0, "weight_decay": 0.0, "scheduler": "cosine", "bf16": True, "max_length": 2048},
    "readme-2024": {"gamma": 1.1, "beta": 0.1, "use_average": False, "global_batch": 8, "lr": 5e-7,
                    "warmup_ratio": 0.03, "sft_weight": 0.0, "weight_decay": 0.0, "scheduler": "cosine", "bf16": True,
                    "max_length": 2048},
    # RLAIF-V's DPO per iteration (github.com/RLHF-V/RLAIF-V, script/train/RLAIF-V-7B_train.sh: 8 GPUs x batch 1)
    "rlaifv-7b": {"gamma": 1.0, "beta": 0.1, "use_average": False, "global_batch": 8, "lr": 5e-7, "warmup_ratio": 0.05,
                  "sft_weight": 0.0, "weight_decay": 0.01, "scheduler": "cosine", "bf16": True, "max_length": 2048},
}
# preset -> (recipe, the values it deliberately changes, each with its reason in the preset's comments)
PRESET_RECIPES = {
    "full-8xa100": ("readme-2024", {}),
    "qlora-1gpu": ("readme-2024", {"lr": 1e-5}),  # a LoRA update starts at zero: 20x the full-FT lr
    "qlora-1gpu-rlaifv": ("rlaifv-7b", {"lr": 1e-5}),  # the same LoRA lr as qlora-1gpu
}


def _recipe_values(cfg) -> dict:
    d = cfg.ddpo
    return {"gamma": d.gamma, "beta": d.beta, "use_average": d.use_average, "lr": d.lr,
            "global_batch": d.batch_size * d.grad_accum * cfg.launch.num_processes, "warmup_ratio": d.warmup_ratio,
            "sft_weight": d.sft_weight, "weight_decay": d.weight_decay, "scheduler": d.scheduler, "bf16": d.bf16,
            "max_length": cfg.data.max_length}


@pytest.mark.parametrize("preset", dict.fromkeys([*PRESET_RECIPES,
                                                 *(p.stem for p in PRESETS if p.stem.startswith("qlora-1gpu-"))]))
def test_real_presets_resolve_to_the_upstream_recipe_they_name(preset):
    recipe, changed = PRESET_RECIPES.get(preset, PRESET_RECIPES["qlora-1gpu"])  # family presets extend qlora-1gpu
    own = yaml.safe_load(Path(f"params/{preset}.yaml").read_text())
    if "max_length" in own.get("data", {}):  # a family whose images take more tokens (any-res tiles) says so
        changed = {**changed, "max_length": own["data"]["max_length"]}
    assert _recipe_values(load_config(f"params/{preset}.yaml")) == {**UPSTREAM[recipe], **changed}


def test_the_paper_recipe_is_the_config_defaults_plus_its_own_values():
    paper = load_config({"ddpo": {"gamma": 5.0, "beta": 0.5, "use_average": True, "warmup_ratio": 0.1,
                                  "batch_size": 4, "grad_accum": 1}, "launch": {"num_processes": 8}})
    assert _recipe_values(paper) == UPSTREAM["paper-v1"]
    assert _recipe_values(load_config({})) == UPSTREAM["readme-2024"]


def test_qlora_preset():
    cfg = load_config("params/qlora-1gpu.yaml")
    assert cfg.model.load_in_4bit and cfg.model.lora.enabled and cfg.model.gradient_checkpointing
    assert cfg.model.attn_implementation == "flash_attention_2" and cfg.model.dtype == "bfloat16"
    assert not cfg.sft.enabled
    assert (cfg.ddpo.gamma, cfg.ddpo.beta, cfg.ddpo.use_average) == (1.1, 0.1, False)
    assert cfg.ddpo.batch_size * cfg.ddpo.grad_accum * cfg.launch.num_processes == 8
    assert 5e-6 <= cfg.ddpo.lr <= 2e-5 and cfg.ddpo.bf16
    shape = ModelShape.from_config(LLAVA_15_7B, cfg.model.family)
    targets, saved = lora_modules(shape.family, cfg.model.lora)
    assert saved == ["model.multi_modal_projector"]  # the projector is trained in full, as upstream
    hits = [m.name for m in shape.modules() if m.linear and re.fullmatch(targets, m.name)]
    assert len(hits) == 32 * 7 and all(n.startswith("model.language_model.layers.") for n in hits)


def test_full_preset_is_the_readme_recipe_and_the_paper_recipe_is_one_command_away():
    cfg = load_config("params/full-8xa100.yaml")
    assert not cfg.model.lora.enabled and cfg.model.gradient_checkpointing and cfg.model.dtype == "float32"
    assert (cfg.ddpo.gamma, cfg.ddpo.beta, cfg.ddpo.use_average, cfg.ddpo.lr) == (1.1, 0.1, False, 5e-7)
    assert cfg.ddpo.batch_size * cfg.ddpo.grad_accum * cfg.launch.num_processes == 8
    assert cfg.ddpo.bf16 and cfg.ddpo.tf32 and cfg.ddpo.warmup_ratio == 0.03 and cfg.ddpo.weight_decay == 0
    assert cfg.launch.num_processes == 8 and cfg.launch.accelerate_config == "configs/accelerate/deepspeed_zero3.yaml"

    text = Path("params/full-8xa100.yaml").read_text()
    block = re.search(r"#   accelerate launch (.*?)\n#   \(", text, re.S).group(1)
    command = shlex.split(block.replace("\\\n#", " "))
    _, paper, gamma = parse_command(command[command.index("rlhfv_nb.launch") + 1:])
    assert (gamma, paper.ddpo.beta, paper.ddpo.use_average, paper.ddpo.max_steps) == (5.0, 0.5, True, 320)
    assert paper.ddpo.batch_size * paper.ddpo.grad_accum * paper.launch.num_processes == 32
    assert paper.ddpo.warmup_ratio == 0.1


@pytest.mark.parametrize("name", ["deepspeed_zero3", "fsdp"])
def test_accelerate_configs_load(name):
    config = load_config_from_file(f"configs/accelerate/{name}.yaml")
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    if name == "fsdp":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    else:
        assert config.deepspeed_config["zero_stage"] == 3
