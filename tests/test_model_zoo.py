"""Every family of the model zoo: build, load as a user would, forward + backward, batched generation, and the
processor `load_processor` returns against the components it is made of."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from model_zoo import FAMILIES, build_tiny
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.utils import is_torchvision_available

from rlhfv_nb.processing import load_processor

QUESTIONS = ("What is in the middle of the picture, next to the small dog?", "Describe the image.")
ANSWERS = ("There is a red ball next to a small dog.", "A dog")
NESTED = {"idefics3", "smolvlm", "mllama", "gemma3"}  # these processors take one list of images per prompt
# What the image-only processors write for one image, from the documented expansion of each family.
EXPANSION: dict[str, tuple[str, Callable[[BatchFeature, int], str]]] = {
    **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), (
        "<|image_pad|>", lambda pixels, i: "<|image_pad|>" * int(pixels["image_grid_thw"][i].prod() // 4))),
    "internvl": ("<IMG_CONTEXT>", lambda pixels, i: "<img>" + "<IMG_CONTEXT>" * 4 * int(pixels["num_patches"][i])
                 + "</img>"),
    "smolvlm": ("<image>", lambda pixels, i: "<fake_token_around_image><global-img>" + "<image>" * 4
                + "<fake_token_around_image>"),
}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The folder of a family's tiny model, built once per session."""
    root, built = tmp_path_factory.mktemp("zoo"), {}

    def folder(family: str) -> Path:
        if family not in built:
            if PROCESSOR_MAPPING_NAMES.get(family) is None:
                pytest.skip(f"transformers has no processor for {family}")
            built[family] = build_tiny(family, root / family)
        return built[family]

    return folder


@pytest.fixture(scope="session")
def loaded(zoo: Callable[[str], Path]) -> Callable[[str], tuple[PreTrainedModel, ProcessorMixin]]:
    cache: dict[str, tuple[PreTrainedModel, ProcessorMixin]] = {}

    def get(family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        if family not in cache:
            cache[family] = AutoModelForImageTextToText.from_pretrained(zoo(family)), load_processor(zoo(family))
        return cache[family]

    return get


def _images(family: str) -> list[Any]:
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 44), (30, 30, 200))]
    return [[image] for image in images] if family in NESTED else images


def _prompts(processor: ProcessorMixin) -> list[str]:
    if processor.chat_template is None:  # PaliGemma: the processor adds BOS after the image and "\n" at the end
        return [f"<image>{question}" for question in QUESTIONS]
    return [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": question}]}],
                                          add_generation_prompt=True) for question in QUESTIONS]


def _batch(family: str, processor: ProcessorMixin, side: str, answers: bool) -> BatchFeature:
    """Two prompts (+ answers), one image each, padded on `side`; labels when answers are given."""
    prompts, kwargs = _prompts(processor), {}
    if answers and processor.chat_template is None:
        kwargs["suffix"] = list(ANSWERS)  # labels (and token_type_ids 1) on the suffix
    elif answers:
        prompts = [prompt + answer for prompt, answer in zip(prompts, ANSWERS)]
    batch = processor(images=_images(family), text=prompts, padding=True, padding_side=side, return_tensors="pt",
                      **kwargs)
    mask = batch["attention_mask"]
    assert (mask == 0).any() and mask[:, 0 if side == "right" else -1].all(), f"not padded on the {side}"
    if answers and "labels" not in batch:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    elif not answers:
        batch.pop("labels", None)
    return batch


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward(family: str, loaded) -> None:
    model, processor = loaded(family)
    batch = _batch(family, processor, "right", answers=True)
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name: p.grad is not None and p.grad.abs().sum() > 0 for name, p in model.named_parameters()}
    assert any(grads[name] for name in grads if "lm_head" in name or "embed_tokens" in name)
    assert any(grads[name] for name in grads if ".visual." in name or "vision_" in name), "no gradient to the image"


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_left_padded(family: str, loaded) -> None:
    model, processor = loaded(family)
    batch = _batch(family, processor, "left", answers=False)
    out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    row = int(batch["attention_mask"][:, 0].argmin())  # the padded row predicts what it predicts alone
    alone = processor(images=_images(family)[row:row + 1], text=_prompts(processor)[row:row + 1], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[row, -1], model(**alone).logits[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_is_the_familys(family: str, zoo, caplog: pytest.LogCaptureFixture) -> None:
    """`load_processor` gives the family's processor class; its output is AutoProcessor's, or, where AutoProcessor
    cannot be built (no torchvision), what its components give; it survives save and reload."""
    folder, cls = zoo(family), getattr(transformers, PROCESSOR_MAPPING_NAMES[family])
    with caplog.at_level(logging.INFO, logger="rlhfv_nb.processing"):
        processor = load_processor(folder)
    image_only = not is_torchvision_available() and "video_processor" in cls.get_attributes()
    assert ("no video processor" if image_only else "with AutoProcessor") in caplog.text
    assert isinstance(processor, cls) and type(processor).__name__ == cls.__name__
    text, images = _prompts(processor), _images(family)
    kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
    got = processor(images=images, text=text, **kwargs)
    if not image_only:
        expected = AutoProcessor.from_pretrained(folder)(images=images, text=text, **kwargs)
    else:
        expected = _from_components(family, folder, text)
        with pytest.raises(ValueError, match="without its video processor"):
            processor(images=images, text=text, videos=[[images[0]]])
    if family == "llava_onevision" and image_only:  # its count depends on the any-res grid
        expected["input_ids"] = _collapse(expected, processor.image_token_id)
        got = {**got, "input_ids": _collapse(got, processor.image_token_id), "attention_mask": None}
    _assert_same(got, expected)
    resaved = folder.parent / f"{family}-resaved"
    processor.save_pretrained(resaved)
    again = load_processor(resaved)
    assert again.to_dict() == processor.to_dict()
    _assert_same(again(images=images, text=text, **kwargs), processor(images=images, text=text, **kwargs))


def _from_components(family: str, folder: Path, text: list[str]) -> dict[str, Any]:
    """The processor's output built by hand: the image processor on the images, the tokenizer on the prompts
    with each image placeholder expanded as the family documents it."""
    images_kwargs = {"crop_to_patches": True} if family == "internvl" else {}  # InternVLProcessor's default
    pixels = AutoImageProcessor.from_pretrained(folder)(_images(family), return_tensors="pt", **images_kwargs)
    if family in EXPANSION:
        placeholder, expand = EXPANSION[family]
        text = [prompt.replace(placeholder, expand(pixels, i), 1) for i, prompt in enumerate(text)]
    tokens = AutoTokenizer.from_pretrained(folder, padding_side="left")(text, padding=True, return_tensors="pt")
    pixels.pop("num_patches", None)
    return {**tokens, **pixels}


def _collapse(batch: dict[str, Any], token: int) -> list[list[int]]:
    """Each row's unpadded input ids with every run of `token` shortened to one."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return [[t for i, t in enumerate(row) if t != token or i == 0 or row[i - 1] != token] for row in rows]


def _assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    keys = {key for key in set(got) & set(expected) if got[key] is not None}
    assert {"input_ids", "pixel_values"} <= keys
    for key in keys:
        if isinstance(got[key], torch.Tensor):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
        else:
            assert got[key] == expected[key], key
