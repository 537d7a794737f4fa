"""Batched, resumable answer generation for (image, question) items with any supported model.

Answers are appended to a JSONL file as each batch finishes; a re-run skips the ids already there.
The generation settings sit in a sidecar `<file>.settings.json`; reusing a file with other settings
is refused rather than mixing answers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.config import Config
from rlhfv_nb.features import encode_prompts
from rlhfv_nb.files import read_jsonl_by, trim_torn_line


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings recorded with every answer file (upstream eval: beam 3, greedy, up to 1024 tokens)."""

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def key(self) -> str:
        """A short hash of the settings: answer files named by it are never reused under other settings."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
        )
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


def eval_settings(cfg: Config) -> GenerationSettings:
    """Deterministic decoding from `cfg.evaluation` (beam search if `num_beams` > 1), seeded by `cfg.seed`."""
    e = cfg.evaluation
    return GenerationSettings(max_new_tokens=e.max_new_tokens, num_beams=e.num_beams,
                              repetition_penalty=e.repetition_penalty, seed=cfg.seed)


def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Answers by id; a truncated last line (a kill mid-write) is ignored."""
    return read_jsonl_by(path, "id")


def _check_settings(path: Path, settings: GenerationSettings) -> None:
    sidecar = path.with_name(path.name + ".settings.json")
    wanted = asdict(settings)
    if sidecar.exists():
        found = json.loads(sidecar.read_text())
        if found != wanted:
            raise ValueError(f"{path}: holds answers generated with {found}, not {wanted}; use another file")
    else:
        sidecar.write_text(json.dumps(wanted, indent=1))


def stop_tokens(model: PreTrainedModel, tokenizer: Any) -> dict[str, Any]:
    """`generate`'s padding and stop tokens: the model's own stop tokens (its generation config may list several,
    e.g. Gemma3's <end_of_turn>, Qwen's <|im_end|>), the tokenizer's EOS only where the model names none."""
    stop = model.generation_config.eos_token_id
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id if stop is None else stop}


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[bytes], questions: Sequence[str],
    settings: GenerationSettings,
) -> list[dict[str, Any]]:
    """Answers for one batch: text and number of new tokens."""
    encoded = encode_prompts(processor, images, questions, padding_side="left")
    device = next(model.parameters()).device
    encoded = {key: value.to(device) for key, value in encoded.items()}
    tokenizer = processor.tokenizer
    output = model.generate(**encoded, **settings.generate_kwargs(), **stop_tokens(model, tokenizer))
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    lengths = (new_tokens != tokenizer.pad_token_id).sum(-1).tolist()
    return [{"answer": text.strip(), "new_tokens": n} for text, n in zip(texts, lengths)]


def generate_answers(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    items: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    out_path: Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Answer every item (`id`, `image` bytes, `question`), in order, resuming from `out_path` if given."""
    done: dict[str, dict[str, Any]] = {}
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _check_settings(out_path, settings)
        done = read_answers(out_path)
        trim_torn_line(out_path)
    todo = [item for item in items if item["id"] not in done]
    was_training = model.training
    model.eval()
    handle = out_path.open("a") if out_path is not None else None
    try:
        with tqdm(total=len(items), initial=len(items) - len(todo), desc="generating", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                # Seeded per batch start so a resumed run samples what an uninterrupted one would.
                torch.manual_seed(settings.seed + start + len(items) - len(todo))
                results = generate_batch(model, processor, [i["image"] for i in chunk],
                                         [i["question"] for i in chunk], settings)
                for item, result in zip(chunk, results):
                    record = {"id": item["id"], "question": item["question"], **result}
                    done[item["id"]] = record
                    if handle is not None:
                        handle.write(json.dumps(record) + "\n")
                if handle is not None:
                    handle.flush()
                    os.fsync(handle.fileno())
                bar.update(len(chunk))
    finally:
        if handle is not None:
            handle.close()
        model.train(was_training)
    return [done[item["id"]] for item in items]
