"""Model inputs: response ids follow the chat template, labels cover the response only, pairs line up."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_run import CPU_TINY, SHAPE, make_run

from rlhfv_nb.config import load_config
from rlhfv_nb.data import encode_image
from rlhfv_nb.ddpo import IGNORE_INDEX
from rlhfv_nb.families import resolve_family
from rlhfv_nb.features import (
    PairCollator,
    SFTCollator,
    build_batch,
    prompt_length,
    prompt_text,
    response_ids,
    user_message,
)
from rlhfv_nb.modeling import load_processor


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    cfg = load_config(CPU_TINY, **make_run(tmp_path_factory.mktemp("features") / "run", pairs=4))
    return load_processor(cfg.run_path / "base", cfg.model)


def _image(i: int) -> bytes:
    return encode_image(Image.new("RGB", (SHAPE.image_size + 5 * i, SHAPE.image_size), (60 * i, 90, 10)))


def test_response_ids_are_the_templated_assistant_text_ending_with_eos(processor):
    tokenizer = processor.tokenizer
    question, answer = "Describe the image.", "There is a red ball in the middle of the picture."
    ids = response_ids(processor, question, answer)
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    conversation = processor.apply_chat_template(
        [user_message(question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False)
    prompt = prompt_text(processor, question)
    # the template renders "USER: <image>\n{question} ASSISTANT: {answer}</s>": the response is what follows the prompt
    assert prompt == "USER: <image>\nDescribe the image. ASSISTANT:"
    assert conversation == prompt + tokenizer.decode(ids)
    assert tokenizer.decode(ids) == f" {answer}</s>"
    # prompt tokens + response tokens are exactly the tokens of the whole templated conversation
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] + ids == \
        tokenizer(conversation, add_special_tokens=False)["input_ids"]


def _check_labels(batch, prompts: list[int], responses: list[list[int]], pad_id: int) -> None:
    ids, labels, attention = batch.inputs["input_ids"], batch.labels(), batch.inputs["attention_mask"]
    assert ids.shape == labels.shape == attention.shape
    for row, (start, response) in enumerate(zip(prompts, responses)):
        end = start + len(response)
        assert batch.answer_starts[row] == start
        assert labels[row, start:end].tolist() == response == ids[row, start:end].tolist()
        assert (labels[row, :start] == IGNORE_INDEX).all()  # prompt and image tokens
        assert (labels[row, end:] == IGNORE_INDEX).all()  # right padding
        assert attention[row].tolist() == [1] * end + [0] * (ids.shape[1] - end)
        assert (ids[row, end:] == pad_id).all()


def test_build_batch_labels_only_the_response(processor):
    questions = ["Describe the image.", "What is in the middle of this picture, and what colour is it?"]
    answers = ["A red ball.", "There is a small green tent in the middle of the picture, next to a cup."]
    images = [_image(0), _image(1)]
    responses = [response_ids(processor, q, a) for q, a in zip(questions, answers)]
    batch = build_batch(processor, images, questions, list(enumerate(responses)))
    prompts = [prompt_length(processor, q, im) for q, im in zip(questions, images)]
    assert prompts[0] != prompts[1] and len(responses[0]) != len(responses[1])  # real padding on both parts
    _check_labels(batch, prompts, responses, processor.tokenizer.pad_token_id)
    # the image placeholder was expanded to the vision tokens, all masked out of the labels
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    image_positions = batch.inputs["input_ids"] == image_id
    assert image_positions.sum(1).tolist() == [(SHAPE.image_size // SHAPE.patch_size) ** 2] * 2
    assert (batch.labels()[image_positions] == IGNORE_INDEX).all()
    assert batch.inputs["pixel_values"].shape[0] == 2


def test_sft_collator_labels_the_answer(processor):
    rows = [{"image": _image(i), "question": "Describe the image.",
             "answer_ids": response_ids(processor, "Describe the image.", f"Thing {'x' * i}.")} for i in range(3)]
    batch = SFTCollator(processor)(rows)
    start = prompt_length(processor, "Describe the image.", rows[0]["image"])
    for row, r in enumerate(rows):
        assert batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist() == r["answer_ids"]
        assert (batch["labels"][row, :start] == IGNORE_INDEX).all()


def _pair_rows(processor) -> list[dict]:
    questions = ["Describe the image.", "Describe this picture in detail, please."]
    rows = []
    for i, q in enumerate(questions):
        chosen = response_ids(processor, q, f"A red ball {i}.")
        rejected = response_ids(processor, q, f"A blue ball and a small dog in the middle {i}.")
        rows.append({
            "image": _image(i), "question": q, "chosen_ids": chosen, "rejected_ids": rejected,
            # distinct values per token so any shift shows: weights 1, 2, 3, ...; log-probs -0.01, -0.02, ...
            "chosen_weights": [float(10 * i + t + 1) for t in range(len(chosen))],
            "rejected_weights": [float(100 + 10 * i + t + 1) for t in range(len(rejected))],
            "ref_chosen_logps": [-(10 * i + t + 1) / 100 for t in range(len(chosen))],
            "ref_rejected_logps": [-(100 + 10 * i + t + 1) / 100 for t in range(len(rejected))],
        })
    return rows


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_pair_collator_puts_chosen_first_and_aligns_weights_reference_and_sources(processor, shared):
    rows = _pair_rows(processor)
    prompts = [prompt_length(processor, r["question"], r["image"]) for r in rows]
    batch = PairCollator(processor, resolve_family({"model_type": "llava"}) if shared else None)(rows)
    ids, labels = batch["input_ids"], batch["answer_labels"]
    # shared: one row per pair (image once); separate: one row per answer, prompt and image repeated
    assert ids.shape[0] == batch["pixel_values"].shape[0] == (2 if shared else 4)
    order = [("chosen", 0), ("chosen", 1), ("rejected", 0), ("rejected", 1)]
    for k, (side, pair) in enumerate(order):
        answer = rows[pair][f"{side}_ids"]
        n, row, prompt = len(answer), batch["answer_rows"][k].item(), prompts[pair]
        assert labels[k, :n].tolist() == answer and (labels[k, n:] == IGNORE_INDEX).all()
        assert batch["weights"][k, :n].tolist() == rows[pair][f"{side}_weights"]
        assert batch["ref_logps"][k, :n].tolist() == pytest.approx(rows[pair][f"ref_{side}_logps"])
        assert (batch["weights"][k, n:] == 0).all() and (batch["ref_logps"][k, n:] == 0).all()
        # token t is predicted at the position before it; the first token by the prompt's last position
        start = prompt + (len(rows[pair]["chosen_ids"]) if shared and side == "rejected" else 0)
        sources = batch["answer_sources"][k, :n].tolist()
        assert sources == [prompt - 1, *range(start, start + n - 1)]
        assert ids[row, start : start + n].tolist() == answer
        assert row == (pair if shared else k)
    if shared:  # both answers continue the prompt: positions restart after it; segments tell the answers apart
        chosen, rejected = len(rows[0]["chosen_ids"]), len(rows[0]["rejected_ids"])
        p = prompts[0]
        assert batch["positions"][0, : p + chosen + rejected].tolist() == [
            *range(p + chosen), *range(p, p + rejected)]
        assert batch["segments"][0, : p + chosen + rejected].tolist() == [0] * p + [1] * chosen + [2] * rejected
        assert (batch["segments"][0, p + chosen + rejected:] == -1).all()
    else:
        assert "segments" not in batch
    # without weights and reference log-probs in the rows, the batch carries neither
    plain = PairCollator(processor)([{k: r[k] for k in ("image", "question", "chosen_ids", "rejected_ids")}
                                     for r in rows])
    assert "weights" not in plain and "ref_logps" not in plain
    assert torch.equal(plain["answer_labels"], labels)
