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
from rlhfv_nb.families import ModelFamily


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
    """Right-padded rows, each a prompt followed by one or more answers, with processor extras (pixels, grids).

    Every answer is scored as if it followed its prompt alone: it starts at position `prompt length` whatever
    answers precede it in the row. `segments` marks each position: 0 prompt, `k + 1` the row's k-th answer, -1
    padding. `positions` holds each position's index in its own prompt + answer sequence. Answers are kept in
    the order given: `answer_rows[k]` holds answer k, from `answer_starts[k]` on.
    """

    inputs: dict[str, torch.Tensor]
    answers: list[list[int]]
    answer_rows: list[int]
    answer_starts: list[int]
    prompt_lengths: list[int]
    segments: torch.Tensor
    positions: torch.Tensor

    @property
    def packed(self) -> bool:
        """Whether some row holds more than one answer (its answers then share the row's prompt)."""
        return len(set(self.answer_rows)) < len(self.answer_rows)

    def labels(self) -> torch.Tensor:
        """`[rows, length]` labels for a forward that computes its own loss: each row's answer, else IGNORE_INDEX."""
        if self.packed:
            raise ValueError("labels over whole rows hold one answer per row; these rows share prompts")
        labels = torch.full(tuple(self.segments.shape), IGNORE_INDEX, dtype=torch.long)
        for row, start, answer in zip(self.answer_rows, self.answer_starts, self.answers):
            labels[row, start : start + len(answer)] = torch.tensor(answer, dtype=torch.long)
        return labels

    def answer_index(self) -> dict[str, torch.Tensor]:
        """Where each answer's tokens are predicted: `answer_labels` `[answers, longest]` (IGNORE_INDEX after the
        end), `answer_rows` `[answers]`, and `answer_sources`, the position whose logits predict each token."""
        width = max(len(answer) for answer in self.answers)
        labels = torch.full((len(self.answers), width), IGNORE_INDEX, dtype=torch.long)
        sources = torch.zeros((len(self.answers), width), dtype=torch.long)
        for k, (row, start, answer) in enumerate(zip(self.answer_rows, self.answer_starts, self.answers)):
            labels[k, : len(answer)] = torch.tensor(answer, dtype=torch.long)
            # the first token is predicted by the prompt's last position, every later one by the token before it
            prompt_end = self.prompt_lengths[row] - 1
            sources[k, 0] = prompt_end
            sources[k, 1 : len(answer)] = torch.arange(start, start + len(answer) - 1)
            sources[k, len(answer):] = prompt_end
        return {"answer_labels": labels, "answer_rows": torch.tensor(self.answer_rows), "answer_sources": sources}


def _extend_per_token(value: torch.Tensor, lengths: list[int], totals: list[int], width: int,
                      response_value: int | None) -> torch.Tensor:
    """A per-token tensor carried from each prompt's length to its row's total length, zero-padded to `width`.

    Answer positions take `response_value` if given, else the prompt's last token's value (text after the
    prompt is text too: not an image token, and it sees the images the prompt's end sees).
    """
    out = value.new_zeros((value.shape[0], width, *value.shape[2:]))
    for row, (length, total) in enumerate(zip(lengths, totals)):
        out[row, :length] = value[row, :length]
        out[row, length:total] = response_value if response_value is not None else value[row, length - 1]
    return out


def build_batch(
    processor: ProcessorMixin, images: Sequence[bytes], questions: Sequence[str],
    answers: Sequence[tuple[int, Sequence[int]]],
) -> Sequences:
    """Model inputs for prompts (one image and question each) followed by answers `(prompt index, token ids)`.

    A prompt named by several answers is encoded once and its answers follow it in one row (see `Sequences`).
    Every per-token tensor the processor returns is carried to the full width, so an answer is scored exactly
    as in a forward over its whole conversation.
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
    totals, starts = list(lengths), []
    for row, answer in answers:
        starts.append(totals[row])
        totals[row] += len(answer)
    width = max(totals)
    inputs = {key: value for key, value in encoded.items() if key not in PER_TOKEN_KEYS}
    answer_values = {"attention_mask": 1, "token_type_ids": 1 if answers_as_suffix(processor) else None}
    for key in PER_TOKEN_KEYS[1:]:
        if key in encoded:
            inputs[key] = _extend_per_token(encoded[key], lengths, totals, width, answer_values.get(key))
    input_ids = torch.full((len(totals), width), processor.tokenizer.pad_token_id, dtype=torch.long)
    segments = torch.full((len(totals), width), -1, dtype=torch.long)
    positions = torch.zeros((len(totals), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = encoded["input_ids"][row, :length]
        segments[row, :length] = 0
        positions[row, :length] = torch.arange(length)
    for (row, answer), start in zip(answers, starts):
        end = start + len(answer)
        input_ids[row, start:end] = torch.tensor(list(answer), dtype=torch.long)
        segments[row, start:end] = int(segments[row].max()) + 1
        positions[row, start:end] = torch.arange(lengths[row], lengths[row] + len(answer))
    inputs["input_ids"] = input_ids
    return Sequences(inputs, [list(answer) for _, answer in answers], [row for row, _ in answers], starts, lengths,
                     segments, positions)


def aligned(values: Sequence[Sequence[float]], width: int, fill: float) -> torch.Tensor:
    """A `[answers, width]` tensor of each answer's per-token values, left-aligned, padded with `fill`."""
    out = torch.full((len(values), width), fill, dtype=torch.float32)
    for row, row_values in enumerate(values):
        out[row, : len(row_values)] = torch.tensor(row_values, dtype=torch.float32)
    return out


class SFTCollator:
    """Batches of SFT rows (`image`, `question`, `answer_ids`) with response-only labels."""

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = build_batch(self.processor, [r["image"] for r in rows], [r["question"] for r in rows],
                            list(enumerate(r["answer_ids"] for r in rows)))
        return {**batch.inputs, "labels": batch.labels()}


def attention_blocks(family: ModelFamily, segments: torch.Tensor, token_type_ids: torch.Tensor | None
                     ) -> torch.Tensor:
    """`[rows, length]` block ids: tokens of one block (id > 0) see each other whatever their order, as the
    family's model lets them in one sequence: a prefix-LM's whole prompt (PaliGemma), or each image's tokens
    (Gemma 3: a run of `token_type_ids` 1). 0 elsewhere."""
    blocks = torch.zeros_like(segments)
    if family.bidirectional_prompt:
        blocks[segments == 0] = 1
    if family.image_blocks and token_type_ids is not None:
        image = token_type_ids == 1
        starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        blocks = torch.where(image, starts.long().cumsum(-1), blocks)
    return blocks


class PairCollator:
    """The chosen and rejected answers of each pair, chosen first, then rejected, in answer-aligned tensors.

    With `shared_by` (the model's family), each pair is one row: its image and prompt once, then both answers,
    each seeing only the prompt and itself (`segments`, `positions` and `blocks` let the forward build that
    attention with the family's rules; see `rlhfv_nb.pair_logps`). Without, each answer has its own row, prompt
    repeated. When rows carry them, adds
    `weights` (dense DDPO token weights) and `ref_logps` (per-token reference log-probs), `[answers, longest]`
    like `answer_labels`.
    """

    def __init__(self, processor: ProcessorMixin, shared_by: ModelFamily | None = None):
        self.processor = processor
        self.shared_by = shared_by

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        copies = 2 if self.shared_by is None else 1
        images = [r["image"] for r in rows] * copies
        questions = [r["question"] for r in rows] * copies
        second = len(rows) if self.shared_by is None else 0
        answers = ([(i, r["chosen_ids"]) for i, r in enumerate(rows)]
                   + [(second + i, r["rejected_ids"]) for i, r in enumerate(rows)])
        batch = build_batch(self.processor, images, questions, answers)
        out = {**batch.inputs, **batch.answer_index()}
        if self.shared_by is not None:
            out.update(segments=batch.segments, positions=batch.positions,
                       blocks=attention_blocks(self.shared_by, batch.segments, out.get("token_type_ids")))
        width = out["answer_labels"].shape[1]
        if "chosen_weights" in rows[0]:
            weights = [r["chosen_weights"] for r in rows] + [r["rejected_weights"] for r in rows]
            out["weights"] = aligned(weights, width, 0.0)
        if "ref_chosen_logps" in rows[0]:
            ref = [r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows]
            out["ref_logps"] = aligned(ref, width, 0.0)
        return out
