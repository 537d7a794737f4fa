"""Conquer: a labeler model answers each claim's yes/no question about the image, as P(yes).

RLAIF-V's labeler is an open-source MLLM (OmniLMM-12B, MiniCPM-Llama3-V 2.5) read at the answer's first token:
a claim is accepted when P("yes") + P("Yes") > P("no") + P("No") (upstream `utils/pair_construction.py`).
Two `Labeler`s:

- `LocalLabeler`: any Hugging Face VLM (`rlhfv_nb.modeling.load_model`/`load_processor`); one batched forward pass
  over the prompts, no generation: P(yes) = sum of the next-token probabilities of the first tokens of the yes
  words over that of the yes and no words (`yes_words`, `no_words`; upstream's four by default).
- `OpenAILabeler`: any OpenAI-compatible vision endpoint through `JudgeClient` (cached, retried, cost counted),
  the image sent as a data URI. A chat reply carries no probabilities: P(yes) is 1.0 for a reply that starts with
  "yes" and 0.0 for one that starts with "no".

The question goes to the labeler through `prompt` ("{question}" by default: the bare question, as POPE asks it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.data import DataError, decode_image
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.features import encode_prompts, response_ids
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.rlaifv.llm import ask_values, user
from rlhfv_nb.served import image_data_uri

T = TypeVar("T")
DEFAULT_PROMPT = "{question}"
YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")
YES_NO_NUDGE = "Answer with yes or no."
YES_NO_MAX_TOKENS = 16


class Labeler(Protocol):
    """Answers yes/no questions about images."""

    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        """P(yes) of every (image, question); images are encoded bytes, `datasets` image cells or PIL images."""
        ...


def check_prompt(prompt: str) -> str:
    """`prompt` if it is a template with one `{question}` field; ValueError naming it otherwise."""
    try:
        filled = prompt.format(question="\0")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"labeler prompt {prompt!r} is not a template with only a {{question}} field: {err}") from err
    if filled.count("\0") != 1:
        raise ValueError(f"labeler prompt {prompt!r} must hold {{question}} exactly once")
    return prompt


def _check_lengths(images: Sequence[Any], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions: need one image per question")


def _per_image(images: Sequence[Any], questions: Sequence[str], convert: Callable[[Any], T], first: int = 0
               ) -> list[T]:
    """`convert` of every image; errors name the image's index (counted from `first`) and its question."""
    converted = []
    for index, (image, question) in enumerate(zip(images, questions), start=first):
        try:
            converted.append(convert(image))
        except (DataError, OSError) as err:
            raise DataError(f"image {index} (asked {question!r}): {err}") from err
    return converted


_YES_NO = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


def parse_yes_no(reply: str) -> float:
    """1.0 for a reply starting with "yes", 0.0 for one starting with "no" (case and leading punctuation ignored);
    ValueError otherwise."""
    match = _YES_NO.match(reply)
    if match is None:
        raise ValueError(f"reply does not start with yes or no: {reply!r}")
    return 1.0 if match[1].lower() == "yes" else 0.0


class OpenAILabeler:
    """A `Labeler` on an OpenAI-compatible vision endpoint: the image as a data URI, then the prompt."""

    def __init__(self, client: JudgeClient, prompt: str = DEFAULT_PROMPT, chunk_size: int = 256) -> None:
        if chunk_size < 1:
            raise ValueError(f"labeler chunk_size must be >= 1, got {chunk_size}")
        self.client = client
        self.prompt = check_prompt(prompt)
        self.chunk_size = chunk_size  # questions whose encoded images are held at once

    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        """1.0 or 0.0 per question from the endpoint's yes/no reply; `FeedbackError` names the questions without one."""
        _check_lengths(images, questions)
        out: list[float] = []
        for start in range(0, len(questions), self.chunk_size):
            chunk = questions[start:start + self.chunk_size]
            uris = _per_image(images[start:start + self.chunk_size], chunk, image_data_uri, start)
            prompts = [[user([{"type": "image_url", "image_url": {"url": uri}},
                              {"type": "text", "text": self.prompt.format(question=question)}])]
                       for uri, question in zip(uris, chunk)]
            names = [f"question {question!r} on image {index}" for index, question in enumerate(chunk, start=start)]
            out += ask_values(self.client, prompts, names, parse_yes_no, YES_NO_NUDGE, "labelling",
                              max_tokens=YES_NO_MAX_TOKENS)
        return out


class LocalLabeler:
    """A `Labeler` on a local Hugging Face VLM, read from its next-token distribution after the prompt."""

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        batch_size: int = 16,
        prompt: str = DEFAULT_PROMPT,
        yes_words: Sequence[str] = YES_WORDS,
        no_words: Sequence[str] = NO_WORDS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"labeler batch_size must be >= 1, got {batch_size}")
        if not yes_words or not no_words:
            raise ValueError(f"labeler needs yes and no words, got yes_words={yes_words!r}, no_words={no_words!r}")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.prompt = check_prompt(prompt)
        self.yes_words = tuple(yes_words)
        self.no_words = tuple(no_words)

    @classmethod
    def load(cls, path: str | Path, model_cfg: ModelConfig, **kwargs: Any) -> LocalLabeler:
        """The labeler on the model at `path` (hub id or folder), loaded as every stage loads models; `kwargs` go to
        the constructor."""
        device_map = "auto" if torch.cuda.is_available() else None
        return cls(load_model(path, model_cfg, device_map=device_map), load_processor(path, model_cfg), **kwargs)

    def answer_ids(self, text: str) -> tuple[list[int], list[int]]:
        """The first token of every yes word and every no word as the model writes it after the prompt `text`
        (duplicates dropped). ValueError, naming the words, when a token starts both a yes and a no word."""
        first = {word: response_ids(self.processor, text, word)[0] for word in (*self.yes_words, *self.no_words)}
        yes = list(dict.fromkeys(first[w] for w in self.yes_words))
        no = list(dict.fromkeys(first[w] for w in self.no_words))
        shared = set(yes) & set(no)
        if shared:
            words = [w for w, token in first.items() if token in shared]
            raise ValueError(f"the yes words {self.yes_words} and no words {self.no_words} share first token(s) "
                             f"{sorted(shared)} ({words}): P(yes) cannot tell them apart")
        return yes, no

    @torch.no_grad()
    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        """P(yes) per question, in batches of `batch_size` (prompts padded on the right, read at their last token)."""
        _check_lengths(images, questions)
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(questions), self.batch_size):
            asked = questions[start:start + self.batch_size]
            decoded = _per_image(images[start:start + self.batch_size], asked, decode_image, start)
            batch = [self.prompt.format(question=question) for question in asked]
            encoded = encode_prompts(self.processor, decoded, batch, "right")
            # each prompt's last token predicts the answer; the LM head runs only on those positions
            keep, column = torch.unique(encoded["attention_mask"].sum(-1) - 1, return_inverse=True)
            inputs = {key: value.to(device) for key, value in encoded.items()}
            logits = self.model(**inputs, use_cache=False, logits_to_keep=keep.to(device)).logits
            logps = logits[torch.arange(len(batch), device=device), column.to(device)].float().log_softmax(-1).cpu()
            for row, text in zip(logps, batch):
                yes, no = self.answer_ids(text)
                out.append(torch.sigmoid(row[yes].logsumexp(0) - row[no].logsumexp(0)).item())
        return out
