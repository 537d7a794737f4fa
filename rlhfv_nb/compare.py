"""Several checkpoints answering the same image and question, streamed token by token.

Checkpoints that are peft adapters of one base (and the base itself, when it is one of them) share a
single copy of the base weights: each adapter is loaded under its own name and activated for its turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin, TextIteratorStreamer

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.features import encode_prompts
from rlhfv_nb.generate import GenerationSettings, stop_tokens
from rlhfv_nb.modeling import load_model, load_processor


@dataclass
class Answerer:
    """One checkpoint of a comparison: a (possibly shared) model, its processor and the adapter to activate.

    On a peft model, `adapter=None` means the base with every adapter disabled.
    """

    model: PreTrainedModel
    processor: ProcessorMixin
    adapter: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # shared by answerers of one model

    @contextmanager
    def _active(self) -> Iterator[None]:
        if not hasattr(self.model, "peft_config"):
            yield
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter)
            yield

    def stream(self, image: Image.Image, question: str, settings: GenerationSettings) -> Iterator[str]:
        """The answer so far, after each decoded piece (greedy `generate` in a thread with a text streamer)."""
        tokenizer = self.processor.tokenizer
        inputs = encode_prompts(self.processor, [image], [question], padding_side="left")
        device = next(self.model.parameters()).device
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**{k: v.to(device) for k, v in inputs.items()}, **settings.generate_kwargs(), streamer=streamer,
                      **stop_tokens(self.model, tokenizer))
        errors: list[Exception] = []

        def run() -> None:  # the lock and the active adapter are held by this thread, for generation only
            try:
                with self.lock, self._active(), torch.no_grad():
                    self.model.generate(**kwargs)
            except Exception as err:  # re-raised in the caller's thread below
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text.strip()
        thread.join()
        if errors:
            raise errors[0]


def adapter_base(path: str) -> str | None:
    """The base model a peft adapter folder was trained on; None if `path` is not an adapter."""
    if not (Path(path) / "adapter_config.json").exists():
        return None
    from peft import PeftConfig

    return PeftConfig.from_pretrained(path).base_model_name_or_path


def _key(path: str) -> str:
    """Comparable form of a model reference: resolved for local folders, as given for hub ids."""
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def _processor(path: str, fallback: str, cfg: ModelConfig) -> ProcessorMixin:
    try:
        return load_processor(path, cfg)
    except (OSError, ValueError):  # an adapter saved without its processor
        return load_processor(fallback, cfg)


def load_answerers(paths: Mapping[str, str], cfg: ModelConfig) -> dict[str, Answerer]:
    """An `Answerer` per name; paths with one base (adapters of it, or the base itself) share one loaded model."""
    device_map = "auto" if torch.cuda.is_available() else None
    groups: dict[str, list[str]] = {}
    for name, path in paths.items():
        groups.setdefault(_key(adapter_base(str(path)) or str(path)), []).append(name)
    answerers: dict[str, Answerer] = {}
    for base, names in groups.items():
        model = load_model(base, cfg, device_map=device_map)
        adapters = {name: f"adapter{i}" for i, name in enumerate(names) if _key(str(paths[name])) != base}
        for name, adapter in adapters.items():
            if hasattr(model, "peft_config"):
                model.load_adapter(str(paths[name]), adapter_name=adapter)
            else:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(paths[name]), adapter_name=adapter)
        model.eval()
        lock = threading.Lock()
        for name in names:
            answerers[name] = Answerer(model, _processor(str(paths[name]), base, cfg), adapters.get(name), lock)
    return answerers
