"""The family table: resolution from a model type, overrides from params, clear errors for unknown types."""

from __future__ import annotations

import re

import pytest

from rlhfv_nb.config import FamilyConfig, LoraConfig
from rlhfv_nb.families import (
    FAMILIES,
    UnknownModelFamily,
    lora_modules,
    model_type_of,
    peft_modules_to_save,
    resolve_family,
)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_resolves_from_its_model_type(model_type):
    family = resolve_family({"model_type": model_type})
    assert family.name == model_type and family.decoder and family.vision and family.projector
    assert family.quant_skip_modules == [*family.vision, *family.projector, "lm_head"]


def test_parts_follow_the_layout_with_the_projector_inside_the_vision_path():
    qwen = resolve_family({"model_type": "qwen2_5_vl"})
    assert qwen.part_of("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert qwen.part_of("model.visual.merger.mlp.0.weight") == "projector"
    assert qwen.part_of("base_model.model.model.visual.merger.mlp.0.lora_A.weight") == "projector"  # peft-wrapped
    assert qwen.part_of("model.language_model.layers.0.mlp.up_proj.weight") == "language"
    assert qwen.part_of("lm_head.weight") == "language"
    assert not qwen.frozen_by_freeze_vision("model.visual.merger.ln_q.weight")
    assert qwen.part_of("model.visualiser.x") == "language"  # a path prefix, not a string prefix


def test_lora_targets_are_the_decoder_linears_only():
    targets = resolve_family({"model_type": "idefics3"}).lora_target_modules
    assert re.fullmatch(targets, "model.text_model.layers.3.self_attn.q_proj")
    assert re.fullmatch(targets, "model.text_model.layers.3.mlp.down_proj")
    assert not re.fullmatch(targets, "model.vision_model.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(targets, "model.connector.modality_projection.proj")


def test_params_override_the_table():
    lora = LoraConfig(enabled=True)
    family = resolve_family({"model_type": "llava"}, FamilyConfig(decoder="model.lm", decoder_linears=["q_proj"]))
    assert lora_modules(family, lora) == (r"model\.lm\..*\.(q_proj)", ["model.multi_modal_projector"])
    explicit = LoraConfig(enabled=True, target_modules=r".*\.v_proj", modules_to_save=[])
    assert lora_modules(family, explicit) == (r".*\.v_proj", [])


def test_an_unknown_model_type_is_named_with_the_ways_out():
    with pytest.raises(UnknownModelFamily, match=r"model type 'my_vlm' is not in rlhfv_nb.families .*"
                                                 r"model.family.name .*model.family.vision, projector, decoder"):
        resolve_family({"model_type": "my_vlm"})
    assert resolve_family({"model_type": "my_vlm"}, FamilyConfig(name="qwen2_vl")).vision == ("model.visual",)
    custom = resolve_family({"model_type": "my_vlm"},
                            FamilyConfig(vision=["model.eye"], projector=["model.bridge"], decoder="model.brain"))
    assert (custom.name, custom.vision, custom.projector, custom.decoder) == \
        ("my_vlm", ("model.eye",), ("model.bridge",), "model.brain")
    with pytest.raises(UnknownModelFamily, match="'llama9' is not a known family"):
        resolve_family({"model_type": "llava"}, FamilyConfig(name="llama9"))
    with pytest.raises(UnknownModelFamily, match="no `model_type`"):
        model_type_of({})


def test_modules_to_save_are_resolved_to_real_modules_as_peft_matches_them():
    from torch import nn

    qwen3 = resolve_family({"model_type": "qwen3_vl"})
    visual = nn.Module()
    visual.merger, visual.deepstack_merger_list = nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    inner = nn.Module()
    inner.visual = visual
    model = nn.Module()
    model.model = inner
    # full paths, a module list expanded into its members (peft wraps no ModuleList), and a short name peft-style
    assert peft_modules_to_save(model, ["model.visual.merger", "model.visual.deepstack_merger_list"], qwen3) == \
        ["model.visual.merger", "model.visual.deepstack_merger_list.0", "model.visual.deepstack_merger_list.1"]
    assert peft_modules_to_save(model, ["merger"], qwen3) == ["model.visual.merger"]
    with pytest.raises(ValueError, match=r"'multi_modal_projector' matches no module of this qwen3_vl model"):
        peft_modules_to_save(model, ["multi_modal_projector"], qwen3)
