"""Answers from a served model: an OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp) for
`evaluation.backend: openai`.

Each item goes out as one chat completion (the image as a base64 data URI, then the question, as the
in-process prompt has them), at most `max_concurrency` in flight, transient failures (connection, timeout,
429, 5xx) retried with backoff. Answers land in the same resumable answers file as in-process generation
(`generate.AnswersFile`); its sidecar records the settings and the server (base URL without credentials,
served model, request parameters), so a served answers file has another key than an in-process one and is
never mixed with it.

`GenerationSettings` to request (`request_params`):
- greedy (`do_sample` false): temperature 0; sampling: temperature, top_p and a seed per item;
- `max_new_tokens` -> `max_tokens`;
- `repetition_penalty` -> vLLM's extra `repetition_penalty`, always sent: vLLM otherwise falls back to the
  model's generation_config.json default;
- `num_beams` > 1 -> vLLM's extra `use_beam_search` with `n` = beam width; the best beam is the first choice.
  vLLM's beam search does not apply `repetition_penalty` (logged).

The API key is read from the environment (`api_key_env`, "EMPTY" when unset, as vLLM accepts) and handed to
the `openai` client only: it is never stored on these objects, written or logged.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai
from PIL import Image

from rlhfv_nb.config import ServedConfig
from rlhfv_nb.data import DataError, decode_image, encode_image, image_bytes
from rlhfv_nb.generate import AnswersFile, GenerationSettings, answer_record, answers_header, header_key
from rlhfv_nb.progress import progress_bar
from rlhfv_nb.retry import retry_delay

log = logging.getLogger(__name__)
WEB_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
T = TypeVar("T")
# HTTP statuses worth retrying (as the openai client itself does): timeout, conflict, rate limit, server errors
TRANSIENT_STATUS = {408, 409, 429}


class ServedError(RuntimeError):
    """The server answered a request with an error that retrying does not mend (e.g. HTTP 400)."""


class ServedUnavailable(ServedError):
    """The server could not be reached after the retries, refused the credentials, or lacks the model."""


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment, and without a trailing slash: what is recorded and shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def image_data_uri(image: Any) -> str:
    """A `data:<mime>;base64,...` URI of an image cell (bytes, datasets cell, PIL image): its own bytes if PNG,
    JPEG, WEBP or GIF (what OpenAI-compatible vision APIs take), else re-encoded as PNG."""
    data = image_bytes(image)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind = opened.format
    except Exception as err:  # PIL raises many types for broken data
        raise DataError(f"field 'image' is an undecodable image: {err}") from err
    mime = WEB_IMAGE_TYPES.get(kind or "")
    if mime is None:
        data, mime = encode_image(decode_image(data)), WEB_IMAGE_TYPES["PNG"]
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(image: Any, question: str) -> list[dict[str, Any]]:
    """One user turn with the image, then the question (the order of `features.user_message`)."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_uri(image)}},
                                         {"type": "text", "text": question}]}]


def request_params(settings: GenerationSettings) -> dict[str, Any]:
    """Chat completion parameters for `settings`, vLLM's extras under `extra_body` (no model, messages, seed)."""
    if settings.num_beams > 1 and settings.do_sample:
        raise ValueError("served generation: beam sampling (num_beams > 1 with do_sample) has no OpenAI/vLLM "
                         "equivalent; use num_beams 1 or do_sample false")
    params: dict[str, Any] = {"max_tokens": settings.max_new_tokens}
    if settings.do_sample:
        params.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        params["temperature"] = 0.0
    extra: dict[str, Any] = {"repetition_penalty": settings.repetition_penalty}
    if settings.num_beams > 1:
        params["n"] = settings.num_beams  # vLLM: the beam width (ChatCompletionRequest.to_beam_search_params)
        extra["use_beam_search"] = True
    params["extra_body"] = extra
    return params


def _transient(err: Exception) -> bool:
    if isinstance(err, openai.APIConnectionError):  # refused, reset, timed out (APITimeoutError)
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code in TRANSIENT_STATUS or err.status_code >= 500)


class ServedBackend:
    """A model behind an OpenAI-compatible server, answering items into resumable answers files.

    `server.model` null: the model the server lists at /v1/models (contacted here) whose id or root (vLLM: the
    folder it serves, also for `--lora-modules`) is `model_path`; an error when none is, as several models must not
    silently share one served model's answers. Retries: `max_retries` more attempts per request, waiting
    `backoff_s` * 2**attempt (at most `max_backoff_s`, or the server's Retry-After).
    """

    def __init__(
        self,
        server: ServedConfig,
        model_path: str | Path | None = None,
        *,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.server = server
        self.base_url = public_url(server.base_url)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = openai.OpenAI(api_key=os.environ.get(server.api_key_env) or "EMPTY",
                                     base_url=server.base_url, timeout=server.timeout, max_retries=0)
        self.model = server.model or self._served_model(None if model_path is None else str(model_path))

    def __repr__(self) -> str:
        return f"ServedBackend(base_url={self.base_url!r}, model={self.model!r})"

    # -- requests ----------------------------------------------------------------------------------
    def _call(self, what: str, request: Callable[[], T], stop: threading.Event | None = None) -> T:
        """`request()`, retried on transient failures; raises `ServedError`/`ServedUnavailable` naming the server.

        `stop` set (another request failed) ends the waiting between attempts."""
        stop = stop or threading.Event()
        for attempt in range(self.max_retries + 1):
            try:
                return request()
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise ServedUnavailable(f"{what}: {self.base_url} refused the credentials (key from "
                                        f"${self.server.api_key_env}, 'EMPTY' when unset): HTTP {err.status_code}"
                                        ) from err
            except (openai.APIConnectionError, openai.APIStatusError) as err:
                if not _transient(err):
                    assert isinstance(err, openai.APIStatusError)
                    raise ServedError(f"{what}: {self.base_url} answered HTTP {err.status_code}: {err.message}"
                                      ) from err
                problem = f"{type(err).__name__}: {err}"
                if attempt == self.max_retries:
                    raise ServedUnavailable(f"{what}: no answer from {self.base_url} after {attempt + 1} "
                                            f"attempts: {problem}") from err
                wait = retry_delay(err, attempt, self.backoff_s, self.max_backoff_s)
                log.warning("%s: %s (attempt %d of %d), retrying in %.1fs", what, problem, attempt + 1,
                            self.max_retries + 1, wait)
                if stop.wait(wait):
                    raise ServedError(f"{what}: stopped, another request failed") from err
        raise AssertionError("unreachable")

    def _served_model(self, model_path: str | None) -> str:
        cards = list(self._call("listing models", self._client.models.list).data)
        names = [card.id for card in cards]
        wanted = set() if model_path is None else {model_path, str(Path(model_path).resolve())}
        matching = [card.id for card in cards if {card.id, getattr(card, "root", None)} & wanted]
        if len(cards) == 1 and not wanted:
            return names[0]
        if len(matching) == 1:
            return matching[0]
        listed = ", ".join(map(repr, names)) or "no models"
        raise ServedUnavailable(f"{self.base_url} lists {listed}, none of them served from {model_path}: serve it "
                                "(vLLM: the model folder, or --lora-modules NAME=FOLDER) or set "
                                "evaluation.server.model to the one served name to evaluate")

    def _answer_one(self, item: dict[str, Any], params: dict[str, Any], seed: int | None,
                    stop: threading.Event) -> dict[str, Any]:
        what = f"item {item['id']!r}"
        if stop.is_set():
            raise ServedError(f"{what}: not asked, another request failed")
        messages = chat_messages(item["image"], item["question"])
        kwargs = params if seed is None else {**params, "seed": seed}
        response = self._call(what, lambda: self._client.chat.completions.create(
            model=self.model, messages=messages, **kwargs), stop)
        if not response.choices:
            raise ServedError(f"{what}: {self.base_url} replied without choices")
        usage = response.usage
        # With beams, usage counts every returned beam's tokens: not this answer's.
        new_tokens = usage.completion_tokens if usage is not None and len(response.choices) == 1 else None
        return answer_record(item, response.choices[0].message.content or "", new_tokens)

    # -- the backend interface -----------------------------------------------------------------------
    def identity(self, settings: GenerationSettings) -> dict[str, Any]:
        """Where answers under `settings` come from, as the answers sidecar records it (no credentials)."""
        return {"kind": "openai", "base_url": self.base_url, "model": self.model,
                "request": request_params(settings)}

    def key(self, settings: GenerationSettings) -> str:
        """The answers file name part: covers the settings and this server and model."""
        return header_key(answers_header(settings, self.identity(settings)))

    def answer(self, items: Sequence[dict[str, Any]], settings: GenerationSettings, path: Path | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
        """Answer every item (`id`, `image`, `question`), in order, resuming from `path` if given.

        The first request that fails after its retries stops the run (answers finished so far are kept) and
        raises `ServedError` / `ServedUnavailable`.
        """
        params = request_params(settings)
        if settings.num_beams > 1 and settings.repetition_penalty != 1.0:
            log.warning("%s: vLLM's beam search (use_beam_search) does not apply repetition_penalty=%s; "
                        "served answers differ from in-process beam search with it", self.base_url,
                        settings.repetition_penalty)
        position = {item["id"]: index for index, item in enumerate(items)}
        with AnswersFile(path, answers_header(settings, self.identity(settings))) as answers:
            todo = answers.todo(items)
            stop = threading.Event()
            pool = ThreadPoolExecutor(max_workers=self.server.max_concurrency, thread_name_prefix="served")
            futures: dict[Future[dict[str, Any]], dict[str, Any]] = {}
            interrupted = False
            try:
                for item in todo:
                    # a seed per item (its place in `items`): a resumed run asks what an uninterrupted one would
                    seed = settings.seed + position[item["id"]] if settings.do_sample else None
                    futures[pool.submit(self._answer_one, item, params, seed, stop)] = item
                with progress_bar(total=len(items), initial=len(items) - len(todo), desc=f"asking {self.model}",
                                  disable=not progress) as bar:
                    for future in as_completed(futures):
                        answers.add([future.result()])
                        bar.update(1)
            except BaseException as err:
                stop.set()
                interrupted = not isinstance(err, Exception)  # Ctrl-C: do not wait for requests in flight
                raise
            finally:
                pool.shutdown(wait=not interrupted, cancel_futures=True)
                # keep what finished while the run was stopping: a re-run does not ask again
                answers.add([f.result() for f in futures if f.done() and not f.cancelled() and
                             f.exception() is None and futures[f]["id"] not in answers.done])
            return answers.answers(items)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def served_answers(
    server: ServedConfig,
    items: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    path: Path | None = None,
    *,
    model_path: str | Path | None = None,
    progress: bool = True,
    **retries: Any,
) -> list[dict[str, Any]]:
    """Answer every item through `server` into the resumable answers file `path` (see `ServedBackend`)."""
    with ServedBackend(server, model_path, **retries) as backend:
        return backend.answer(items, settings, path, progress)
