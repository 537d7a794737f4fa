"""LLM judge client: OpenAI chat API (any compatible server), disk cache, retries, usage accounting.

The API key is read from the environment at construction and handed to the `openai` client only:
it is never stored on this object, written to the cache, or logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import openai
from openai.types.chat import ChatCompletion

from rlhfv_nb.files import write_json

T = TypeVar("T")
Messages = Sequence[dict[str, str]]

# USD per 1M tokens (input, output), OpenAI list prices; an estimate only, extend through `prices=`.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class JudgeUnavailable(RuntimeError):
    """No usable judge (no API key, or the server refused the credentials)."""


@dataclass(frozen=True)
class JudgeReply:
    """One chat completion (or the error that stopped it)."""

    text: str | None
    model: str
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Judged(Generic[T]):
    """A judge reply parsed into a value, or the reason it could not be."""

    value: T | None
    model: str
    replies: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Usage:
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def cache_key(model: str, messages: Messages, temperature: float, max_tokens: int) -> str:
    """Stable hash of everything that determines a completion."""
    payload = json.dumps(
        {"model": model, "messages": list(messages), "temperature": temperature, "max_tokens": max_tokens},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeClient:
    """Chat-completion judge with an on-disk cache, retry loop and bounded concurrency."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        max_concurrency: int = 4,
        max_retries: int = 5,
        timeout: float = 120.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        prices: dict[str, tuple[float, float]] | None = None,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise JudgeUnavailable(
                f"no judge API key: environment variable {api_key_env} is not set "
                "(judged benchmarks are skipped; a local OpenAI-compatible server accepts any non-empty key)"
            )
        self.model = model
        self.base_url = base_url
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._usage = _Usage()
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:
        return f"JudgeClient(model={self.model!r}, base_url={self.base_url!r}, cache_dir={self.cache_dir!r})"

    @staticmethod
    def available(api_key_env: str = "OPENAI_API_KEY") -> bool:
        """Whether a judge key is set, so judged benchmarks can run."""
        return bool(os.environ.get(api_key_env))

    # -- single completion -------------------------------------------------------------------------
    def complete(self, messages: Messages, max_tokens: int | None = None) -> JudgeReply:
        """One completion, from the cache when present; errors after the retries come back in `error`."""
        max_tokens = max_tokens or self.max_tokens
        key = cache_key(self.model, messages, self.temperature, max_tokens)
        cached = self._cache_get(key)
        if cached is not None:
            self._usage.add(cache_hits=1)
            return JudgeReply(text=cached["text"], model=cached["model"], cached=True)
        for attempt in range(self.max_retries + 1):
            self._usage.add(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=list(messages),
                    temperature=self.temperature,
                    max_tokens=max_tokens,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                where = self.base_url or "api.openai.com"
                raise JudgeUnavailable(f"judge at {where} refused the credentials: {err}") from err
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
                if attempt == self.max_retries:
                    self._usage.add(failures=1)
                    return JudgeReply(None, self.model, error=f"gave up after {attempt + 1} attempts: {err}")
                self._usage.add(retries=1)
                time.sleep(self._delay(attempt, err))
                continue
            except openai.APIStatusError as err:
                self._usage.add(failures=1)
                return JudgeReply(None, self.model, error=f"HTTP {err.status_code}: {err}")
            if not response.choices:
                self._usage.add(failures=1)
                return JudgeReply(None, response.model or self.model, error="reply without choices")
            return self._record(key, messages, max_tokens, response)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, err: Exception) -> float:
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            wait = float(retry_after) if retry_after is not None else self.backoff_s * 2**attempt
        except ValueError:
            wait = self.backoff_s * 2**attempt
        return min(wait, self.max_backoff_s)

    def _record(self, key: str, messages: Messages, max_tokens: int, response: ChatCompletion) -> JudgeReply:
        text = response.choices[0].message.content or ""
        model = response.model or self.model
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        self._usage.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self._cache_put(
            key,
            {
                "request": {"model": self.model, "temperature": self.temperature, "max_tokens": max_tokens},
                "messages": list(messages),
                "model": model,
                "text": text,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            },
        )
        return JudgeReply(text, model, False, prompt_tokens, completion_tokens)

    # -- cache -------------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_get(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a damaged entry is simply recomputed and overwritten

    def _cache_put(self, key: str, record: dict) -> None:
        path = self._cache_path(key)
        if path is not None:
            write_json(path, record)

    # -- batches and parsing -----------------------------------------------------------------------
    def complete_many(self, prompts: Sequence[Messages], max_tokens: int | None = None) -> list[JudgeReply]:
        """Completions for many message lists, at most `max_concurrency` in flight, in input order."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(lambda m: self.complete(m, max_tokens), prompts))

    def ask(self, messages: Messages, parse: Callable[[str], T], nudge: str, attempts: int = 2) -> Judged[T]:
        """Complete and parse; on a parse error ask again with `nudge` appended, up to `attempts` replies."""
        conversation = list(messages)
        replies: list[str] = []
        model = self.model
        problem = "no reply"
        for _ in range(attempts):
            reply = self.complete(conversation)
            model = reply.model
            if reply.error is not None:
                return Judged(None, model, tuple(replies), reply.error)
            replies.append(reply.text)
            try:
                return Judged(parse(reply.text), model, tuple(replies))
            except ValueError as err:
                problem = str(err)
            conversation += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": nudge}]
        error = f"unparseable judge reply after {attempts} tries: {problem}"
        return Judged(None, model, tuple(replies), error)

    def ask_many(
        self, prompts: Sequence[Messages], parse: Callable[[str], T], nudge: str, attempts: int = 2
    ) -> list[Judged[T]]:
        """`ask` for many prompts with bounded concurrency, in input order."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(lambda m: self.ask(m, parse, nudge, attempts), prompts))

    # -- accounting --------------------------------------------------------------------------------
    def usage(self) -> dict:
        """Counters since this client was created, with an estimated cost (None if the price is unknown)."""
        u = self._usage
        price = self.prices.get(self.model)
        cost = None
        if price is not None:
            cost = (u.prompt_tokens * price[0] + u.completion_tokens * price[1]) / 1e6
        return {
            "judge_model": self.model,
            "base_url": self.base_url,
            "requests": u.requests,
            "retries": u.retries,
            "cache_hits": u.cache_hits,
            "failures": u.failures,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "estimated_cost_usd": cost,
        }
