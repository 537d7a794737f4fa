"""Every params preset loads and validates; the GPU presets fail fast on a machine without CUDA."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
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
