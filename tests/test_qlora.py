"""The QLoRA path on a tiny LLaVA with bitsandbytes on CPU: what is 4-bit, what has LoRA, what trains, one step.

The planner's module names and counts are checked against the real model here too, so its LLaVA-7B numbers
rest on the same names peft and bitsandbytes see.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_run import CPU_TINY, make_run

from rlhfv_nb.config import load_config
from rlhfv_nb.families import lora_modules
from rlhfv_nb.launch import launch_stage
from rlhfv_nb.modeling import count_parameters, load_model
from rlhfv_nb.planner import ModelShape, Setup, estimate
from rlhfv_nb.train import prepare_for_training, read_log

QLORA = {"load_in_4bit": True, "dtype": "float32",  # bnb computes in fp32 on CPU
         "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    params = make_run(tmp_path_factory.mktemp("qlora") / "run")
    params["model"].update(QLORA)
    params["ddpo"].update(max_steps=1, batch_size=2)
    return load_config(CPU_TINY, **params)


@pytest.fixture(scope="module")
def quantised(run):
    bnb = pytest.importorskip("bitsandbytes")
    try:
        model = load_model(run.run_path / "base", run.model, device_map="cpu")
    except (RuntimeError, ValueError, ImportError) as err:
        pytest.skip(f"bitsandbytes {bnb.__version__} refuses to load 4-bit on CPU: {err}")
    return model


def _names(model: torch.nn.Module, kind: type) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, kind)}


def test_language_model_linears_are_4bit(run, quantised):
    import bitsandbytes as bnb

    four_bit = _names(quantised, bnb.nn.Linear4bit)
    shape = ModelShape.from_config(quantised.config)
    planned = {m.name for m in shape.modules() if m.linear and "language_model.layers" in m.name}
    assert four_bit == planned and len(four_bit) == 7 * run.model.tiny.layers
    plain = {n for n in _names(quantised, torch.nn.Linear) if n not in four_bit}
    assert plain and all(("vision_tower" in n) or ("multi_modal_projector" in n) or n == "lm_head" for n in plain)
    assert quantised.hf_quantizer.quantization_config.bnb_4bit_quant_type == "nf4"
    assert quantised.hf_quantizer.quantization_config.bnb_4bit_use_double_quant


def test_lora_only_on_language_model_and_trainable_set(run, quantised):
    model = prepare_for_training(quantised, run.model)
    lora = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert len(lora) == 7 * run.model.tiny.layers
    assert all(".language_model." in name and "vision_tower" not in name for name in lora)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    assert any("multi_modal_projector.modules_to_save" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)

    # The planner counts the same trainable parameters (LoRA + the projector copy) from the config alone.
    shape = ModelShape.from_config(quantised.config)
    targets, saved = lora_modules(shape.family, run.model.lora)
    assert saved == ["model.multi_modal_projector"]
    setup = Setup(load_in_4bit=True, lora_r=run.model.lora.r, lora_targets=targets, modules_to_save=tuple(saved),
                  dtype="float32")
    planned = estimate(shape, setup, gpu_memory_gb=1).params
    assert planned["trainable"] == count_parameters(model)["trainable"]


def test_planner_counts_every_parameter(run):
    plain = load_model(run.run_path / "base", load_config(CPU_TINY, model={"tiny": vars(run.model.tiny)}).model)
    assert sum(m.numel for m in ModelShape.from_config(plain.config).modules()) == count_parameters(plain)["total"]


def test_one_qlora_ddpo_step(run, quantised):
    final = launch_stage(run, "ddpo", gamma=2.0)
    logs = [r for r in read_log(final.parent / "log.jsonl") if "ddpo_loss" in r]
    assert [r["step"] for r in logs] == [1] and math.isfinite(logs[0]["ddpo_loss"])
    assert (final / "adapter_config.json").exists()
    from safetensors.torch import load_file

    adapter = load_file(final / "adapter_model.safetensors")
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0: it moved
