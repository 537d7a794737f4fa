"""Per-token log-probs of the answers in a `PairCollator` batch: one forward, logits only where answers are.

With a shared prefix each row holds an image and prompt once, then the chosen and the rejected answer. An
attention mask built from the row's segments lets every answer see the prompt and itself only, and position
ids restart after the prompt, so each answer is scored exactly as in a forward over its own conversation while
the vision tower and the decoder encode the prompt once. Either way, the LM head runs only on the positions that
predict answer tokens (`logits_to_keep`) and the log-softmax only on those rows.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedModel

from rlhfv_nb.config import FamilyConfig
from rlhfv_nb.ddpo import IGNORE_INDEX, selective_logps
from rlhfv_nb.families import ModelFamily, resolve_family

log = logging.getLogger(__name__)

# Attention implementations that take an arbitrary 4D mask (flash-attention kernels take none).
MASKED_ATTENTION = ("sdpa", "eager")
ANSWER_KEYS = ("answer_labels", "answer_rows", "answer_sources")
PACKING_KEYS = ("segments", "positions", "blocks")


def _base(model: Any) -> Any:
    """The transformers model inside distributed (DDP, DeepSpeed, FSDP) and peft wrappers."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attention_implementation(model: Any) -> str:
    """The decoder's attention implementation (a VLM's vision tower may use another)."""
    config = _base(model).config
    return getattr(config.get_text_config(), "_attn_implementation", None) or config._attn_implementation


def shares_prefix(model: Any, overrides: FamilyConfig | None = None, requested: bool = True) -> ModelFamily | None:
    """The family (params' `model.family` applied) whose attention rules a shared prefix follows, or None when
    each answer gets its own row: not requested, or an attention implementation that takes no custom mask."""
    if not requested:
        return None
    implementation = attention_implementation(model)
    if implementation not in MASKED_ATTENTION:
        log.info("attention %r takes no custom mask: chosen and rejected are scored in separate rows "
                 "(shared prefixes need one of %s)", implementation, MASKED_ATTENTION)
        return None
    return resolve_family(_base(model), overrides)


def packed_attention(model: Any, segments: torch.Tensor, positions: torch.Tensor,
                     blocks: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention of packed rows, `[rows, 1, length, length]`: causal, and an answer sees the prompt (segment
    0) and itself only; tokens of one block (`blocks` > 0: a prefix-LM's prompt, a Gemma 3 image) see each other.
    Sliding-window layers (Gemma 3) also drop keys `sliding_window` or more positions back: a dict of masks by
    layer type, as such models take it. Padding (segment -1) is seen by nobody; it sees itself, so that no row of
    the softmax is empty. `sdpa` takes the boolean mask, `eager` adds it (0 where seen, the dtype's minimum
    elsewhere).
    """
    query, key = segments[:, :, None], segments[:, None, :]
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    seen = causal & (key >= 0) & ((key == 0) | (key == query))
    seen |= (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)
    seen |= torch.eye(length, dtype=torch.bool, device=segments.device)
    text = _base(model).config.get_text_config()
    if "sliding_attention" not in (getattr(text, "layer_types", None) or ()):
        return _as_mask(seen, model)
    near = (positions[:, :, None] - positions[:, None, :]) < text.sliding_window
    return {"full_attention": _as_mask(seen, model), "sliding_attention": _as_mask(seen & near, model)}


def _as_mask(seen: torch.Tensor, model: Any) -> torch.Tensor:
    """A `[rows, length, length]` boolean mask in the form the decoder's attention takes, with a head axis."""
    seen = seen[:, None]
    if attention_implementation(model) == "sdpa":
        return seen
    dtype = _base(model).dtype
    return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(~seen, torch.finfo(dtype).min)


def packed_positions(model: Any, inputs: dict[str, torch.Tensor], segments: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
    """Position ids of packed rows: each answer continues its prompt as if it were alone after it.

    Models with multimodal rotary positions (Qwen-VL's `get_rope_index`) place the prompt themselves; every
    answer token then sits at its index after the prompt plus the model's offset for that prompt, as the model
    places text that follows it.
    """
    rope_index = getattr(_base(model).model, "get_rope_index", None)
    if rope_index is None:
        return positions
    prompt = segments == 0
    takes = inspect.signature(rope_index).parameters
    arguments = {name: value for name, value in inputs.items() if name in takes}
    prompt_positions, offsets = rope_index(**arguments, attention_mask=prompt.long())
    answers = (positions + offsets.view(-1, 1)).to(prompt_positions.dtype)
    return torch.where(prompt[None], prompt_positions, answers[None].expand_as(prompt_positions))


def answer_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logps, mask)`, each `[answers, longest]`: every answer token's log-prob under `model`, and which are real.

    `batch` is a `PairCollator` batch on the model's device; its answer, weight and reference entries are not
    model inputs and are left out of the forward.
    """
    labels, rows, sources = (batch[key] for key in ANSWER_KEYS)
    inputs = {key: value for key, value in batch.items()
              if key not in (*ANSWER_KEYS, *PACKING_KEYS, "weights", "ref_logps")}
    if "segments" in batch:
        inputs.pop("attention_mask", None)
        inputs["position_ids"] = packed_positions(model, inputs, batch["segments"], batch["positions"])
        inputs["attention_mask"] = packed_attention(model, batch["segments"], batch["positions"], batch["blocks"])
    mask = labels != IGNORE_INDEX
    keep = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool, device=labels.device)
    keep[rows[:, None].expand_as(sources)[mask], sources[mask]] = True
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [kept positions, vocab]
    # the kept positions come in (row, position) order: an answer token's logits are at its source's rank there
    rank = keep.flatten().cumsum(0) - 1
    flat_source = rows[:, None] * keep.shape[1] + sources
    picked = logits[rank[flat_source[mask]]]
    logps = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    logps[mask] = selective_logps(picked, labels[mask])
    return logps, mask
