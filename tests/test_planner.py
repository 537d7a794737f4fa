"""Planner numbers against hand computation on LLaVA-1.5-7B's real shapes (CLIP ViT-L/14-336 + Llama-2-7B)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from rlhfv_nb.config import load_config
from rlhfv_nb.planner import (
    GIB,
    NF4_BYTES,
    HardwareError,
    ModelShape,
    Setup,
    check_hardware,
    estimate,
    plan,
    read_accelerate_config,
)

LLAVA_15_7B = {
    "model_type": "llava",
    "vision_feature_layer": -2,
    "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
}
# By hand. Llama layer: attention 4 * 4096^2 + MLP 3 * 4096 * 11008 + 2 RMSNorms of 4096.
LAYER = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096  # 202,383,360
LANGUAGE = 32 * LAYER + 2 * 32064 * 4096 + 4096  # + embeddings, lm_head, final norm = 6,738,939,904
# CLIP layer: 4 projections with bias, fc1/fc2 with bias, 2 LayerNorms; + patch conv, CLS, 577 positions, 2 LNs.
VISION = 24 * (4 * (1024**2 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024) + (
    3 * 14 * 14 * 1024 + 1024 + 577 * 1024 + 2 * 2048)  # 303,507,456
PROJECTOR = 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # 20,979,712
TOTAL = LANGUAGE + VISION + PROJECTOR
LINEAR_IN_LAYERS = 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # what NF4 quantises: 6,476,005,376
LORA_ALL = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@pytest.fixture(scope="module")
def shape() -> ModelShape:
    return ModelShape.from_config(LLAVA_15_7B)


def test_parameter_count_matches_llava_15_7b(shape, tmp_path):
    assert TOTAL == 7_063_427_072 and shape.image_tokens == 576
    assert sum(m.numel for m in shape.modules()) == TOTAL
    by_part = {p: sum(m.numel for m in shape.modules() if m.part == p) for p in ("vision", "projector", "language")}
    assert by_part == {"vision": VISION, "projector": PROJECTOR, "language": LANGUAGE}
    (tmp_path / "config.json").write_text(json.dumps(LLAVA_15_7B))
    from transformers import AutoConfig

    assert ModelShape.from_config(tmp_path) == ModelShape.from_config(tmp_path / "config.json") == shape
    assert ModelShape.from_config(AutoConfig.for_model(**LLAVA_15_7B)) == shape


def test_full_finetune_zero3_on_8_gpus(shape):
    setup = Setup(gpus=8, sharding="zero3", mixed_precision=True, gradient_checkpointing=True, seq_len=2048)
    result = estimate(shape, setup, gpu_memory_gb=80)
    memory = result.memory
    assert memory["weights"] == 2 * TOTAL / 8  # bf16 weights, sharded
    assert memory["gradients"] == 2 * TOTAL / 8
    assert memory["optimizer states"] == 12 * TOTAL / 8  # fp32 master + Adam m + v
    # checkpointing: each layer's input kept, one layer recomputed; 1 pair = 2 sequences of 2048 tokens
    text = 2 * 2048 * (32 * 4096 + 7 * 4096 + 3 * 4096 + 4 * 11008)
    vision = 2 * 577 * (24 * 1024 + 7 * 1024 + 2 * 4096)  # the vision tower trains too
    assert memory["activations"] == 2 * (text + vision)
    assert memory["logits"] == 2 * 2048 * 32064 * (2 + 8)
    assert memory["sharding buffers"] == 2 * 2 * LAYER
    assert result.fits and not result.warnings
    assert 17 * GIB < result.total_bytes < 19 * GIB

    # FLOPs: 8 N T with checkpointing (6 N T without), over matmul weights, each part over its own tokens
    tokens = {"language": 8 * 2 * 2048, "vision": 8 * 2 * 577, "projector": 8 * 2 * 576}
    matmul = {"language": LINEAR_IN_LAYERS + 4096 * 32064, "projector": 1024 * 4096 + 4096**2,
              "vision": 24 * (4 * 1024**2 + 2 * 1024 * 4096) + 3 * 14 * 14 * 1024}
    assert result.tokens_per_step == 32768
    assert result.flops_per_step == 8 * sum(matmul[p] * tokens[p] for p in tokens)
    no_checkpointing = estimate(shape, Setup(gpus=8, sharding="zero3", seq_len=2048), 80)
    assert no_checkpointing.flops_per_step == pytest.approx(result.flops_per_step * 6 / 8)
    assert no_checkpointing.memory["activations"] > 5 * memory["activations"]


def test_ddpo_encodes_each_pairs_image_and_prompt_once_and_runs_the_head_on_answers(shape):
    setup = Setup(gpus=8, sharding="zero3", mixed_precision=True, gradient_checkpointing=True, seq_len=2048,
                  shared_prefix=True, answers_only_logits=True, answer_len=200)
    result = estimate(shape, setup, gpu_memory_gb=80)
    language = (2048 - 200) + 2 * 200  # the prompt (image tokens included) once, then both answers
    text = language * (32 * 4096 + 7 * 4096 + 3 * 4096 + 4 * 11008)
    vision = 577 * (24 * 1024 + 7 * 1024 + 2 * 4096)  # one image per pair
    assert result.memory["activations"] == 2 * (text + vision)
    assert result.memory["logits"] == 2 * 200 * 32064 * (2 + 8)  # answer positions only
    assert result.tokens_per_step == 8 * language
    tokens = {"language": 8 * language, "vision": 8 * 577, "projector": 8 * 576}
    head = 4096 * 32064
    matmul = {"language": LINEAR_IN_LAYERS + head, "projector": 1024 * 4096 + 4096**2,
              "vision": 24 * (4 * 1024**2 + 2 * 1024 * 4096) + 3 * 14 * 14 * 1024}
    # 8 N T with checkpointing, but the LM head's N only over the 8 x 400 answer tokens
    expected = 8 * sum(matmul[p] * tokens[p] for p in tokens) - 8 * head * (8 * language - 8 * 400)
    assert result.flops_per_step == expected
    # without a known answer length only the 576 image tokens count as shared
    unknown = estimate(shape, Setup(**{**setup.__dict__, "answer_len": None}), 80)
    assert unknown.tokens_per_step == 8 * (576 + 2 * (2048 - 576))
    # the run's params turn both on for DDPO, neither for SFT; flash-attention takes no custom mask: no sharing
    ddpo = plan(load_config("params/full-8xa100.yaml"), 80, LLAVA_15_7B)
    assert ddpo.setup.shared_prefix and ddpo.setup.answers_only_logits
    sft = plan(load_config("params/full-8xa100.yaml"), 80, LLAVA_15_7B, stage="sft")
    assert not sft.setup.shared_prefix and not sft.setup.answers_only_logits
    flash = load_config("params/full-8xa100.yaml", model={"attn_implementation": "flash_attention_2"})
    assert not plan(flash, 80, LLAVA_15_7B).setup.shared_prefix


def test_sharding_stages_divide_what_they_shard(shape):
    by_stage = {s: estimate(shape, Setup(gpus=4, sharding=s), 80).memory for s in ("none", "zero1", "zero2", "zero3")}
    assert by_stage["none"]["optimizer states"] == 12 * TOTAL
    assert by_stage["zero1"]["optimizer states"] == 3 * TOTAL and by_stage["zero1"]["gradients"] == 2 * TOTAL
    assert by_stage["zero2"]["gradients"] == TOTAL / 2 and by_stage["zero2"]["weights"] == 2 * TOTAL
    assert by_stage["zero3"]["weights"] == TOTAL / 2


def test_qlora_on_one_gpu(shape):
    setup = Setup(load_in_4bit=True, lora_r=16, lora_targets=LORA_ALL, lora_dropout=0.05,
                  modules_to_save=("multi_modal_projector",), gradient_checkpointing=True, seq_len=2048)
    result = estimate(shape, setup, gpu_memory_gb=24)
    lora = 32 * 16 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))  # 39,976,960
    assert result.params == {"total": TOTAL, "quantized": LINEAR_IN_LAYERS, "lora": lora,
                             "trainable": lora + PROJECTOR}
    assert pytest.approx(4.127, abs=1e-3) == NF4_BYTES * 8  # QLoRA paper: 0.127 bits of double-quant overhead
    trainable = lora + PROJECTOR
    assert result.memory["weights"] == pytest.approx(
        LINEAR_IN_LAYERS * NF4_BYTES + (TOTAL - LINEAR_IN_LAYERS) * 4 + 4 * trainable)
    assert result.memory["gradients"] == 4 * trainable and result.memory["optimizer states"] == 8 * trainable
    # fp32 residual stream after k-bit prep; the frozen vision tower keeps no activations
    lora_per_token = 16 * 7 + 4 * 4096 + 2 * 4096 + 11008  # r per adapter + dropout copies of inputs
    text = 2 * 2048 * (32 * 4096 + 7 * 4096 + 3 * 4096 + 4 * 11008 + lora_per_token)
    assert result.memory["activations"] == 4 * text
    assert result.fits and 12 * GIB < result.total_bytes < 13.5 * GIB
    # FLOPs per pair: the frozen vision tower runs forward only (2NT); the projector trains in full (8NT with
    # checkpointing); the decoder runs forward, input gradients and the recompute (6NT) plus LoRA weight grads.
    vision = 24 * (4 * 1024**2 + 2 * 1024 * 4096) + 3 * 14 * 14 * 1024
    projector = 1024 * 4096 + 4096**2
    decoder = LINEAR_IN_LAYERS + 4096 * 32064 + lora
    assert result.flops_per_step == 2 * vision * 2 * 577 + 8 * projector * 2 * 576 + (6 * decoder + 2 * lora) * 2 * 2048


def test_warnings(shape):
    full_on_one = estimate(shape, Setup(seq_len=2048), gpu_memory_gb=24)
    assert not full_on_one.fits
    assert re.fullmatch(r"does not fit: \d+\.\d GiB needed per GPU, 24 GiB available", full_on_one.warnings[0])
    bare = estimate(shape, Setup(lora_r=8, lora_targets=r".*(q_proj|v_proj)"), 80)
    assert any("48 vision-tower layers" in w for w in bare.warnings)
    nothing = estimate(shape, Setup(lora_r=8, lora_targets=r".*qkv"), 80)
    assert any("match no linear layer" in w for w in nothing.warnings)
    pure_bf16 = estimate(shape, Setup(gpus=8, sharding="zero3", mixed_precision=False, lr=5e-7), 80)
    assert any("without an fp32 master copy" in w for w in pure_bf16.warnings)


def test_presets_plan_with_their_accelerate_configs(shape):
    assert read_accelerate_config("configs/accelerate/deepspeed_zero3.yaml") == ("zero3", "bf16")
    assert read_accelerate_config("configs/accelerate/fsdp.yaml") == ("zero3", "bf16")
    full = plan(load_config("params/full-8xa100.yaml"), 80, LLAVA_15_7B, num_items=5733)
    assert full.setup.global_batch == 8 and full.setup.sharding == "zero3" and full.setup.mixed_precision
    assert full.setup.steps == 2151  # 3 epochs of ceil(5733 / 8) steps (upstream: 2160)
    assert full.memory["optimizer states"] == 12 * TOTAL / 8 and full.fits
    qlora = plan(load_config("params/qlora-1gpu.yaml"), 24, LLAVA_15_7B)
    assert qlora.fits and qlora.params["quantized"] == LINEAR_IN_LAYERS and not qlora.warnings
    rows = qlora.to_rows()
    assert {"item", "value", "note"} == set(rows[0]) and any(r["item"] == "memory: total" for r in rows)


def test_check_hardware_fails_fast_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_hardware(load_config({})) == "CPU only"
    with pytest.raises(HardwareError, match=r"require_cuda: true.*cpu-tiny"):
        check_hardware(load_config({"launch": {"require_cuda": True}}))


def test_check_hardware_counts_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with pytest.raises(HardwareError, match=r"8 processes on 1 machine\(s\)\) start\(s\) 8 processes per machine, "
                                            r"but this machine has 1 GPU"):
        check_hardware(load_config("params/full-8xa100.yaml"))
    properties = type("Properties", (), {"name": "GPU", "total_memory": GIB})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # a launched process: accelerate's placement counts
    assert check_hardware(load_config("params/full-8xa100.yaml")) == "1 x GPU (1.0 GiB)"
