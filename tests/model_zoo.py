"""Tiny, randomly initialised vision-language models of every family we support, saved like hub checkpoints.

`build_tiny(family, out_dir)` writes a folder that `AutoModelForImageTextToText.from_pretrained` and
`rlhfv_nb.processing.load_processor` read: the family's real model and processor classes at toy sizes (a 2-layer
decoder of width 32, a 1-2 layer vision tower, 32 px image tiles, 4-16 image tokens per image). The tokenizer is a
small byte-level BPE trained here, or a real one passed in (`real_tokenizers.load_tokenizer`), completed with the
special tokens the family's template and processor need.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import is_torchvision_available

from rlhfv_nb.processing import without_video

FAMILIES: tuple[str, ...] = (
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
    "idefics3", "smolvlm", "paligemma", "gemma3", "mllama", "internvl",
)
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 1024}  # every decoder (head_dim 16)
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
IMAGE = 32  # px: the side of one image tile
PINPOINTS = [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE]]  # LLaVA-NeXT / OneVision any-res grids
CORPUS = ("Describe the image. What is in the picture? There is a red ball, a green tent, a blue cup and a "
          "yellow star in the middle of the picture, next to a small dog and a large cat. Yes. No. ")

Built = tuple[PretrainedConfig, ProcessorMixin]


@dataclass(frozen=True)
class Tokens:
    """What a family's tokenizer must hold."""

    special: dict[str, str]  # bos_token / eos_token / pad_token / unk_token, filled in where the tokenizer has none
    extra: tuple[str, ...] = ()  # special tokens the template and processor write (image placeholder, turn markers)
    named: dict[str, str] = field(default_factory=dict)  # tokenizer attributes the processor requires (image_token)
    stops: tuple[str, ...] = ()  # generation also stops on these, where the vocabulary has them
    add_bos: bool = False  # whether the family's tokenizer prepends BOS (for the tokenizer trained here)


@dataclass(frozen=True)
class Family:
    tokens: Tokens
    template: str | None  # a chat template in the family's format (PaliGemma has none: prompt + `suffix`)
    build: Callable[[PreTrainedTokenizerBase, str | None], Built]  # processor first: it may add tokens


def _template(user: str, assistant: str, image: str, generation: str, end: str, assistant_end: str | None = None,
              start: str = "") -> str:
    """A chat template: `start`, then per message its role prefix, its parts (an image as `image`) and its end."""
    q = json.dumps
    ends = f"{{{{ {q(end)} if m['role'] == 'user' else {q(end if assistant_end is None else assistant_end)} }}}}"
    return (
        f"{start}{{% for m in messages %}}{{% if m['role'] == 'user' %}}{{{{ {q(user)} }}}}"
        f"{{% else %}}{{{{ {q(assistant)} }}}}{{% endif %}}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
        f"{{% if p['type'] == 'image' %}}{{{{ {q(image)} }}}}{{% elif p['type'] == 'text' %}}{{{{ p['text'] }}}}"
        f"{{% endif %}}{{% endfor %}}{{% endif %}}{ends}{{% endfor %}}"
        f"{{% if add_generation_prompt %}}{{{{ {q(generation)} }}}}{{% endif %}}"
    )


# --- tokenizer ---------------------------------------------------------------------------------------------

def _train_tokenizer(tokens: Tokens) -> PreTrainedTokenizerBase:
    """A byte-level BPE of a few hundred tokens holding all of `tokens`' special tokens."""
    specials = list(dict.fromkeys([*tokens.special.values(), *tokens.extra, *tokens.named.values()]))
    backend = Tokenizer(models.BPE(unk_token=tokens.special.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([CORPUS] * 8, trainer=trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=dict(tokens.named),
                                      add_bos_token=tokens.add_bos, **tokens.special)


def _complete_tokenizer(tokenizer: PreTrainedTokenizerBase, tokens: Tokens) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` with the family's special tokens it lacks (its BOS behaviour unchanged)."""
    named = {k: v for k, v in tokens.named.items() if getattr(tokenizer, k, None) != v}
    if named:  # named special tokens are declared when a tokenizer is loaded
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            out = type(tokenizer).from_pretrained(tmp, extra_special_tokens=named)
    else:
        out = copy.deepcopy(tokenizer)
    vocab = out.get_vocab()
    missing = {k: v for k, v in tokens.special.items() if getattr(out, k) is None}
    extra = [t for t in tokens.extra if t not in vocab]
    out.add_special_tokens({"extra_special_tokens": extra, **missing}, replace_extra_special_tokens=False)
    return out


# --- processors and configs, per family --------------------------------------------------------------------

def _with_video(cls: type[ProcessorMixin], video_cls: str, **kwargs: Any) -> ProcessorMixin:
    """`cls` with its default video processor where torchvision allows one, else without one (saving the
    same default video configuration, so the folder also loads with `AutoProcessor` where torchvision is)."""
    if is_torchvision_available():
        return cls(video_processor=getattr(tf, video_cls)(), **kwargs)
    processor = without_video(cls)(video_processor=None, **kwargs)
    processor.video_processor_dict = {"video_processor_type": video_cls}
    return processor


def _id(tok: PreTrainedTokenizerBase, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


def _text(tok: PreTrainedTokenizerBase, **kwargs: Any) -> dict[str, Any]:
    """Decoder config: the shared sizes, the tokenizer's vocabulary size and special token ids."""
    return {**TEXT, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, **kwargs}


def _clip() -> tf.CLIPVisionConfig:  # 2 layers: LLaVA reads the second-to-last
    return tf.CLIPVisionConfig(**{**VISION, "num_hidden_layers": 2}, image_size=IMAGE, patch_size=16,
                               projection_dim=32)


def _siglip(patch: int = 8) -> tf.SiglipVisionConfig:
    return tf.SiglipVisionConfig(**VISION, image_size=IMAGE, patch_size=patch, vision_use_head=False)


def _llava(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """CLIP (16 px patches: 4 tokens + CLS, dropped) + Llama."""
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE,
                                                                                         "width": IMAGE})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=16,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=template)
    config = tf.LlavaConfig(vision_config=_clip(), text_config=tf.LlamaConfig(**_text(tok)),
                            image_token_index=_id(tok, "<image>"), image_seq_length=4)
    return config, processor


def _llava_next(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """CLIP + Llama (Vicuna) with any-res tiling: a base tile and up to 2 more, 4 tokens each plus row ends."""
    image_processor = tf.LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE}, image_grid_pinpoints=PINPOINTS,
                                                    crop_size={"height": IMAGE, "width": IMAGE})
    processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=16,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                      chat_template=template)
    config = tf.LlavaNextConfig(vision_config=_clip(), text_config=tf.LlamaConfig(**_text(tok)),
                                image_token_index=_id(tok, "<image>"), image_grid_pinpoints=PINPOINTS)
    return config, processor


def _llava_onevision(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """SigLIP (16 px patches) + Qwen2 with any-res tiling."""
    image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": IMAGE, "width": IMAGE},
                                                         image_grid_pinpoints=PINPOINTS)
    processor = _with_video(tf.LlavaOnevisionProcessor, "LlavaOnevisionVideoProcessor",
                            image_processor=image_processor, tokenizer=tok, num_image_tokens=4,
                            vision_feature_select_strategy="full", chat_template=template)
    config = tf.LlavaOnevisionConfig(vision_config=_siglip(patch=16), text_config=tf.Qwen2Config(**_text(tok)),
                                     image_token_index=_id(tok, "<image>"), video_token_index=_id(tok, "<video>"),
                                     image_grid_pinpoints=PINPOINTS)
    return config, processor


def _qwen_vl(processor_cls: str, config_cls: str, video_cls: str, patch: int, **vision: Any,
             ) -> Callable[[PreTrainedTokenizerBase, str | None], Built]:
    """Builder for Qwen2-VL, Qwen2.5-VL, Qwen3-VL: images resized to about (4 * patch)^2 px, 2x2 merged patches."""

    def build(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
        pixels = (4 * patch) ** 2
        image_processor = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels},
                                                      patch_size=patch, merge_size=2)
        processor = _with_video(getattr(tf, processor_cls), video_cls, image_processor=image_processor,
                                tokenizer=tok, chat_template=template)
        text = _text(tok, head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
        ids = {f"{name}_id": _id(tok, token) for name, token in QWEN_VL.items()}
        config = getattr(tf, config_cls)(text_config=text, vision_config={**vision, "patch_size": patch}, **ids)
        return config, processor

    return build


def _idefics3(processor_cls: str, config_cls: str) -> Callable[[PreTrainedTokenizerBase, str | None], Built]:
    """Builder for Idefics3 and SmolVLM: one 32 px tile (no splitting), 16 patches, 2x2 pixel shuffle: 4 tokens."""

    def build(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
        image_processor = getattr(tf, processor_cls.replace("Processor", "ImageProcessorPil"))(
            size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE}, do_image_splitting=False)
        kwargs = {"image_processor": image_processor, "tokenizer": tok, "image_seq_len": 4, "chat_template": template}
        cls = getattr(tf, processor_cls)
        has_video = "video_processor" in cls.get_attributes()  # SmolVLM
        processor = _with_video(cls, "SmolVLMVideoProcessor", **kwargs) if has_video else cls(**kwargs)
        config = getattr(tf, config_cls)(vision_config={**VISION, "image_size": IMAGE, "patch_size": 8},
                                         text_config=tf.LlamaConfig(**_text(tok)).to_dict(),
                                         image_token_id=_id(tok, "<image>"), scale_factor=2)
        return config, processor

    return build


def _paligemma(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """SigLIP (8 px patches: 16 tokens) + Gemma; the processor adds the <loc...>/<seg...> tokens."""
    image_processor = tf.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    image_processor.image_seq_length = 16
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    config = tf.PaliGemmaConfig(vision_config=_siglip(), text_config=tf.GemmaConfig(**_text(tok, head_dim=16)),
                                image_token_index=_id(tok, "<image>"), projection_dim=TEXT["hidden_size"],
                                hidden_size=TEXT["hidden_size"], vocab_size=len(tok))
    return config, processor


def _gemma3(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """SigLIP (16 patches, pooled to 4 soft tokens) + Gemma 3."""
    image_processor = tf.Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                   chat_template=template)
    text = tf.Gemma3TextConfig(**_text(tok, head_dim=16, query_pre_attn_scalar=16, sliding_window=64))
    config = tf.Gemma3Config(vision_config=_siglip(), text_config=text, mm_tokens_per_image=4,
                             boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                             image_token_index=tok.image_token_id)
    return config, processor


def _mllama(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """Mllama: up to 2 tiles of 32 px; decoder layer 1 cross-attends to the image, layer 0 is self-attention."""
    image_processor = tf.MllamaImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, max_image_tiles=2)
    processor = tf.MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    vision = tf.MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                                   attention_heads=2, image_size=IMAGE, patch_size=8, max_num_tiles=2,
                                   vision_output_dim=64, intermediate_layers_indices=[0],
                                   supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    text = tf.MllamaTextConfig(**_text(tok, cross_attention_layers=[1]))
    config = tf.MllamaConfig(vision_config=vision, text_config=text, image_token_index=_id(tok, "<|image|>"))
    return config, processor


def _internvl(tok: PreTrainedTokenizerBase, template: str | None) -> Built:
    """InternViT (8 px patches, pixel shuffle: 4 tokens per tile) + Qwen2; up to 2 tiles and a thumbnail."""
    image_processor = tf.GotOcr2ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, max_patches=2)
    processor = _with_video(tf.InternVLProcessor, "InternVLVideoProcessor", image_processor=image_processor,
                            tokenizer=tok, image_seq_length=4, chat_template=template)
    config = tf.InternVLConfig(vision_config=tf.InternVLVisionConfig(**VISION, image_size=IMAGE, patch_size=8),
                               text_config=tf.Qwen2Config(**_text(tok)), image_token_id=tok.context_image_token_id,
                               image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False)  # as InternVL3-8B
    return config, processor


# --- the family table --------------------------------------------------------------------------------------

LLAMA2 = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|finetune_right_pad_id|>"}
QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
QWEN_VL = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
           "vision_end_token": "<|vision_end|>"}
IDEFICS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")  # its <global-img>, <row_1_col_1>: text
SMOLVLM = (*IDEFICS, "<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
ZERO_INITS = ("mm_input_projection_weight", "gate", "cls_token", "position_embeddings")
CHATML = {"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n", "generation": "<|im_start|>assistant\n",
          "end": "<|im_end|>\n"}
VICUNA = {"user": "USER: ", "assistant": "ASSISTANT: ", "image": "<image>\n", "generation": "ASSISTANT:", "end": " ",
          "assistant_end": "</s>"}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IDEFICS_TURNS = {"user": "User:", "assistant": "Assistant: ", "image": "<image>", "generation": "Assistant:",
                 "end": "<end_of_utterance>\n"}
LLAMA3_TURNS = {"user": "<|start_header_id|>user<|end_header_id|>\n\n", "image": "<|image|>",
                "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n", "end": "<|eot_id|>",
                "generation": "<|start_header_id|>assistant<|end_header_id|>\n\n", "start": "{{ bos_token }}"}
GEMMA_TURNS = {"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n", "image": "<start_of_image>",
               "generation": "<start_of_turn>model\n", "end": "<end_of_turn>\n", "start": "{{ bos_token }}"}


def _qwen(processor_cls: str, config_cls: str, video_cls: str, patch: int, **vision: Any) -> Family:
    tokens = Tokens(QWEN, ("<|im_start|>", *QWEN_VL.values()), stops=("<|endoftext|>",))
    return Family(tokens, _template(**CHATML, image=QWEN_IMAGE),
                  _qwen_vl(processor_cls, config_cls, video_cls, patch, spatial_merge_size=2, **vision))


FAMILY: dict[str, Family] = {
    "llava": Family(Tokens(LLAMA2, ("<image>",), add_bos=True), _template(**VICUNA), _llava),
    "llava_next": Family(Tokens(LLAMA2, ("<image>",), add_bos=True), _template(**VICUNA), _llava_next),
    "llava_onevision": Family(Tokens(QWEN, ("<|im_start|>", "<image>", "<video>")),
                              _template(**CHATML, image="<image>\n"), _llava_onevision),
    "qwen2_vl": _qwen("Qwen2VLProcessor", "Qwen2VLConfig", "Qwen2VLVideoProcessor", 14,
                      depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
    "qwen2_5_vl": _qwen("Qwen2_5_VLProcessor", "Qwen2_5_VLConfig", "Qwen2VLVideoProcessor", 14,
                        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                        window_size=56, fullatt_block_indexes=[1]),
    "qwen3_vl": _qwen("Qwen3VLProcessor", "Qwen3VLConfig", "Qwen3VLVideoProcessor", 16,
                      depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                      num_position_embeddings=16, deepstack_visual_indexes=[0]),
    "idefics3": Family(Tokens({**LLAMA3, "pad_token": "<|reserved_special_token_0|>"}, IDEFICS,
                              stops=("<end_of_utterance>",), add_bos=True),
                       _template(**IDEFICS_TURNS, start="{{ bos_token }}"), _idefics3("Idefics3Processor",
                                                                                     "Idefics3Config")),
    "smolvlm": Family(Tokens({"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
                              "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}, SMOLVLM),
                      _template(**IDEFICS_TURNS, start="<|im_start|>"), _idefics3("SmolVLMProcessor", "SmolVLMConfig")),
    "paligemma": Family(Tokens(GEMMA, named={"image_token": "<image>"}, add_bos=True), None, _paligemma),
    "gemma3": Family(Tokens(GEMMA, ("<start_of_turn>", "<end_of_turn>"),
                            {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                             "eoi_token": "<end_of_image>"}, ("<eos>", "<end_of_turn>"), add_bos=True),
                     _template(**GEMMA_TURNS), _gemma3),
    "mllama": Family(Tokens(LLAMA3, ("<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                            stops=("<|eom_id|>", "<|eot_id|>"), add_bos=True),
                     _template(**LLAMA3_TURNS), _mllama),
    "internvl": Family(Tokens(QWEN, ("<|im_start|>",), {"start_image_token": "<img>", "end_image_token": "</img>",
                                                        "context_image_token": "<IMG_CONTEXT>",
                                                        "video_token": "<video>"}),
                       _template(**CHATML, image="<IMG_CONTEXT>\n"), _internvl),
}


def _randomise_zero_inits(model: torch.nn.Module) -> None:
    """Random values for the weights some families initialise to zero (Gemma 3's image projection, Mllama's
    cross-attention and tile gates, InternViT's CLS and position embeddings): with zeros the image would not
    reach the logits of a random model, as it does those of a trained one."""
    for name, param in model.named_parameters():
        if name.endswith(ZERO_INITS) and not param.any():
            torch.nn.init.normal_(param, std=1.0 if name.endswith("gate") else 0.02)


def build_tiny(family: str, out_dir: Path, tokenizer: PreTrainedTokenizerBase | None = None,
               chat_template: str | None = None, seed: int = 0) -> Path:
    """Create a random tiny `family` model with its processor and save both into `out_dir`; returns `out_dir`.

    `tokenizer=None` trains a small BPE with the family's special tokens; a given tokenizer is copied and
    completed with the special tokens it lacks. `chat_template=None` takes a template in the family's format
    (none for PaliGemma). Generation stops on eos and on the family's end-of-turn tokens.
    """
    spec = FAMILY[family]
    tokenizer = _train_tokenizer(spec.tokens) if tokenizer is None else _complete_tokenizer(tokenizer, spec.tokens)
    template = chat_template if chat_template is not None else spec.template
    tokenizer.chat_template = template
    config, processor = spec.build(tokenizer, template)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    _randomise_zero_inits(model)
    vocab = tokenizer.get_vocab()
    stops = list(dict.fromkeys([tokenizer.eos_token_id, *(vocab[t] for t in spec.tokens.stops if t in vocab)]))
    model.generation_config.update(eos_token_id=stops[0] if len(stops) == 1 else stops,
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
