"""Batched, resumable answer generation for (image, question) items with any supported model.

Answers are appended to a JSONL file as each batch finishes; a re-run skips the ids already there.
The generation settings sit in a sidecar `<file>.settings.json`; reusing a file with other settings
is refused rather than mixing answers. `AnswersFile` is that file for every backend: this module's
in-process `generate_answers` (`HFBackend`) and `rlhfv_nb.served` (`ServedBackend`, an OpenAI-compatible
server). `open_backend` picks one from the config.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.config import Config
from rlhfv_nb.features import encode_prompts
from rlhfv_nb.files import read_json, read_jsonl_by, trim_torn_line, write_json
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.progress import progress_bar


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


def answers_header(settings: GenerationSettings, backend: dict[str, Any] | None = None,
                   model: str | None = None) -> dict[str, Any]:
    """What an answers file's sidecar records: the settings, plus for a served backend where the answers came
    from (`backend`: kind, base URL without credentials, served model, request parameters), plus for an
    in-process model its fingerprint (`model`, `logps.model_fingerprint`), so that answers of a model trained
    again with other settings into the same folder are never taken for the new model's."""
    header = asdict(settings)
    if backend is not None:
        header["backend"] = backend
    if model is not None:
        header["model"] = model
    return header


def header_key(header: dict[str, Any]) -> str:
    """A short hash of an answers header: the `answers-<key>.jsonl` file name part."""
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:8]


def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Answers by id; a truncated last line (a kill mid-write) is ignored."""
    return read_jsonl_by(path, "id")


def check_header(path: Path, header: dict[str, Any]) -> None:
    """Record `header` in `<path>.settings.json`, or refuse a file whose sidecar records another one."""
    sidecar = path.with_name(path.name + ".settings.json")
    found = read_json(sidecar)
    if found is None:
        write_json(sidecar, header)
    elif found != header:
        raise ValueError(f"{path}: holds answers generated with {found}, not {header}; use another file")


class AnswersFile:
    """A resumable answers file (JSONL, one `{"id", "question", "answer", "new_tokens"}` per line) and its
    settings sidecar, shared by every backend. Without a path, answers are only kept in memory.

    Opening checks the sidecar against `header` (a file holding answers made otherwise is refused), reads the
    finished answers and trims a torn last line (a kill mid-write), so that item is answered again; so is an item
    whose recorded answer is to another question. `add`
    appends, flushes and fsyncs; it may be called from several threads.
    """

    def __init__(self, path: str | Path | None, header: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.done: dict[str, dict[str, Any]] = {}
        self._handle = None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            check_header(self.path, header)
            self.done = read_answers(self.path)
            trim_torn_line(self.path)

    def todo(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items not answered yet, in order; an item whose id was answered for another question is answered
        again (ids reused for other questions, e.g. after the feedback's question mix changed)."""
        return [item for item in items
                if self.done.get(item["id"], {}).get("question", object()) != item["question"]]

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep and append finished answers (each with its item's `id`)."""
        with self._lock:
            self.done.update((record["id"], record) for record in records)
            if self.path is None or not records:
                return
            if self._handle is None:
                self._handle = self.path.open("a")
            self._handle.write("".join(json.dumps(record) + "\n" for record in records))
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def answers(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answers of `items`, in their order (all must be answered)."""
        return [self.done[item["id"]] for item in items]

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> AnswersFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer_record(item: dict[str, Any], answer: str, new_tokens: int | None) -> dict[str, Any]:
    """One line of an answers file (`new_tokens`: None where a server does not say)."""
    return {"id": item["id"], "question": item["question"], "answer": answer.strip(), "new_tokens": new_tokens}


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
    model_id: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every item (`id`, `image` bytes, `question`), in order, resuming from `out_path` if given.

    `model_id` (the model's fingerprint) is recorded in the file's sidecar: a file of another model is refused."""
    was_training = model.training
    model.eval()
    try:
        with AnswersFile(out_path, answers_header(settings, model=model_id)) as answers:
            todo = answers.todo(items)
            with progress_bar(total=len(items), initial=len(items) - len(todo), desc="generating",
                              disable=not progress) as bar:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start : start + batch_size]
                    # Seeded per batch start so a resumed run samples what an uninterrupted one would.
                    torch.manual_seed(settings.seed + start + len(items) - len(todo))
                    results = generate_batch(model, processor, [i["image"] for i in chunk],
                                             [i["question"] for i in chunk], settings)
                    answers.add([answer_record(item, r["answer"], r["new_tokens"])
                                 for item, r in zip(chunk, results)])
                    bar.update(len(chunk))
            return answers.answers(items)
    finally:
        model.train(was_training)


class AnswerBackend(Protocol):
    """Answers (image, question) items into a resumable answers file: `HFBackend` or `served.ServedBackend`."""

    def key(self, settings: GenerationSettings) -> str:
        """The answers file name part for `settings` on this backend (differs between backends)."""
        ...

    def answer(self, items: Sequence[dict[str, Any]], settings: GenerationSettings, path: Path | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
        """Answer every item, in order, resuming from `path`."""
        ...

    def close(self) -> None:
        """Free what the backend holds (the in-process model, the HTTP client)."""
        ...

    def __enter__(self) -> AnswerBackend: ...

    def __exit__(self, *exc: object) -> None: ...


class HFBackend:
    """The model generating in this process, loaded once for several tasks (`generate_answers`)."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, batch_size: int = 16,
                 model_id: str | None = None) -> None:
        self.model: PreTrainedModel | None = model
        self.processor = processor
        self.batch_size = batch_size
        self.model_id = model_id

    @classmethod
    def load(cls, cfg: Config, model_path: str | Path) -> HFBackend:
        """Load the model at `model_path` (on the GPUs when there are any) with `cfg.evaluation.batch_size`; its
        answers files are keyed by the folder's fingerprint."""
        from rlhfv_nb.logps import model_fingerprint

        processor = load_processor(model_path, cfg.model)
        model = load_model(model_path, cfg.model, device_map="auto" if torch.cuda.is_available() else None)
        return cls(model, processor, cfg.evaluation.batch_size, model_fingerprint(model_path))

    def key(self, settings: GenerationSettings) -> str:
        return header_key(answers_header(settings, model=self.model_id))

    def answer(self, items: Sequence[dict[str, Any]], settings: GenerationSettings, path: Path | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
        if self.model is None:
            raise RuntimeError("HFBackend is closed: its model was freed")
        return generate_answers(self.model, self.processor, items, settings, path, self.batch_size, progress,
                                self.model_id)

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_backend(cfg: Config, model_path: str | Path) -> AnswerBackend:
    """The answering backend of `cfg.evaluation.backend` for one model: "hf" loads it here, "openai" asks
    `cfg.evaluation.server` (with `server.model` null, the served model is looked up now: an unreachable
    server fails here; otherwise at the first answer). Use it as a context manager, or call `close()`."""
    backend = cfg.evaluation.backend
    if backend == "hf":
        return HFBackend.load(cfg, model_path)
    if backend == "openai":
        from rlhfv_nb.served import ServedBackend

        return ServedBackend(cfg.evaluation.server, model_path=str(model_path))
    raise ValueError(f"evaluation.backend: unknown backend {backend!r} (hf or openai)")
