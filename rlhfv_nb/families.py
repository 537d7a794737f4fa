"""Where each vision-language model family keeps its parts, and what training does with them.

One table serves every place that needs a model's layout: LoRA targets, the modules kept unquantised
under 4-bit loading, the modules a LoRA adapter trains and saves in full (`modules_to_save`), what
`freeze_vision` freezes, and the planner's split of parameters into vision, projector and language.
A family is resolved from the model's config (`model_type`); params can override every field
(`model.family`), and name a known family for a model type the table lacks.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from rlhfv_nb.config import FamilyConfig, LoraConfig, ModelConfig

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class UnknownModelFamily(ValueError):
    """The model's type is not in the family table and the params name no layout for it."""


@dataclass(frozen=True)
class ModelFamily:
    """Module paths (as `model.named_modules()` names them) of one family's parts.

    `vision`: the vision encoder (frozen by `freeze_vision`, kept unquantised). `projector`: what maps
    vision features into the decoder (trained in full by a LoRA adapter, kept unquantised); it may lie
    inside a `vision` path (Qwen-VL's merger), in which case `freeze_vision` leaves it trainable.
    `decoder`: the language model whose `decoder_linears` LoRA adapts.
    `image_aspect_ratio`: how the family's images reach its processor unless the params say
    (`model.image_aspect_ratio`): "pad" to a square of the processor's mean colour first (LLaVA-1.5's
    `image_aspect_ratio pad`), or "native", the processor's own handling (its resize/crop, any-res tiles,
    dynamic resolution).
    `bidirectional_prompt`: the prompt's tokens attend to the whole prompt (a prefix-LM: PaliGemma).
    `image_blocks`: an image's tokens attend to the whole image (Gemma 3, its `token_type_ids` 1).
    Both shape the attention of pairs scored after one shared prompt (`rlhfv_nb.pair_logps`).
    """

    name: str
    vision: tuple[str, ...]
    projector: tuple[str, ...]
    decoder: str
    decoder_linears: tuple[str, ...] = DECODER_LINEARS
    image_aspect_ratio: str = "native"
    bidirectional_prompt: bool = False
    image_blocks: bool = False

    @property
    def lora_target_modules(self) -> str:
        """A peft `target_modules` regex for the decoder's linear layers only (never the vision tower's)."""
        return rf"{re.escape(self.decoder)}\..*\.({'|'.join(map(re.escape, self.decoder_linears))})"

    @property
    def quant_skip_modules(self) -> list[str]:
        """Modules kept in full precision under 4-bit loading: vision tower, projector and LM head."""
        return [*self.vision, *self.projector, "lm_head"]

    @property
    def modules_to_save(self) -> list[str]:
        """Modules a LoRA adapter trains in full and saves with itself: the projector."""
        return list(self.projector)

    def part_of(self, name: str) -> str:
        """"projector", "vision" or "language" for a parameter or module name (the projector wins over vision)."""
        if any(inside(name, path) for path in self.projector):
            return "projector"
        if any(inside(name, path) for path in self.vision):
            return "vision"
        return "language"

    def frozen_by_freeze_vision(self, name: str) -> bool:
        """Whether `freeze_vision` freezes the parameter `name` (vision encoder, not its projector)."""
        return self.part_of(name) == "vision"


def inside(name: str, path: str) -> bool:
    """Whether the dotted `name` is `path` or lies below it (peft's wrappers may prefix it; peft's
    `modules_to_save` matches a module whose name ends with `path` the same way)."""
    return re.search(rf"(^|\.){re.escape(path)}(\.|$)", name) is not None


_LLAVA_LIKE = dict(vision=("model.vision_tower",), projector=("model.multi_modal_projector",),
                   decoder="model.language_model")
_QWEN_VL = dict(vision=("model.visual",), projector=("model.visual.merger",), decoder="model.language_model")
_IDEFICS = dict(vision=("model.vision_model",), projector=("model.connector",), decoder="model.text_model")

FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        # LLaVA-1.5 trains and evaluates on images padded to squares (`--image_aspect_ratio pad`, expand2square);
        # its HF processor alone would centre-crop them instead (a quarter of a 640x480 image's width lost).
        ModelFamily("llava", **_LLAVA_LIKE, image_aspect_ratio="pad"),
        # LLaVA-NeXT/OneVision's `image_newline` is a bare parameter of `model`: a LoRA adapter cannot save it.
        ModelFamily("llava_next", **_LLAVA_LIKE),
        ModelFamily("llava_onevision", **_LLAVA_LIKE),
        ModelFamily("paligemma", **_LLAVA_LIKE, bidirectional_prompt=True),
        ModelFamily("gemma3", **_LLAVA_LIKE, image_blocks=True),
        ModelFamily("internvl", **_LLAVA_LIKE),
        ModelFamily("mllama", vision=("model.vision_model",), projector=("model.multi_modal_projector",),
                    decoder="model.language_model"),
        ModelFamily("qwen2_vl", **_QWEN_VL),
        ModelFamily("qwen2_5_vl", **_QWEN_VL),
        ModelFamily("qwen3_vl", vision=("model.visual",),
                    projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
                    decoder="model.language_model"),
        ModelFamily("idefics3", **_IDEFICS),
        ModelFamily("smolvlm", **_IDEFICS),
    )
}


def model_type_of(model_or_config: Any) -> str:
    """The transformers `model_type` of a model (peft-wrapped or not), a config object or a config dict."""
    config = model_or_config
    if hasattr(config, "get_base_model"):
        config = config.get_base_model()
    config = getattr(config, "config", config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if not model_type:
        raise UnknownModelFamily(f"cannot tell the model type of {type(model_or_config).__name__}: no `model_type`")
    return model_type


def resolve_family(model_or_config: Any, overrides: FamilyConfig | None = None) -> ModelFamily:
    """The family of a model or config, with the params' `model.family` overrides applied.

    An unknown model type is an error naming it, unless the overrides name a known family (`name`) or
    give the whole layout (`vision`, `projector`, `decoder`).
    """
    overrides = overrides or FamilyConfig()
    model_type = model_type_of(model_or_config)
    known = FAMILIES.get(overrides.name or model_type)
    if overrides.name and known is None:
        raise UnknownModelFamily(f"model.family.name: {overrides.name!r} is not a known family "
                                 f"({', '.join(sorted(FAMILIES))})")
    changes = {key: tuple(value) if isinstance(value, list) else value
               for key, value in dataclasses.asdict(overrides).items() if key != "name" and value is not None}
    if known is None:
        missing = [key for key in ("vision", "projector", "decoder") if key not in changes]
        if missing:
            raise UnknownModelFamily(
                f"model type {model_type!r} is not in rlhfv_nb.families (known: {', '.join(sorted(FAMILIES))}); "
                f"set model.family.name to the family it is built like, or give model.family.{', '.join(missing)} "
                "(module paths as model.named_modules() names them)")
        return ModelFamily(name=model_type, **changes)
    return dataclasses.replace(known, **changes)


def resolve_image_aspect_ratio(model_or_config: Any, cfg: ModelConfig) -> str:
    """"pad" or "native": the params' `model.image_aspect_ratio` if set, else the model family's default
    (`ModelFamily.image_aspect_ratio`; the family as `resolve_family` finds it, `model.family` applied)."""
    if cfg.image_aspect_ratio is not None:
        return cfg.image_aspect_ratio
    return resolve_family(model_or_config, cfg.family).image_aspect_ratio


def lora_modules(family: ModelFamily, lora: LoraConfig) -> tuple[str, list[str]]:
    """peft's `target_modules` regex and `modules_to_save` list: the params' values, else the family's."""
    targets = lora.target_modules if lora.target_modules is not None else family.lora_target_modules
    saved = lora.modules_to_save if lora.modules_to_save is not None else family.modules_to_save
    return targets, list(saved)


def peft_modules_to_save(model: Any, paths: list[str], family: ModelFamily) -> list[str]:
    """The full names of the modules `paths` name, as peft can wrap them: a path names every module whose name
    ends with it (peft's match), and a module list (Qwen3-VL's DeepStack mergers) becomes its members. A path
    that names no module is an error: peft would skip it silently and train nothing there."""
    import torch

    modules = dict(model.named_modules())
    out = []
    for path in paths:
        found = [name for name in modules if name == path or name.endswith("." + path)]
        if not found:
            raise ValueError(f"model.lora.modules_to_save: {path!r} matches no module of this {family.name} model; "
                             f"its layout is vision {list(family.vision)}, projector {list(family.projector)}, "
                             f"decoder {family.decoder!r} (override with model.family or model.lora)")
        for name in found:
            if isinstance(modules[name], (torch.nn.ModuleList, torch.nn.ModuleDict)):
                out += [f"{name}.{child}" for child, _ in modules[name].named_children()]
            else:
                out.append(name)
    return out
