"""JudgeClient through the real openai client against a local OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import API_KEY, JUDGE_MODEL, FakeOpenAI

from rlhfv_nb.evaluate.judge import JudgeClient, JudgeUnavailable

MESSAGES = [{"role": "user", "content": "Rate this."}]


def client(server: FakeOpenAI, cache_dir: Path | None = None, **kw) -> JudgeClient:
    kw = {"max_retries": 3, "backoff_s": 0.01, "timeout": 10.0, **kw}
    return JudgeClient(JUDGE_MODEL, base_url=server.url, cache_dir=cache_dir, **kw)


def test_unavailable_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLHFV_TEST_NO_KEY", raising=False)
    assert not JudgeClient.available("RLHFV_TEST_NO_KEY")
    with pytest.raises(JudgeUnavailable, match="RLHFV_TEST_NO_KEY"):
        JudgeClient("gpt-4o", api_key_env="RLHFV_TEST_NO_KEY")


def test_completion_uses_key_and_reports_usage(openai_server: FakeOpenAI) -> None:
    openai_server.script.append("hello")
    judge = client(openai_server, prices={JUDGE_MODEL: (1.0, 2.0)})
    reply = judge.complete(MESSAGES)
    assert (reply.text, reply.model, reply.cached, reply.error) == ("hello", JUDGE_MODEL, False, None)
    assert openai_server.auth_headers == [f"Bearer {API_KEY}"]
    assert openai_server.requests[0]["messages"] == MESSAGES
    usage = judge.usage()
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 10 and usage["completion_tokens"] == 5
    assert usage["estimated_cost_usd"] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    assert usage["judge_model"] == JUDGE_MODEL
    assert API_KEY not in repr(judge)


def test_rate_limit_then_success(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend([429, 500, "fine"])
    judge = client(openai_server)
    assert judge.complete(MESSAGES).text == "fine"
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["failures"]) == (3, 2, 0)


def test_gives_up_after_max_retries(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend([429] * 5)
    judge = client(openai_server, max_retries=2)
    reply = judge.complete(MESSAGES)
    assert reply.text is None and "gave up after 3 attempts" in reply.error
    assert judge.usage()["failures"] == 1 and len(openai_server.requests) == 3


def test_bad_credentials_raise_unavailable(openai_server: FakeOpenAI) -> None:
    openai_server.script.append(401)
    with pytest.raises(JudgeUnavailable, match="refused"):
        client(openai_server).complete(MESSAGES)


def test_malformed_reply_is_retried_with_nudge_then_reported(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend(["no number here", "still none"])
    judged = client(openai_server).ask(MESSAGES, int, nudge="Reply with a number.")
    assert not judged.ok and judged.value is None and "unparseable" in judged.error
    assert judged.replies == ("no number here", "still none")
    second = openai_server.requests[1]["messages"]
    assert second[-2:] == [{"role": "assistant", "content": "no number here"},
                           {"role": "user", "content": "Reply with a number."}]


def test_malformed_then_valid(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend(["seven", "7"])
    judged = client(openai_server).ask(MESSAGES, int, nudge="Digits please.")
    assert judged.ok and judged.value == 7 and judged.model == JUDGE_MODEL


def test_cache_survives_restart_without_key_on_disk(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    openai_server.script.append("cached answer")
    first = client(openai_server, cache_dir=tmp_path)
    assert first.complete(MESSAGES).text == "cached answer"
    restarted = client(openai_server, cache_dir=tmp_path)
    reply = restarted.complete(MESSAGES)
    assert reply.cached and reply.text == "cached answer" and reply.model == JUDGE_MODEL
    assert len(openai_server.requests) == 1
    usage = restarted.usage()
    assert (usage["requests"], usage["cache_hits"]) == (0, 1)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and not any(p.name.endswith(".tmp") for p in files)
    assert all(API_KEY not in p.read_text() for p in files)


def test_cache_key_depends_on_request(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    judge = client(openai_server, cache_dir=tmp_path)
    judge.complete(MESSAGES)
    judge.complete(MESSAGES, max_tokens=7)
    judge.complete([{"role": "user", "content": "Something else."}])
    assert len(openai_server.requests) == 3


def test_bounded_concurrency_keeps_order(openai_server: FakeOpenAI) -> None:
    openai_server.delay_s = 0.05
    openai_server.responder = lambda prompt: prompt.upper()
    judge = client(openai_server, max_concurrency=2)
    prompts = [[{"role": "user", "content": f"item {i}"}] for i in range(8)]
    replies = judge.complete_many(prompts)
    assert [r.text for r in replies] == [f"ITEM {i}" for i in range(8)]
    assert openai_server.max_in_flight == 2
