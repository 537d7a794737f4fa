"""Parsed values from chat models behind the project's OpenAI-compatible client (`JudgeClient`).

The client caches only replies the parser accepts, asks an unparseable reply again once with a nudge, retries
server errors, and counts tokens and cost (`JudgeClient.usage`). What still fails after that stops the feedback
stage with the inputs that failed; everything already answered stays cached, so a re-run pays only for those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rlhfv_nb.evaluate.judge import JudgeClient

T = TypeVar("T")
SHOWN_FAILURES = 3  # failed inputs named in a `FeedbackError` message


class FeedbackError(RuntimeError):
    """A feedback model gave no usable reply for some inputs; the message names them and the reasons."""


def user(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    """One user message (`content`: text, or OpenAI content parts such as an image and a text)."""
    return {"role": "user", "content": content}


def ask_values(
    client: JudgeClient,
    prompts: Sequence[list[dict[str, Any]]],
    inputs: Sequence[str],
    parse: Callable[[str], T],
    nudge: str,
    task: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
) -> list[T]:
    """`parse` of the client's reply to every prompt, in order; `inputs` name the prompts in errors.

    `parse` raises ValueError on a reply it cannot read (such replies are never cached). Raises `FeedbackError`
    naming `task`, the endpoint and up to `SHOWN_FAILURES` failed inputs with their reasons when any prompt got no
    parseable reply.
    """
    judged = client.ask_many(prompts, parse, nudge, system=system, max_tokens=max_tokens)
    failed = [(name, result.error) for name, result in zip(inputs, judged) if not result.ok]
    if failed:
        shown = "; ".join(f"{name}: {error}" for name, error in failed[:SHOWN_FAILURES])
        more = f" (and {len(failed) - SHOWN_FAILURES} more)" if len(failed) > SHOWN_FAILURES else ""
        raise FeedbackError(f"{task} with {client.model} at {client.where} failed for {len(failed)} of "
                            f"{len(prompts)} inputs: {shown}{more}. Replies received are cached: re-run to retry")
    return [result.value for result in judged]  # type: ignore[misc]
