"""LLM judge client: OpenAI chat API (any compatible server), disk cache, retries, circuit breaker, usage accounting.

The API key is read from the environment at construction and handed to the `openai` client only:
it is never stored on this object, written to the cache, or logged.

Failure handling
----------------
* Retryable (up to `max_retries` retries with exponential backoff `backoff_s * 2**attempt`, capped at
  `max_backoff_s`, or the server's Retry-After): rate limits (429), server errors (5xx), connection
  failures and timeouts, and bad bodies: a 200 reply that is not JSON, has no `choices`, or has empty
  content. Once a prompt's retries are spent, its reply carries `error` and the batch goes on.
* Never cached as final: a reply is written to the cache only once the caller's parser accepts it
  (`ask`, `ask_many`); an unparseable reply is asked again with a nudge and, if still unparseable, the
  item is reported failed with nothing cached, so a re-run against a healthy judge asks afresh and
  recovers it. A cache entry that the parser rejects (e.g. written by an older version) is ignored.
* Circuit breaker: `max_consecutive_failures` connection failures in a row (refused, reset, DNS,
  timeouts, and HTTP 502/503/504 from a gateway whose judge is down), counted over all threads with
  any reply from the judge resetting the count, open the breaker: every in-flight and queued request
  stops with `JudgeDown`, whose message names the base URL, and this client refuses further calls.
  Backoff sleeps wake at once; an HTTP attempt already on the wire is not awaited (it ends in the
  background within `timeout`, its reply still cached if good). 0 disables the breaker.
* Time bound for a dead judge (`dead_judge_bound_s`): with W = min(max_concurrency, prompts) workers
  in parallel, each worker has made k = ceil(max_consecutive_failures / W) failed attempts by
  t_k = k * attempt_s + (sum of the k - 1 backoff sleeps between them), so the batch fails by t_k.
  With the defaults (max_concurrency 4, max_consecutive_failures 8, backoff 2 s, max_retries 5) and
  any batch of >= 4 prompts (MMHal's 96 items included): k = 2, t = 2 s + 2 attempts: ~2 s when the
  port is closed or the server resets the connection, 22 s when the host drops packets (connect
  timeout 10 s), 242 s when the server accepts but never answers (read timeout 120 s). Before the
  breaker a closed port cost ~62 s of retries per prompt, ~25 min for MMHal's 96. (A gateway's
  Retry-After on 502/503/504 is honoured up to `max_backoff_s` and can lengthen the sleeps.)
* Kill and re-run: every accepted reply is cached (temporary file + atomic rename) as soon as it
  arrives, so a kill loses only the work of the prompts in flight: a re-run re-pays at most
  `max_concurrency` prompts (one per worker), each at most `attempts` completions (default 2: an
  unparseable first reply, never cached, and its nudge), and nothing already cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import openai

from rlhfv_nb.files import write_json
from rlhfv_nb.retry import retry_delay

T = TypeVar("T")
R = TypeVar("R")
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
GATEWAY_DOWN = (502, 503, 504)  # a proxy answering for a judge that is down: counted by the breaker


class JudgeUnavailable(RuntimeError):
    """No usable judge (no API key, or the server refused the credentials)."""


class JudgeDown(JudgeUnavailable):
    """The circuit breaker opened: the judge failed `max_consecutive_failures` connections in a row."""


class _BadBody(Exception):
    """A 200 reply without a usable completion (not JSON, no choices, empty content)."""


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
    """A judge reply parsed into a value, or the reason it could not be.

    `unparsed`: the judge answered but no reply could be parsed (as opposed to no reply at all).
    """

    value: T | None
    model: str
    replies: tuple[str, ...] = ()
    error: str | None = None
    unparsed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Usage:
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    bad_bodies: int = 0
    unparsed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def cache_key(model: str, messages: Messages, temperature: float, max_tokens: int, repeat: int = 0) -> str:
    """Stable hash of everything that determines a completion; `repeat` > 0 marks an independent re-judging.

    Repeat 0 hashes as before repeats existed, so older caches stay valid.
    """
    request: dict[str, Any] = {"model": model, "messages": list(messages), "temperature": temperature,
                               "max_tokens": max_tokens}
    if repeat:
        request["repeat"] = repeat
    payload = json.dumps(request, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def backoff_delays(max_retries: int, backoff_s: float, max_backoff_s: float) -> list[float]:
    """Sleeps between one prompt's attempts when the server gives no Retry-After."""
    return [min(backoff_s * 2**attempt, max_backoff_s) for attempt in range(max_retries)]


def dead_judge_bound_s(
    max_consecutive_failures: int,
    max_concurrency: int,
    max_retries: int,
    backoff_s: float,
    max_backoff_s: float,
    attempt_s: float = 0.0,
    n_prompts: int | None = None,
) -> float:
    """Upper bound on the seconds a batch of `n_prompts` (None: at least `max_concurrency`) spends on a dead judge.

    `attempt_s`: how long one failed attempt takes (about 0 for a closed port or a reset, the connect
    timeout for a host that drops packets, `timeout` for a server that never answers). The batch ends
    when the breaker opens or, with few prompts and the breaker not reached, when every prompt has
    spent its retries. Scheduling overhead (milliseconds) is not included.
    """
    workers = max(1, min(max_concurrency, n_prompts if n_prompts is not None else max_concurrency))
    per_item = max_retries + 1
    delays = backoff_delays(max_retries, backoff_s, max_backoff_s)
    if n_prompts is None:
        least, most = math.inf, math.inf
    else:
        least, most = n_prompts // workers * per_item, -(-n_prompts // workers) * per_item
    k = math.ceil(max_consecutive_failures / workers) if max_consecutive_failures > 0 else math.inf
    failures = k if k <= least else most  # a worker's failed attempts until the breaker or the end
    if math.isinf(failures):
        raise ValueError("unbounded: the breaker is disabled and the number of prompts is not given")
    # the j-th failed attempt (j = 1..failures) is followed by the sleep before the next attempt of its item
    sleeps = sum(delays[j % per_item] for j in range(failures - 1) if j % per_item < max_retries)
    return failures * attempt_s + sleeps


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are not None, over repeated judge runs.

    (None, None) without values; the std is None with a single value (one run measures no spread).
    """
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.mean(present), statistics.stdev(present) if len(present) > 1 else None


def _completion(response: object, fallback_model: str) -> tuple[str, str, int, int]:
    """(text, model, prompt_tokens, completion_tokens) of a chat completion; `_BadBody` if there is none."""
    choices = getattr(response, "choices", None)
    if not isinstance(response, openai.BaseModel) or not isinstance(choices, list) or not choices:
        raise _BadBody(f"reply without choices: {str(response)[:200]!r}")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str) or not text.strip():
        raise _BadBody("reply with empty content")
    model = getattr(response, "model", None)
    usage = getattr(response, "usage", None)
    tokens = [getattr(usage, name, 0) for name in ("prompt_tokens", "completion_tokens")]
    prompt_tokens, completion_tokens = (t if isinstance(t, int) else 0 for t in tokens)
    return text, model if isinstance(model, str) and model else fallback_model, prompt_tokens, completion_tokens


class JudgeClient:
    """Chat-completion judge with an on-disk cache, retry loop, circuit breaker and bounded concurrency.

    Per call, `temperature` (None: the client's), `system` (a system message put first), `max_tokens`
    (None: the client's) and `repeat` (an independent re-judging with its own cache entry) can be set.
    """

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
        max_consecutive_failures: int = 8,
        connect_timeout: float = 10.0,
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
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_consecutive_failures = max_consecutive_failures
        self._usage = _Usage()
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                     timeout=httpx.Timeout(timeout, connect=self.connect_timeout))
        self._breaker_lock = threading.Lock()
        self._consecutive_failures = 0
        self._stopped: JudgeUnavailable | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"JudgeClient(model={self.model!r}, base_url={self.base_url!r}, cache_dir={self.cache_dir!r})"

    @staticmethod
    def available(api_key_env: str = "OPENAI_API_KEY") -> bool:
        """Whether a judge key is set, so judged benchmarks can run."""
        return bool(os.environ.get(api_key_env))

    @property
    def where(self) -> str:
        """The judge's base URL (the OpenAI API when none was given)."""
        return str(self._client.base_url).rstrip("/")

    def dead_judge_bound_s(self, attempt_s: float = 0.0, n_prompts: int | None = None) -> float:
        """`dead_judge_bound_s` for this client's settings (see the module docstring)."""
        return dead_judge_bound_s(self.max_consecutive_failures, self.max_concurrency, self.max_retries,
                                  self.backoff_s, self.max_backoff_s, attempt_s, n_prompts)

    # -- single completion -------------------------------------------------------------------------
    def complete(
        self,
        messages: Messages,
        max_tokens: int | None = None,
        *,
        temperature: float | None = None,
        system: str | None = None,
        repeat: int = 0,
        accept: Callable[[str], object] | None = None,
    ) -> JudgeReply:
        """One completion, from the cache when present; errors after the retries come back in `error`.

        `accept` (a parser raising ValueError on a reply that is not final): only replies it accepts are
        cached, and a cached reply it rejects is asked again; without it every non-empty reply is cached.
        Raises `JudgeUnavailable` when the credentials are refused, `JudgeDown` once the breaker is open.
        """
        return self._complete(self._messages(messages, system), max_tokens, temperature, repeat, accept)

    @staticmethod
    def _messages(messages: Messages, system: str | None) -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system is not None else []) + list(messages)

    def _complete(
        self,
        messages: list[dict[str, str]],
        max_tokens: int | None,
        temperature: float | None,
        repeat: int,
        accept: Callable[[str], object] | None,
    ) -> JudgeReply:
        """Cached completion; with `accept` (raising ValueError on a reply that is not final) only accepted
        replies are cached, and a cached reply it rejects is asked again."""
        max_tokens = max_tokens or self.max_tokens
        temperature = self.temperature if temperature is None else temperature
        key = cache_key(self.model, messages, temperature, max_tokens, repeat)
        cached = self._cache_get(key, accept)
        if cached is not None:
            self._usage.add(cache_hits=1)
            return JudgeReply(text=cached["text"], model=cached["model"], cached=True)
        for attempt in range(self.max_retries + 1):
            self._check_open()
            self._usage.add(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens
                )
                text, model, prompt_tokens, completion_tokens = _completion(response, self.model)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise self._open(JudgeUnavailable(f"judge at {self.where} refused the credentials: {err}")) from err
            except (openai.APIConnectionError, openai.InternalServerError) as err:  # incl. timeouts, 5xx
                if not isinstance(err, openai.InternalServerError) or err.status_code in GATEWAY_DOWN:
                    self._failed_attempt(err)
                else:
                    self._reached()
                problem: Exception = err
            except openai.RateLimitError as err:
                self._reached()
                problem = err
            except openai.APIStatusError as err:
                self._reached()
                self._usage.add(failures=1)
                return JudgeReply(None, self.model, error=f"HTTP {err.status_code}: {err}")
            except (_BadBody, ValueError, openai.APIResponseValidationError) as err:  # ValueError: body not JSON
                self._reached()
                self._usage.add(bad_bodies=1)
                problem = _BadBody(f"bad reply body: {type(err).__name__}: {err}")
            else:
                self._reached()
                self._usage.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
                if accept is None or self._accepts(accept, text):
                    self._cache_put(key, {
                        "request": {"model": self.model, "temperature": temperature, "max_tokens": max_tokens,
                                    "repeat": repeat},
                        "messages": messages,
                        "model": model,
                        "text": text,
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                    })
                return JudgeReply(text, model, False, prompt_tokens, completion_tokens)
            if attempt == self.max_retries:
                self._usage.add(failures=1)
                return JudgeReply(None, self.model, error=f"gave up after {attempt + 1} attempts: {problem}")
            self._usage.add(retries=1)
            if self._stop.wait(retry_delay(problem, attempt, self.backoff_s, self.max_backoff_s)):
                self._check_open()
        raise AssertionError("unreachable")

    @staticmethod
    def _accepts(accept: Callable[[str], object], text: str) -> bool:
        try:
            accept(text)
        except ValueError:
            return False
        return True

    # -- circuit breaker ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._stopped is not None:
            raise type(self._stopped)(str(self._stopped))

    def _open(self, err: JudgeUnavailable) -> JudgeUnavailable:
        """Stop every request of this client with `err` (the first reason wins); returns the reason."""
        with self._breaker_lock:
            if self._stopped is None:
                self._stopped = err
            self._stop.set()
            return self._stopped

    def _reached(self) -> None:
        with self._breaker_lock:
            self._consecutive_failures = 0

    def _failed_attempt(self, err: Exception) -> None:
        with self._breaker_lock:
            self._consecutive_failures += 1
            count = self._consecutive_failures
        limit = self.max_consecutive_failures
        if limit > 0 and count >= limit:
            raise self._open(JudgeDown(
                f"judge at {self.where} is down: {count} connection failures in a row (limit "
                f"max_consecutive_failures={limit}; last: {type(err).__name__}: {err}); stopped all in-flight "
                "and queued requests. Replies received so far are cached: re-run once the judge is back"
            )) from err

    # -- cache -------------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_get(self, key: str, accept: Callable[[str], object] | None = None) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # a damaged entry is simply recomputed and overwritten
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            return None
        if accept is not None and not self._accepts(accept, record["text"]):
            return None  # not a final reply (cached before replies were parsed first): ask again
        record.setdefault("model", self.model)
        return record

    def _cache_put(self, key: str, record: dict) -> None:
        path = self._cache_path(key)
        if path is not None:
            write_json(path, record)  # temporary file + atomic rename: a kill never leaves half an entry

    # -- batches and parsing -----------------------------------------------------------------------
    def _map(self, fn: Callable[[Any], R], inputs: Sequence[Any]) -> list[R]:
        """`fn` over `inputs` with at most `max_concurrency` in flight, in input order.

        On the first exception (the breaker, refused credentials, an interrupt) queued calls are
        cancelled and the exception is raised at once, without waiting for calls on the wire.
        """
        if not inputs:
            return []
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        futures: list[Future[R]] = []
        try:
            futures = [pool.submit(fn, x) for x in inputs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                first = next((f for f in failed if isinstance(f.exception(), JudgeUnavailable)), failed[0])
                raise first.exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def complete_many(
        self,
        prompts: Sequence[Messages],
        max_tokens: int | None = None,
        *,
        temperature: float | None = None,
        system: str | None = None,
        repeat: int = 0,
        accept: Callable[[str], object] | None = None,
    ) -> list[JudgeReply]:
        """Completions for many message lists, at most `max_concurrency` in flight, in input order."""
        return self._map(lambda m: self.complete(m, max_tokens, temperature=temperature, system=system,
                                                 repeat=repeat, accept=accept), prompts)

    def ask(
        self,
        messages: Messages,
        parse: Callable[[str], T],
        nudge: str,
        attempts: int = 2,
        *,
        temperature: float | None = None,
        system: str | None = None,
        repeat: int = 0,
        max_tokens: int | None = None,
    ) -> Judged[T]:
        """Complete and parse; on a parse error ask again with `nudge` appended, up to `attempts` replies.

        `parse` raises ValueError on a reply it cannot read; only replies it accepts are cached.
        """
        conversation = self._messages(messages, system)
        replies: list[str] = []
        model = self.model
        problem = "no reply"
        for _ in range(attempts):
            reply = self._complete(conversation, max_tokens, temperature, repeat, parse)
            model = reply.model
            if reply.error is not None or reply.text is None:
                return Judged(None, model, tuple(replies), reply.error or "no reply")
            replies.append(reply.text)
            try:
                return Judged(parse(reply.text), model, tuple(replies))
            except ValueError as err:
                problem = str(err)
                self._usage.add(unparsed=1)
            conversation += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": nudge}]
        error = f"unparseable judge reply after {attempts} tries: {problem}"
        return Judged(None, model, tuple(replies), error, unparsed=True)

    def ask_many(
        self,
        prompts: Sequence[Messages],
        parse: Callable[[str], T],
        nudge: str,
        attempts: int = 2,
        *,
        temperature: float | None = None,
        system: str | None = None,
        repeats: Sequence[int] | int = 0,
        max_tokens: int | None = None,
    ) -> list[Judged[T]]:
        """`ask` for many prompts with bounded concurrency, in input order.

        `repeats`: the repeat index of every prompt (one int: the same for all).
        """
        index = [repeats] * len(prompts) if isinstance(repeats, int) else list(repeats)
        if len(index) != len(prompts):
            raise ValueError(f"{len(index)} repeat indices for {len(prompts)} prompts")
        return self._map(
            lambda pair: self.ask(pair[0], parse, nudge, attempts, temperature=temperature, system=system,
                                  repeat=pair[1], max_tokens=max_tokens),
            list(zip(prompts, index, strict=True)),
        )

    def ask_runs(
        self,
        prompts: Sequence[Messages],
        parse: Callable[[str], T],
        nudge: str,
        repeats: int = 1,
        attempts: int = 2,
        *,
        temperature: float | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
    ) -> list[list[Judged[T]]]:
        """Every prompt judged `repeats` times (repeat r cached under its own key): one list per repeat.

        All `len(prompts) * repeats` requests share the one pool of `max_concurrency` workers.
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        index = [r for r in range(repeats) for _ in prompts]
        judged = self.ask_many(list(prompts) * repeats, parse, nudge, attempts, temperature=temperature,
                               system=system, repeats=index, max_tokens=max_tokens)
        n = len(prompts)
        return [judged[r * n:(r + 1) * n] for r in range(repeats)]

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
            "bad_bodies": u.bad_bodies,
            "unparsed": u.unparsed,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "estimated_cost_usd": cost,
            "breaker_open": self._stopped is not None,
        }
