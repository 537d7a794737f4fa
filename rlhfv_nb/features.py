"""Turn (image, question, answer) rows into model inputs through the model's own processor and chat template.

One prompt builder and one batch builder serve SFT, the reference log-prob pass, DDPO and generation,
so every stage sees exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import ProcessorMixin

from rlhfv_nb.data import decode_image
from rlhfv_nb.ddpo import IGNORE_INDEX


def user_message(question: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The chat-templated prompt for one image and a question, ending where the answer starts."""
    return processor.apply_chat_template([user_message(question)], add_generation_prompt=True, tokenize=False)


def response_ids(processor: ProcessorMixin, question: str, answer: str) -> list[int]:
    """Token ids of `answer` as the chat template renders the assistant turn, ending with EOS."""
    tokenizer = processor.tokenizer
    prompt = prompt_text(processor, question)
    full = processor.apply_chat_template(
        [user_message(question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        tokenize=False,
    )
    text = full[len(prompt):] if full.startswith(prompt) else " " + answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


def prompt_length(processor: ProcessorMixin, question: str, image_data: bytes) -> int:
    """Number of prompt tokens once the processor has expanded the image placeholder."""
    encoded = processor(text=[prompt_text(processor, question)], images=[decode_image(image_data)])
    return len(encoded["input_ids"][0])


def encode_prompts(processor: ProcessorMixin, images: Sequence[Any], questions: Sequence[str], padding_side: str):
    """The processor's batch (ids, attention mask, pixel values, ...) for chat-templated prompts."""
    return processor(
        text=[prompt_text(processor, q) for q in questions],
        images=[decode_image(data) for data in images],
        return_tensors="pt",
        padding=True,
        padding_side=padding_side,
    )


@dataclass
class Sequences:
    """Right-padded prompt+response batch with processor extras (pixel values, grid sizes)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    response_starts: list[int]


def build_batch(
    processor: ProcessorMixin, images: Sequence[bytes], questions: Sequence[str], responses: Sequence[list[int]]
) -> Sequences:
    """Model inputs for `prompt + response` sequences; labels mask everything but the response tokens."""
    tokenizer = processor.tokenizer
    encoded = encode_prompts(processor, images, questions, padding_side="right")
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    sequences = [p + list(r) for p, r in zip(prompt_ids, responses)]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, sequence) in enumerate(zip(prompt_ids, sequences)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention[row, : len(sequence)] = 1
        labels[row, len(prompt) : len(sequence)] = torch.tensor(sequence[len(prompt):])
    inputs = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    inputs.update(input_ids=input_ids, attention_mask=attention)
    if "token_type_ids" in inputs:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return Sequences(inputs, labels, [len(p) for p in prompt_ids])


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
