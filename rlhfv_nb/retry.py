"""The wait before retrying an HTTP request: the server's Retry-After when it gives one, else exponential backoff."""

from __future__ import annotations


def retry_delay(err: Exception, attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds to wait before attempt `attempt + 1` after `err` (an `openai` error, with or without a response)."""
    response = getattr(err, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    try:
        wait = float(retry_after) if retry_after is not None else backoff_s * 2**attempt
    except ValueError:
        wait = backoff_s * 2**attempt
    return min(wait, max_backoff_s)
