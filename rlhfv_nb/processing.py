"""Load a vision-language model's processor, also where torchvision (and so every video processor) is missing.

transformers 5 builds the video processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, SmolVLM and
LLaVA-OneVision on torchvision only, so `AutoProcessor` cannot build those processors without it, although
their image path never touches the video processor. Without torchvision we load the same processor class
with its video sub-processor left out: image and text processing are the class's own code, unchanged; a call
with `videos` is refused. The video processor's saved configuration is kept and written back on save, so a
processor saved here loads with `AutoProcessor` where torchvision is installed.

`image_aspect_ratio="pad"` (LLaVA-1.5's `--image_aspect_ratio pad`) makes the returned processor's image processor pad
every image to a square of its mean colour before its own resizing and cropping (LLaVA's `expand2square`), so every
caller (training batches, the reference pass, generation, evaluation, the demo) gets the same pixels. The setting is
not written into a saved processor: it comes from the params on every load.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, ProcessorMixin, SmolVLMProcessor
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format, is_scaled_image
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name
from transformers.utils import is_torch_tensor, is_torchvision_available
from transformers.video_processing_utils import BaseVideoProcessor

log = logging.getLogger(__name__)

VIDEO = "video_processor"


class _WithoutVideo:
    """Mixin for a processor class: declares no video sub-processor, so none is loaded or expected."""

    video_processor_dict: dict[str, Any] | None = None  # the video processor's configuration, saved as it came

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [name for name in super().get_attributes() if name != VIDEO]

    @classmethod
    def from_args_and_dict(cls, args: list, processor_dict: dict[str, Any], **kwargs: Any) -> ProcessorMixin:
        # The class's __init__ still takes `video_processor` (SmolVLM's without a default): give it None.
        return super().from_args_and_dict(args, processor_dict, **{**kwargs, VIDEO: None})

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> ProcessorMixin:
        processor = super().from_pretrained(path, **kwargs)
        with contextlib.suppress(OSError):  # OSError: nothing saved for videos
            processor.video_processor_dict = BaseVideoProcessor.get_video_processor_dict(str(path))[0]
        return processor

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if self.video_processor_dict is not None:
            output[VIDEO] = self.video_processor_dict
        return output

    def __call__(self, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any) -> Any:
        if videos is not None:
            raise ValueError(f"{type(self).__name__} was loaded without its video processor (torchvision is missing)")
        return super().__call__(images=images, text=text, **kwargs)


class _SmolVLMWithoutVideo(_WithoutVideo):
    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        """SmolVLM's override only adds video defaults read from the video processor; images need none of it."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


@functools.cache
def without_video(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`cls` minus its video sub-processor. Keeps the name, so a saved processor_config.json names `cls`."""
    mixin = _SmolVLMWithoutVideo if issubclass(cls, SmolVLMProcessor) else _WithoutVideo
    return type(cls.__name__, (mixin, cls), {"__module__": __name__, "__doc__": mixin.__doc__})


@functools.cache
def _warn_if_cuda_lacks_torchvision() -> None:
    """A warning, once per process, where CUDA is: there torchvision belongs (the CPU torch goes without it)."""
    if torch.cuda.is_available():
        log.warning("torchvision is not importable on this CUDA machine: processors with a video processor "
                    "(Qwen2-VL, SmolVLM, ...) are loaded for images and text only")


def _processor_class(path: str, trust_remote_code: bool) -> type[ProcessorMixin] | None:
    """The transformers processor class that `path`'s processor config names, else the one of its model type."""
    name = ProcessorMixin.get_processor_dict(path)[0].get("processor_class")
    if name is not None:
        cls = processor_class_from_name(name)
        return cls if isinstance(cls, type) and issubclass(cls, ProcessorMixin) else None
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return PROCESSOR_MAPPING.get(type(config), None)


def load_processor(path: str | Path, trust_remote_code: bool = False, image_aspect_ratio: str = "native"
                   ) -> ProcessorMixin:
    """The processor of the model at `path` (hub id or folder): `AutoProcessor`'s, or, when torchvision is missing
    and the processor class has a video sub-processor, the same class without it (images and text only).

    `image_aspect_ratio`: "native" leaves images to the processor as saved; "pad" makes its image processor pad
    every image to a square of its mean colour first (LLaVA-1.5's `image_aspect_ratio pad`, `with_image_aspect_ratio`),
    so every caller gets padded pixels. The setting is not saved with the processor: pass it on every load.
    """
    if image_aspect_ratio not in ASPECT_RATIOS:  # before the download, not after
        raise ValueError(f"image_aspect_ratio {image_aspect_ratio!r} is not one of {list(ASPECT_RATIOS)}")
    path = str(path)
    cls = None if is_torchvision_available() else _processor_class(path, trust_remote_code)
    if cls is None or VIDEO not in cls.get_attributes():
        log.info("Loading the processor of %s with AutoProcessor", path)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        _warn_if_cuda_lacks_torchvision()
        log.info("Loading the processor of %s as %s with no video processor (torchvision is not importable): "
                 "images and text only", path, cls.__name__)
        processor = without_video(cls).from_pretrained(path, trust_remote_code=trust_remote_code)
    return with_image_aspect_ratio(processor, image_aspect_ratio)


# --- image_aspect_ratio "pad": LLaVA-1.5's expand2square, applied inside the image processor -------------------

ASPECT_RATIOS = ("pad", "native")
IMAGE = "image_processor"


def pad_colour(image_mean: Any) -> tuple[int, int, int]:
    """The padding colour LLaVA-1.5 uses: `tuple(int(x*255) for x in image_processor.image_mean)` (truncated, not
    rounded: (122, 116, 104) for OpenAI CLIP's mean). A scalar mean is one grey."""
    mean = [image_mean] * 3 if isinstance(image_mean, (int, float)) else list(image_mean)
    if len(mean) != 3:
        raise ValueError(f"image_mean {image_mean!r}: padding to a square needs one mean per RGB channel")
    return tuple(int(x * 255) for x in mean)


def _rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB, transparency composited onto white as transformers' `convert_to_rgb` does."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def expand_to_square(image: Any, colour: tuple[int, int, int], data_format: Any = None) -> Any:
    """LLaVA's `expand2square`: `image` centred on a square of `colour`, its side the longer side (the extra
    row or column, when the difference is odd, goes below or right). A square image comes back unchanged.

    PIL images (made RGB first) are pasted as upstream does; numpy arrays and torch tensors (3 or 4 channels,
    channels first or last, `data_format` or inferred) are padded with the colour in their own scale (0-255, or
    0-1 for float images already rescaled) and alpha opaque.
    """
    if isinstance(image, Image.Image):
        image = _rgb(image)
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        result = Image.new(image.mode, (side, side), colour)
        result.paste(image, ((side - width) // 2, (side - height) // 2))
        return result
    tensor = is_torch_tensor(image)
    array = image.numpy() if tensor else np.asarray(image)
    if array.ndim != 3 or not {array.shape[0], array.shape[-1]} & {3, 4}:
        raise ValueError(f"cannot pad an image array of shape {array.shape} to a square: pass an RGB PIL image "
                         "or a 3-dimensional array with 3 or 4 channels")
    fmt = ChannelDimension(data_format) if data_format is not None else infer_channel_dimension_format(
        array, num_channels=(3, 4))
    channels_last = fmt == ChannelDimension.LAST
    height, width = array.shape[:2] if channels_last else array.shape[1:]
    channels = array.shape[-1] if channels_last else array.shape[0]
    if width == height:
        return image
    scale = 1.0 if is_scaled_image(array) else 255.0
    fill = [c * scale / 255.0 for c in colour] + [scale] * (channels - 3)
    side = max(width, height)
    top, left = (side - height) // 2, (side - width) // 2
    shape = (side, side, channels) if channels_last else (channels, side, side)
    result = np.empty(shape, dtype=array.dtype)
    result[...] = np.asarray(fill, dtype=array.dtype).reshape((1, 1, -1) if channels_last else (-1, 1, 1))
    if channels_last:
        result[top:top + height, left:left + width] = array
    else:
        result[:, top:top + height, left:left + width] = array
    if tensor:
        import torch

        return torch.from_numpy(result)
    return result


def _expand_all(images: Any, colour: tuple[int, int, int], data_format: Any) -> Any:
    """Every image in a (nested) list or tuple of images, or a single image, expanded to a square."""
    if isinstance(images, (list, tuple)):
        return type(images)(_expand_all(image, colour, data_format) for image in images)
    if (isinstance(images, np.ndarray) or is_torch_tensor(images)) and images.ndim == 4:  # a stacked batch
        return _expand_all(list(images), colour, data_format)
    return expand_to_square(images, colour, data_format)


class _PadToSquare:
    """Mixin for an image processor class: every image is padded to a square of the mean colour
    (`expand_to_square`) before the class's own preprocessing (resize, crop, ...), as LLaVA-1.5's
    `image_aspect_ratio pad`. The processor's configuration is untouched: it saves exactly as the unpadded one."""

    _unpadded_class: type

    def preprocess(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        if images is not None:
            if hasattr(self, "fetch_images"):  # URLs and paths become PIL images first, as the class would do
                images = self.fetch_images(images)
            mean = kwargs.get("image_mean")
            images = _expand_all(images, pad_colour(self.image_mean if mean is None else mean),
                                 kwargs.get("input_data_format"))
        return super().preprocess(images, *args, **kwargs)

    def __reduce__(self) -> tuple:
        # Pickle (and deepcopy) as the unpadded class, which is importable, then pad again.
        plain = self._unpadded_class.__new__(self._unpadded_class)
        plain.__dict__.update(self.__dict__)
        return pad_to_square, (plain,)


@functools.cache
def padded_class(cls: type) -> type:
    """`cls` with `_PadToSquare`. Keeps the name, so a saved config names `cls` (`image_processor_type`)."""
    return type(cls.__name__, (_PadToSquare, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__,
                                                     "__qualname__": cls.__qualname__, "_unpadded_class": cls})


def pad_to_square(image_processor: Any) -> Any:
    """`image_processor` itself, now padding every image to a square of its mean colour before its own processing.
    Idempotent."""
    if not isinstance(image_processor, _PadToSquare):
        image_processor.__class__ = padded_class(type(image_processor))
    return image_processor


def image_aspect_ratio_of(processor: Any) -> str:
    """"pad" if `processor` (or the image processor it holds) pads images to squares, else "native"."""
    image_processor = getattr(processor, IMAGE, processor)
    return "pad" if isinstance(image_processor, _PadToSquare) else "native"


def with_image_aspect_ratio(processor: ProcessorMixin, image_aspect_ratio: str) -> ProcessorMixin:
    """`processor`, its image processor padding images to squares when `image_aspect_ratio` is "pad"."""
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio {image_aspect_ratio!r} is not one of {list(ASPECT_RATIOS)}")
    image_processor = getattr(processor, IMAGE, None)
    if image_aspect_ratio == "native":
        if isinstance(image_processor, _PadToSquare):
            image_processor.__class__ = image_processor._unpadded_class
        return processor
    if image_processor is None or not hasattr(image_processor, "preprocess"):
        raise ValueError(f"{type(processor).__name__} has no image processor with `preprocess`: it cannot pad "
                         "images to squares (set model.image_aspect_ratio: native)")
    pad_to_square(image_processor)
    return processor
