"""Turn (image, question, answer) rows into model inputs through the model's own processor and chat template.

One prompt builder and one batch builder serve SFT, the reference log-prob pass, DDPO and generation,
so every stage sees exactly the same tokens.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import ProcessorMixin

from rlhfv_nb.data import decode_image
from rlhfv_nb.ddpo import IGNORE_INDEX


def user_message(question: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


def answers_as_suffix(processor: ProcessorMixin) -> bool:
    """Whether the processor takes the answer as a `suffix` after a plain prompt (PaliGemma) instead of a chat turn.

    Such a processor marks the suffix's tokens `token_type_ids` 1, so they attend causally; the prompt's are 0.
    """
    return getattr(processor, "chat_template", None) is None and _takes_suffix(type(processor))


@functools.cache
def _takes_suffix(processor_class: type) -> bool:
    return "suffix" in inspect.signature(processor_class.__call__).parameters


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The prompt for one image and a question, ending where the answer starts (the model's chat template)."""
    if answers_as_suffix(processor):
        return processor.image_token + question  # the processor adds BOS after the image and a newline
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"{type(processor).__name__} has no chat template: save one with the processor "
                         "(processor.chat_template) so prompts are formatted as the model was trained")
    return processor.apply_chat_template([user_message(question)], add_generation_prompt=True, tokenize=False)


def adds_bos(processor: ProcessorMixin, prompt: str) -> bool:
    """Whether tokenising `prompt` should add special tokens: not when the template already wrote the BOS."""
    bos = processor.tokenizer.bos_token
    return not (bos and prompt.startswith(bos))


def end_of_turn(ids: list[int], tokenizer: Any) -> list[int]:
    """An answer's ids cut after its first special token (the end of turn); without one, trailing whitespace-only
    tokens are dropped and EOS appended. So every answer ends with exactly one end-of-turn token."""
    special = special_ids(tokenizer)
    for index, token in enumerate(ids):
        if token in special:
            return ids[: index + 1]
    while ids and not tokenizer.decode(ids[-1:]).strip():
        ids = ids[:-1]
    return [*ids, tokenizer.eos_token_id]


@functools.lru_cache(maxsize=8)
def special_ids(tokenizer: Any) -> frozenset[int]:
    """The tokenizer's special token ids, its added special tokens included (Gemma's <end_of_turn> and the like).

    Cached per tokenizer: `response_ids` runs once per answer, and some vocabularies add thousands of tokens.
    """
    return frozenset(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def response_ids(processor: ProcessorMixin, question: str, answer: str) -> list[int]:
    """Token ids of `answer` exactly as they follow the prompt when the whole conversation is tokenised at once.

    The model generates these ids after the prompt: no stray space tokens at the seam, and one end-of-turn
    token at the end (the template's own, else EOS).
    """
    tokenizer = processor.tokenizer
    if answers_as_suffix(processor):
        return tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    prompt = prompt_text(processor, question)
    full = processor.apply_chat_template(
        [user_message(question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        tokenize=False,
    )
    if not full.startswith(prompt):
        # Some templates render the assistant header differently in a whole conversation than as the generation
        # prompt (LLaVA-OneVision: "assistant \n" vs "assistant\n"): the answer follows the generation prompt,
        # as the model generates it, with the template's own ending.
        seam = len(os.path.commonprefix([prompt, full]))
        at = full.find(answer.strip(), seam)
        if at < 0:
            raise ValueError(f"the chat template does not render the answer {answer!r} after the prompt of "
                             f"{question!r}; its tokens cannot be separated from the prompt's")
        full = prompt + full[at:]
    special = adds_bos(processor, prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=special)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the prompt of {question!r} tokenises differently once an answer follows; the answer's "
                         "tokens cannot be separated from the prompt's")
    return end_of_turn(full_ids[len(prompt_ids):], tokenizer)


def prompt_length(processor: ProcessorMixin, question: str, image_data: bytes) -> int:
    """Number of prompt tokens once the processor has expanded the image placeholder."""
    return len(encode_prompts(processor, [image_data], [question], "right")["input_ids"][0])


def encode_prompts(processor: ProcessorMixin, images: Sequence[Any], questions: Sequence[str], padding_side: str):
    """The processor's batch (ids, attention mask, pixel values, ...) for prompts of one image each.

    Images are PIL images or encoded image cells, passed nested per prompt (one list each, as every family's
    processor accepts and several require).
    """
    prompts = [prompt_text(processor, q) for q in questions]
    encoded = processor(
        text=prompts,
        images=[[image if isinstance(image, Image.Image) else decode_image(image)] for image in images],
        return_tensors="pt",
        padding=True,
        padding_side=padding_side,
        add_special_tokens=adds_bos(processor, prompts[0]),
    )
    encoded.pop("labels", None)  # PaliGemma's processor labels every prompt (all masked); labels are built here
    return encoded


# Processor outputs that hold one value per token; the rest (pixels, grid sizes) are per image.
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "cross_attention_mask")


@dataclass
class Sequences:
    """Right-padded prompt+response batch with processor extras (pixel values, grid sizes)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    response_starts: list[int]


def _extend_per_token(value: torch.Tensor, lengths: list[int], totals: list[int], width: int,
                      response_value: int | None) -> torch.Tensor:
    """A per-token tensor carried from each prompt's length to its prompt+response length, zero-padded to `width`.

    Response positions take `response_value` if given, else the prompt's last token's value (text after the
    prompt is text too: not an image token, and it sees the images the prompt's end sees).
    """
    out = value.new_zeros((value.shape[0], width, *value.shape[2:]))
    for row, (length, total) in enumerate(zip(lengths, totals)):
        out[row, :length] = value[row, :length]
        out[row, length:total] = response_value if response_value is not None else value[row, length - 1]
    return out


def build_batch(
    processor: ProcessorMixin, images: Sequence[bytes], questions: Sequence[str], responses: Sequence[list[int]]
) -> Sequences:
    """Model inputs for `prompt + response` sequences; labels mask everything but the response tokens.

    Every per-token tensor the processor returns is carried to the full width, so the response is scored
    exactly as in a forward over the whole conversation.
    """
    encoded = encode_prompts(processor, images, questions, padding_side="right")
    unknown = [key for key, value in encoded.items() if key not in PER_TOKEN_KEYS and torch.is_tensor(value)
               and value.shape[:2] == encoded["input_ids"].shape]
    if unknown:
        raise ValueError(f"{type(processor).__name__} returns {unknown}, shaped like the token ids: add them to "
                         "rlhfv_nb.features.PER_TOKEN_KEYS with their value for answer tokens")
    lengths = encoded["attention_mask"].sum(-1).tolist()
    if any(not mask[:length].all() for mask, length in zip(encoded["attention_mask"], lengths)):
        raise ValueError(f"{type(processor).__name__} did not pad the prompts on the right as asked")
    totals = [length + len(response) for length, response in zip(lengths, responses)]
    width = max(totals)
    inputs = {key: value for key, value in encoded.items() if key not in PER_TOKEN_KEYS}
    answer_values = {"attention_mask": 1, "token_type_ids": 1 if answers_as_suffix(processor) else None}
    for key in PER_TOKEN_KEYS[1:]:
        if key in encoded:
            inputs[key] = _extend_per_token(encoded[key], lengths, totals, width, answer_values.get(key))
    input_ids = torch.full((len(totals), width), processor.tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(totals), width), IGNORE_INDEX, dtype=torch.long)
    for row, (length, total, response) in enumerate(zip(lengths, totals, responses)):
        input_ids[row, :length] = encoded["input_ids"][row, :length]
        input_ids[row, length:total] = labels[row, length:total] = torch.tensor(list(response), dtype=torch.long)
    inputs["input_ids"] = input_ids
    return Sequences(inputs, labels, lengths)


def aligned(
    values: Sequence[Sequence[float]], starts: Sequence[int], shape: tuple[int, int], fill: float
) -> torch.Tensor:
    """A `[batch, length]` tensor with each response's per-token values placed at its label positions."""
    out = torch.full(shape, fill, dtype=torch.float32)
    for row, (start, row_values) in enumerate(zip(starts, values)):
        out[row, start : start + len(row_values)] = torch.tensor(row_values, dtype=torch.float32)
    return out


class SFTCollator:
    """Batches of SFT rows (`image`, `question`, `answer_ids`) with response-only labels."""

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = build_batch(self.processor, [r["image"] for r in rows], [r["question"] for r in rows],
                            [r["answer_ids"] for r in rows])
        return {**batch.inputs, "labels": batch.labels}


class PairCollator:
    """Chosen and rejected of each pair in one concatenated batch (chosen first, then rejected).

    When rows carry them, adds `weights` (dense DDPO token weights) and `ref_logps` (per-token
    reference log-probs), both aligned with `labels`.
    """

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [r["image"] for r in rows] * 2
        questions = [r["question"] for r in rows] * 2
        responses = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        batch = build_batch(self.processor, images, questions, responses)
        shape = tuple(batch.labels.shape)
        out = {**batch.inputs, "labels": batch.labels}
        if "chosen_weights" in rows[0]:
            weights = [r["chosen_weights"] for r in rows] + [r["rejected_weights"] for r in rows]
            out["weights"] = aligned(weights, batch.response_starts, shape, 0.0)
        if "ref_chosen_logps" in rows[0]:
            ref = [r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows]
            out["ref_logps"] = aligned(ref, batch.response_starts, shape, 0.0)
        return out
