"""Load a vision-language model's processor, also where torchvision (and so every video processor) is missing.

transformers 5 builds the video processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, SmolVLM and
LLaVA-OneVision on torchvision only, so `AutoProcessor` cannot build those processors without it, although
their image path never touches the video processor. Without torchvision we load the same processor class
with its video sub-processor left out: image and text processing are the class's own code, unchanged; a call
with `videos` is refused. The video processor's saved configuration is kept and written back on save, so a
processor saved here loads with `AutoProcessor` where torchvision is installed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoProcessor, ProcessorMixin, SmolVLMProcessor
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name
from transformers.utils import is_torchvision_available
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


def _processor_class(path: str, trust_remote_code: bool) -> type[ProcessorMixin] | None:
    """The transformers processor class that `path`'s processor config names, else the one of its model type."""
    name = ProcessorMixin.get_processor_dict(path)[0].get("processor_class")
    if name is not None:
        cls = processor_class_from_name(name)
        return cls if isinstance(cls, type) and issubclass(cls, ProcessorMixin) else None
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return PROCESSOR_MAPPING.get(type(config), None)


def load_processor(path: str | Path, trust_remote_code: bool = False) -> ProcessorMixin:
    """The processor of the model at `path` (hub id or folder): `AutoProcessor`'s, or, when torchvision is missing
    and the processor class has a video sub-processor, the same class without it (images and text only)."""
    path = str(path)
    cls = None if is_torchvision_available() else _processor_class(path, trust_remote_code)
    if cls is None or VIDEO not in cls.get_attributes():
        log.info("Loading the processor of %s with AutoProcessor", path)
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    log.warning("torchvision is not importable, so %s has no video processor: loading it for images and text only",
                cls.__name__)
    return without_video(cls).from_pretrained(path, trust_remote_code=trust_remote_code)
