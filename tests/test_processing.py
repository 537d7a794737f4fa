"""`image_aspect_ratio: pad`: LLaVA-1.5's expand2square inside the processor `load_processor` returns.

The reference is LLaVA's own code (haotian-liu/LLaVA llava/mm_utils.py, `expand2square` and `process_images`):
each image is centred on a square of `tuple(int(x*255) for x in image_processor.image_mean)`, then the image
processor resizes it. The image processor here is LLaVA-1.5's (llava-hf/llava-1.5-7b-hf's preprocessor config:
CLIP ViT-L/14-336, shortest edge 336, centre crop 336, OpenAI CLIP mean and std).
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from rlhfv_nb import processing
from rlhfv_nb.config import ModelConfig, load_config
from rlhfv_nb.data import encode_image
from rlhfv_nb.families import FAMILIES, UnknownModelFamily, resolve_image_aspect_ratio
from rlhfv_nb.features import encode_prompts
from rlhfv_nb.modeling import TINY_CHAT_TEMPLATE, load_processor, train_tokenizer
from rlhfv_nb.processing import expand_to_square, image_aspect_ratio_of, pad_colour, pad_to_square

ROOT = Path(__file__).resolve().parents[1]
# llava-hf/llava-1.5-7b-hf preprocessor_config.json (openai/clip-vit-large-patch14-336's)
LLAVA_15_IMAGE_PROCESSOR = {
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
    "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 336},
}
CLIP_MEAN_COLOUR = (122, 116, 104)  # int(x*255) of OpenAI CLIP's mean: truncated, as upstream
RED = (255, 0, 0)


def upstream_expand2square(pil_img, background_color):
    """LLaVA's expand2square, verbatim (llava/mm_utils.py)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def llava_image_processor():
    return CLIPImageProcessor(**copy.deepcopy(LLAVA_15_IMAGE_PROCESSOR))


def coco_like(width: int = 640, height: int = 480) -> Image.Image:
    """A landscape image whose outer eighths (left blue, right green) a 336 centre crop cuts away."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    pixels[:, : width // 8] = (0, 0, 255)
    pixels[:, -width // 8:] = (0, 255, 0)
    return Image.fromarray(pixels)


def pixels(image_processor, image) -> np.ndarray:
    return image_processor(image, return_tensors="np")["pixel_values"]


# --- expand_to_square ---------------------------------------------------------------------------------------------


def test_the_pad_colour_is_the_mean_truncated_as_upstream():
    assert pad_colour(OPENAI_CLIP_MEAN) == CLIP_MEAN_COLOUR
    assert pad_colour(llava_image_processor().image_mean) == CLIP_MEAN_COLOUR
    assert pad_colour(0.5) == (127, 127, 127)
    with pytest.raises(ValueError, match="one mean per RGB channel"):
        pad_colour([0.5, 0.5])


def test_a_wide_image_gets_mean_colour_bands_top_and_bottom():
    padded = expand_to_square(Image.new("RGB", (64, 32), RED), CLIP_MEAN_COLOUR)
    assert padded.size == (64, 64) and padded.mode == "RGB"
    expected = np.empty((64, 64, 3), dtype=np.uint8)
    expected[:] = CLIP_MEAN_COLOUR
    expected[16:48, :] = RED
    np.testing.assert_array_equal(np.asarray(padded), expected)


def test_a_tall_image_gets_bands_left_and_right():
    padded = np.asarray(expand_to_square(Image.new("RGB", (20, 50), RED), CLIP_MEAN_COLOUR))
    assert padded.shape == (50, 50, 3)
    assert (padded[:, :15] == CLIP_MEAN_COLOUR).all() and (padded[:, 35:] == CLIP_MEAN_COLOUR).all()
    assert (padded[:, 15:35] == RED).all()


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (7, 4), (4, 7), (5, 5), (640, 480), (333, 500)])
def test_pil_padding_equals_llavas_expand2square(size):
    image = coco_like(*size) if min(size) > 8 else Image.new("RGB", size, (10, 200, 30))
    ours, theirs = expand_to_square(image, CLIP_MEAN_COLOUR), upstream_expand2square(image, CLIP_MEAN_COLOUR)
    assert ours.size == theirs.size
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_square_image_is_returned_as_it_is():
    image = Image.new("RGB", (32, 32), RED)
    assert expand_to_square(image, CLIP_MEAN_COLOUR) is image


def test_arrays_and_tensors_are_padded_like_pil_images_in_their_own_layout_and_scale():
    image = coco_like(40, 24)
    expected = np.asarray(upstream_expand2square(image, CLIP_MEAN_COLOUR))  # (40, 40, 3) uint8
    hwc = np.asarray(image)
    np.testing.assert_array_equal(expand_to_square(hwc, CLIP_MEAN_COLOUR), expected)
    np.testing.assert_array_equal(expand_to_square(hwc.transpose(2, 0, 1), CLIP_MEAN_COLOUR),
                                  expected.transpose(2, 0, 1))
    tensor = expand_to_square(torch.from_numpy(hwc.transpose(2, 0, 1).copy()), CLIP_MEAN_COLOUR)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), expected.transpose(2, 0, 1))
    scaled = expand_to_square(hwc.astype(np.float32) / 255, CLIP_MEAN_COLOUR)  # already rescaled to [0, 1]
    np.testing.assert_allclose(scaled, expected.astype(np.float32) / 255, atol=1e-6)
    rgba = expand_to_square(np.dstack([hwc, np.full(hwc.shape[:2], 255, np.uint8)]), CLIP_MEAN_COLOUR)
    assert (rgba[..., 3] == 255).all()  # the bands are opaque
    with pytest.raises(ValueError, match="cannot pad an image array"):
        expand_to_square(np.zeros((24, 40), dtype=np.uint8), CLIP_MEAN_COLOUR)


def test_non_rgb_pil_images_are_made_rgb_as_the_processor_would():
    grey = expand_to_square(Image.new("L", (8, 4), 90), CLIP_MEAN_COLOUR)
    assert grey.mode == "RGB" and grey.getpixel((0, 3)) == (90, 90, 90) and grey.getpixel((0, 0)) == CLIP_MEAN_COLOUR
    clear = expand_to_square(Image.new("RGBA", (8, 4), (0, 0, 0, 0)), CLIP_MEAN_COLOUR)
    assert clear.getpixel((0, 3)) == (255, 255, 255)  # transparency onto white, as transformers' convert_to_rgb


# --- through LLaVA-1.5's image processor -------------------------------------------------------------------------


def test_the_padded_image_processor_equals_padding_by_hand_then_processing():
    plain, padded = llava_image_processor(), pad_to_square(llava_image_processor())
    image = coco_like()
    got = pixels(padded, image)
    assert got.shape == (1, 3, 336, 336)
    np.testing.assert_array_equal(got, pixels(plain, upstream_expand2square(image, CLIP_MEAN_COLOUR)))
    cropped = pixels(plain, image)  # the HF processor alone: resize to 448x336, centre-crop 336 (56 px cut per side)
    assert np.abs(got - cropped).max() > 1
    # the blue and green edges survive the padding and are cut by the crop
    blue = (np.array([0, 0, 1.0]) - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    green = (np.array([0, 1.0, 0]) - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    np.testing.assert_allclose(got[0, :, 168, 2], blue, atol=0.05)
    np.testing.assert_allclose(got[0, :, 168, -3], green, atol=0.05)
    assert np.abs(cropped[0, :, 168, 2] - blue).max() > 0.5 and np.abs(cropped[0, :, 168, -3] - green).max() > 0.5
    # the bands (42 rows of 336, above and below) hold the mean colour, normalised (truncation keeps it near 0)
    band = (np.array(CLIP_MEAN_COLOUR) / 255 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    np.testing.assert_allclose(got[0, :, :40, :].reshape(3, -1).T, np.broadcast_to(band, (40 * 336, 3)), atol=1e-4)
    np.testing.assert_allclose(got[0, :, -40:, :].reshape(3, -1).T, np.broadcast_to(band, (40 * 336, 3)), atol=1e-4)


def test_padding_applies_to_batches_nested_lists_and_preprocess():
    plain, padded = llava_image_processor(), pad_to_square(llava_image_processor())
    images = [coco_like(), coco_like(300, 500), coco_like(100, 100)]
    by_hand = pixels(plain, [upstream_expand2square(i, CLIP_MEAN_COLOUR) for i in images])
    np.testing.assert_array_equal(pixels(padded, images), by_hand)
    np.testing.assert_array_equal(pixels(padded, [[i] for i in images]), by_hand)
    np.testing.assert_array_equal(padded.preprocess(images, return_tensors="np")["pixel_values"], by_hand)
    np.testing.assert_array_equal(pixels(padded, [np.asarray(i) for i in images]), by_hand)


def test_pad_to_square_is_idempotent_and_native_undoes_it():
    image_processor = llava_image_processor()
    plain_class = type(image_processor)
    assert pad_to_square(pad_to_square(image_processor)) is image_processor
    assert type(image_processor).__mro__.count(plain_class) == 1 and type(image_processor).__name__ == \
        plain_class.__name__
    holder = LlavaProcessor(image_processor=image_processor, tokenizer=_tokenizer(), patch_size=14,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1)
    assert image_aspect_ratio_of(holder) == "pad" == image_aspect_ratio_of(image_processor)
    processing.with_image_aspect_ratio(holder, "native")
    assert type(holder.image_processor) is plain_class and image_aspect_ratio_of(holder) == "native"
    with pytest.raises(ValueError, match="not one of"):
        processing.with_image_aspect_ratio(holder, "square")


def test_a_padded_image_processor_pickles_and_copies_padded():
    """DataLoader workers started by spawn/forkserver receive the collator, processor included, by pickle."""
    padded = pad_to_square(llava_image_processor())
    expected = pixels(padded, coco_like())
    for clone in (pickle.loads(pickle.dumps(padded)), copy.deepcopy(padded), copy.copy(padded)):
        assert image_aspect_ratio_of(clone) == "pad"
        np.testing.assert_array_equal(pixels(clone, coco_like()), expected)


# --- the whole processor, as load_processor returns it ------------------------------------------------------------


def _tokenizer():
    return train_tokenizer(["USER: <image>\nDescribe the image. ASSISTANT: a red box and a blue ball."] * 4, 300)


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    """A llava-1.5-style folder: LLaVA-1.5's image processor, a small tokenizer, a llava config (no weights:
    `load_processor` reads only the processor files and the config's model type)."""
    folder = tmp_path_factory.mktemp("llava15")
    LlavaProcessor(image_processor=llava_image_processor(), tokenizer=_tokenizer(), patch_size=14,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=TINY_CHAT_TEMPLATE).save_pretrained(folder)
    LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=336, patch_size=14),
                text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=320)).save_pretrained(folder)
    return folder


def test_load_processor_pads_only_when_asked(llava_folder):
    assert image_aspect_ratio_of(processing.load_processor(llava_folder)) == "native"  # the default: as saved
    padded = processing.load_processor(llava_folder, image_aspect_ratio="pad")
    assert image_aspect_ratio_of(padded) == "pad" and isinstance(padded, LlavaProcessor)
    with pytest.raises(ValueError, match="not one of"):
        processing.load_processor(llava_folder, image_aspect_ratio="anyres")


def test_the_family_default_pads_llava_only_and_the_params_override_it(llava_folder):
    assert FAMILIES["llava"].image_aspect_ratio == "pad"
    assert {name for name, family in FAMILIES.items() if family.image_aspect_ratio != "native"} == {"llava"}
    assert resolve_image_aspect_ratio({"model_type": "llava"}, ModelConfig()) == "pad"
    assert resolve_image_aspect_ratio({"model_type": "qwen2_vl"}, ModelConfig()) == "native"
    assert resolve_image_aspect_ratio({"model_type": "llava_next"}, ModelConfig()) == "native"
    assert resolve_image_aspect_ratio({"model_type": "llava"}, ModelConfig(image_aspect_ratio="native")) == "native"
    assert resolve_image_aspect_ratio({"model_type": "qwen2_vl"}, ModelConfig(image_aspect_ratio="pad")) == "pad"
    # a model type the table lacks, built like llava (model.family.name), gets llava's default
    like_llava = load_config({"model": {"family": {"name": "llava"}}}).model
    assert resolve_image_aspect_ratio({"model_type": "my_llava"}, like_llava) == "pad"
    with pytest.raises(UnknownModelFamily):
        resolve_image_aspect_ratio({"model_type": "my_llava"}, ModelConfig())
    assert resolve_image_aspect_ratio({"model_type": "my_llava"}, ModelConfig(image_aspect_ratio="native")) == "native"
    # through modeling.load_processor: the folder's model type, or the params' value
    assert image_aspect_ratio_of(load_processor(llava_folder, ModelConfig())) == "pad"
    assert image_aspect_ratio_of(load_processor(llava_folder, ModelConfig(image_aspect_ratio="native"))) == "native"
    assert image_aspect_ratio_of(load_processor(llava_folder, ModelConfig(image_aspect_ratio="pad"))) == "pad"


def test_an_adapter_folder_takes_its_base_models_family_default(llava_folder, tmp_path):
    from peft import LoraConfig

    adapter = tmp_path / "adapter"
    LoraConfig(base_model_name_or_path=str(llava_folder), target_modules=["q_proj"]).save_pretrained(adapter)
    processing.load_processor(llava_folder).save_pretrained(adapter)  # as train.py saves it beside the adapter
    assert not (adapter / "config.json").exists()
    assert image_aspect_ratio_of(load_processor(adapter, ModelConfig())) == "pad"


def test_presets_resolve_llava_15_to_pad_and_other_families_to_native():
    for preset in ("cpu-tiny", "qlora-1gpu", "full-8xa100"):
        cfg = load_config(ROOT / "params" / f"{preset}.yaml").model
        assert resolve_image_aspect_ratio({"model_type": "llava"}, cfg) == "pad", preset
    for preset in sorted((ROOT / "params").glob("qlora-1gpu-*.yaml")):  # they extend qlora-1gpu: not forced to pad
        assert load_config(preset).model.image_aspect_ratio is None, preset.stem


def test_encode_prompts_gives_the_padded_pixel_values(llava_folder):
    """One place pads: features.encode_prompts (training, the reference pass, generation, the demo) gets it."""
    padded = load_processor(llava_folder, ModelConfig())
    native = load_processor(llava_folder, ModelConfig(image_aspect_ratio="native"))
    images = [encode_image(coco_like()), coco_like(320, 400)]  # encoded cells and PIL images both
    questions = ["Describe the image.", "Is there a ball?"]
    got = encode_prompts(padded, images, questions, "right")
    by_hand = llava_image_processor()(
        [upstream_expand2square(coco_like(), CLIP_MEAN_COLOUR), upstream_expand2square(coco_like(320, 400),
                                                                                     CLIP_MEAN_COLOUR)],
        return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got["pixel_values"], by_hand, rtol=0, atol=0)
    unpadded = encode_prompts(native, images, questions, "right")
    assert (got["pixel_values"] - unpadded["pixel_values"]).abs().max() > 1
    assert torch.equal(got["input_ids"], unpadded["input_ids"])  # 576 image tokens either way: only pixels differ
    assert (got["input_ids"][0] == padded.image_token_id).sum() == 576


def test_the_whole_padded_processor_pickles_padded(llava_folder):
    clone = pickle.loads(pickle.dumps(load_processor(llava_folder, ModelConfig())))
    assert image_aspect_ratio_of(clone) == "pad"
    np.testing.assert_array_equal(pixels(clone.image_processor, coco_like()),
                                  pixels(pad_to_square(llava_image_processor()), coco_like()))


def test_a_padded_processor_saves_exactly_as_the_plain_one_and_reloads(llava_folder, tmp_path):
    """The pad setting is not persisted: the params decide it on every load, and a saved folder stays a standard
    one that AutoProcessor (no padding) reads anywhere."""
    padded = load_processor(llava_folder, ModelConfig())
    native = load_processor(llava_folder, ModelConfig(image_aspect_ratio="native"))
    padded.save_pretrained(tmp_path / "padded")
    native.save_pretrained(tmp_path / "native")
    files = sorted(p.name for p in (tmp_path / "padded").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "native").iterdir())
    for name in files:
        assert (tmp_path / "padded" / name).read_bytes() == (tmp_path / "native" / name).read_bytes(), name
    saved = json.dumps([json.loads((tmp_path / "padded" / n).read_text()) for n in files if n.endswith(".json")])
    assert "PadToSquare" not in saved and "_unpadded_class" not in saved
    plain = AutoProcessor.from_pretrained(tmp_path / "padded")
    assert image_aspect_ratio_of(plain) == "native"
    assert type(plain.image_processor) is type(llava_image_processor())
    again = load_processor(tmp_path / "padded", ModelConfig(image_aspect_ratio="pad"))
    image = coco_like()
    np.testing.assert_array_equal(pixels(again.image_processor, image), pixels(padded.image_processor, image))
    np.testing.assert_array_equal(pixels(plain.image_processor, image), pixels(native.image_processor, image))
