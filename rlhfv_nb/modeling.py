"""Load a vision-language model and its processor by hub id or folder; build the offline tiny model.

Every model, the tiny one included, goes through `load_model` -> `AutoModelForImageTextToText` and
`load_processor` (`AutoProcessor`, or its image-only form without torchvision), so tests exercise the code
path a real run uses.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    BitsAndBytesConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from rlhfv_nb import processing
from rlhfv_nb.config import ModelConfig, TinyModelConfig
from rlhfv_nb.families import ModelFamily, resolve_family, resolve_image_aspect_ratio

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
# LLaVA-1.5's conversation format; `{{ '\n' }}` keeps the newline (a literal one after a tag is stripped).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: "
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with LLaVA's special tokens and chat template."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(texts: Iterable[str], shape: TinyModelConfig, out_dir: Path, seed: int) -> Path:
    """Create a randomly initialised tiny LLaVA (CLIP vision + Llama) and save it with its processor.

    The tokenizer is trained on `texts` (the corpus the model will see). Returns `out_dir`, which
    `load_model` then reads exactly like a downloaded hub model.
    """
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, shape.vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=TINY_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden_size,
        intermediate_size=shape.vision_hidden_size * 2,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=shape.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def resolve_attn_implementation(requested: str) -> str:
    """`requested`, or "sdpa" with a logged note when flash-attn is asked for but not installed."""
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        log.warning("flash-attn is not installed; using attn_implementation='sdpa' instead")
        return "sdpa"
    return requested


def quantization_config(cfg: ModelConfig, family: ModelFamily) -> BitsAndBytesConfig | None:
    """NF4 4-bit with double quantization (QLoRA), computing in the configured dtype.

    The family's vision encoder, projector and LM head stay in full precision (the planner counts the same
    set). Full module paths: transformers 5 matches these from the start of a module's name.
    """
    if not cfg.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
        llm_int8_skip_modules=family.quant_skip_modules,
    )


def load_processor(path: str | Path, cfg: ModelConfig) -> ProcessorMixin:
    """The processor (tokenizer + image processor + chat template) saved with a model (`rlhfv_nb.processing`),
    padding images to squares when `cfg.image_aspect_ratio`, or else the model family's default, is "pad"."""
    aspect = cfg.image_aspect_ratio or resolve_image_aspect_ratio(_model_config(path, cfg), cfg)
    processor = processing.load_processor(path, trust_remote_code=cfg.trust_remote_code, image_aspect_ratio=aspect)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _model_config(path: str | Path, cfg: ModelConfig):
    """The model config of `path`; of its base model for a peft adapter folder without a config of its own."""
    folder = Path(path)
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        from peft import PeftConfig

        path = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
    return AutoConfig.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code)


def load_model(path: str | Path, cfg: ModelConfig, device_map: str | dict | None = None) -> PreTrainedModel:
    """A vision-language model from a hub id or folder, quantised if the config asks.

    A folder holding a peft adapter (`adapter_config.json`) is loaded as base + adapter.
    """
    path = str(path)
    adapter = path if (Path(path) / "adapter_config.json").exists() else None
    if adapter:
        from peft import PeftConfig

        path = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    kwargs = dict(
        config=config,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=resolve_attn_implementation(cfg.attn_implementation),
        trust_remote_code=cfg.trust_remote_code,
        quantization_config=quantization_config(cfg, resolve_family(config, cfg.family)),
    )
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter, is_trainable=False)
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
