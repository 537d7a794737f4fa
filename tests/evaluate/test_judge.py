"""JudgeClient through the real openai client against a local OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import API_KEY, JUDGE_MODEL, RESET, Drop, FakeOpenAI, Raw

from rlhfv_nb.evaluate.judge import JudgeClient, JudgeDown, JudgeUnavailable, cache_key, dead_judge_bound_s

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


# -- bad bodies, parse-before-cache, repeats, per-call options ---------------------------------------------


def test_bad_bodies_are_retried_then_the_healthy_reply_is_used(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    no_choices = json.dumps({"id": "x", "object": "chat.completion", "model": JUDGE_MODEL}).encode()
    openai_server.script.extend([Raw(b"<html>proxy error</html>", "text/html"), Raw(b"{not json"),
                                 Raw(no_choices), "", "   ", "7"])
    judge = client(openai_server, cache_dir=tmp_path, max_retries=5)
    judged = judge.ask(MESSAGES, int, nudge="Digits please.")
    assert judged.ok and judged.value == 7
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["bad_bodies"], usage["failures"]) == (6, 5, 5, 0)
    assert client(openai_server, cache_dir=tmp_path).ask(MESSAGES, int, nudge="").value == 7  # cached
    assert len(openai_server.requests) == 6


def test_a_bad_body_does_not_abort_the_batch(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend([Raw(b"not json at all", "text/plain")] * 2)
    openai_server.responder = lambda prompt: prompt.upper()
    judge = client(openai_server, max_retries=1, max_concurrency=1)
    replies = judge.complete_many([[{"role": "user", "content": f"item {i}"}] for i in range(3)])
    assert replies[0].text is None and "gave up after 2 attempts: bad reply body" in replies[0].error
    assert [r.text for r in replies[1:]] == ["ITEM 1", "ITEM 2"]
    assert judge.usage()["bad_bodies"] == 2


def test_garbage_replies_are_never_cached_and_a_rerun_recovers_every_item(
    openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    prompts = [[{"role": "user", "content": f"item {i}"}] for i in range(6)]
    openai_server.responder = lambda prompt: "I cannot decide."
    first = client(openai_server, cache_dir=tmp_path).ask_many(prompts, int, nudge="Digits please.")
    assert all(not j.ok and j.unparsed and "unparseable" in j.error for j in first)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing unparseable cached
    openai_server.responder = lambda prompt: prompt.removeprefix("item ")
    healthy = client(openai_server, cache_dir=tmp_path)
    second = healthy.ask_many(prompts, int, nudge="Digits please.")
    assert [j.value for j in second] == list(range(6))  # 0 items lost
    assert healthy.usage()["requests"] == 6
    again = client(openai_server, cache_dir=tmp_path)
    assert [j.value for j in again.ask_many(prompts, int, nudge="")] == list(range(6))
    assert (again.usage()["requests"], again.usage()["cache_hits"]) == (0, 6)


def test_complete_with_accept_caches_only_accepted_replies(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    openai_server.script.extend(["nope", "4"])
    judge = client(openai_server, cache_dir=tmp_path)
    assert judge.complete(MESSAGES, accept=int).text == "nope"  # returned, not cached
    assert judge.complete(MESSAGES, accept=int).text == "4"
    assert judge.complete(MESSAGES, accept=int).cached and len(openai_server.requests) == 2


def test_a_cached_reply_the_parser_rejects_is_asked_again(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    openai_server.script.extend(["no number (cached by an older version)", "5"])
    client(openai_server, cache_dir=tmp_path).complete(MESSAGES)  # raw completion: cached as is
    judge = client(openai_server, cache_dir=tmp_path)
    judged = judge.ask(MESSAGES, int, nudge="Digits please.")
    assert judged.value == 5 and judge.usage()["requests"] == 1 and judged.replies == ("5",)
    assert client(openai_server, cache_dir=tmp_path).ask(MESSAGES, int, nudge="").value == 5
    assert len(openai_server.requests) == 2


def test_repeats_have_their_own_cache_entries(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    old_key = hashlib.sha256(json.dumps({"model": "m", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 9},
                                        sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert cache_key("m", MESSAGES, 0.0, 9) == cache_key("m", MESSAGES, 0.0, 9, repeat=0) == old_key
    assert cache_key("m", MESSAGES, 0.0, 9, repeat=1) != old_key
    counter = iter(range(100))
    openai_server.responder = lambda prompt: str(next(counter))
    judge = client(openai_server, cache_dir=tmp_path)
    values = [j.value for j in judge.ask_many([MESSAGES] * 3, int, nudge="", repeats=[0, 1, 2])]
    assert sorted(values) == [0, 1, 2] and len(openai_server.requests) == 3
    rerun = client(openai_server, cache_dir=tmp_path)
    assert [j.value for j in rerun.ask_many([MESSAGES] * 3, int, nudge="", repeats=[0, 1, 2])] == values
    assert rerun.usage()["cache_hits"] == 3 and len(openai_server.requests) == 3


def test_per_call_temperature_and_system(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    judge = client(openai_server, cache_dir=tmp_path, temperature=0.0)
    judge.complete(MESSAGES, temperature=0.2, system="Be precise.")
    judge.ask(MESSAGES, str, nudge="", system="Be precise.")
    first, second = openai_server.requests
    assert first["temperature"] == 0.2 and second["temperature"] == 0.0
    assert first["messages"] == second["messages"] == [{"role": "system", "content": "Be precise."}, *MESSAGES]
    judge.complete(MESSAGES, temperature=0.2, system="Be precise.")
    assert len(openai_server.requests) == 2  # same request: from the cache


# -- circuit breaker ---------------------------------------------------------------------------------------

DEAD = {"max_concurrency": 2, "max_consecutive_failures": 4, "max_retries": 5, "backoff_s": 0.2}
SLACK_S = 1.5  # scheduling, thread start-up, connection set-up


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fails_within_bound(judge: JudgeClient, bound_s: float, n_prompts: int = 10) -> JudgeDown:
    prompts = [[{"role": "user", "content": f"item {i}"}] for i in range(n_prompts)]
    start = time.monotonic()
    with pytest.raises(JudgeDown) as caught:
        judge.ask_many(prompts, int, nudge="")
    elapsed = time.monotonic() - start
    assert elapsed < bound_s + SLACK_S, (elapsed, bound_s)
    return caught.value


def test_bound_for_the_defaults() -> None:
    defaults = {"max_consecutive_failures": 8, "max_concurrency": 4, "max_retries": 5, "backoff_s": 2.0,
                "max_backoff_s": 60.0}
    assert dead_judge_bound_s(**defaults) == dead_judge_bound_s(**defaults, n_prompts=96) == 2.0
    assert dead_judge_bound_s(**defaults, attempt_s=10.0) == 22.0  # connect timeout: packets dropped
    assert dead_judge_bound_s(**defaults, attempt_s=120.0, n_prompts=96) == 242.0  # read timeout
    assert dead_judge_bound_s(**defaults, n_prompts=1) == 2 + 4 + 8 + 16 + 32  # one prompt spends its retries
    assert dead_judge_bound_s(**{**defaults, "max_concurrency": 1}, n_prompts=2) == 62 + 2  # 6 + 2 failures
    with pytest.raises(ValueError, match="unbounded"):
        dead_judge_bound_s(**{**defaults, "max_consecutive_failures": 0})


def test_closed_port_opens_the_breaker_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    judge = JudgeClient(JUDGE_MODEL, base_url=url, timeout=5.0, **DEAD)
    bound = judge.dead_judge_bound_s(attempt_s=0.0, n_prompts=10)
    assert bound == pytest.approx(0.2)  # 2 workers x 2 failed attempts, one 0.2 s sleep each
    err = _fails_within_bound(judge, bound)
    assert url in str(err) and "4 connection failures in a row" in str(err) and "max_consecutive_failures" in str(err)
    usage = judge.usage()
    assert usage["breaker_open"] and 4 <= usage["requests"] <= 4 + DEAD["max_concurrency"] - 1
    # without the breaker every prompt spent its retries: 10 prompts / 2 workers x 6.2 s
    assert dead_judge_bound_s(0, 2, 5, 0.2, 60.0, n_prompts=10) == pytest.approx(31.0)
    with pytest.raises(JudgeDown, match="127.0.0.1"):  # the client stays stopped: no more attempts
        judge.complete(MESSAGES)
    assert judge.usage()["requests"] == usage["requests"]


def test_resetting_server_opens_the_breaker_within_the_bound(openai_server: FakeOpenAI) -> None:
    openai_server.responder = lambda prompt: RESET
    judge = client(openai_server, timeout=5.0, **DEAD)
    err = _fails_within_bound(judge, judge.dead_judge_bound_s(attempt_s=0.0, n_prompts=10))
    assert openai_server.url in str(err) and "APIConnectionError" in str(err)
    assert len(openai_server.requests) == judge.usage()["requests"] <= 4 + 1


def test_silent_server_opens_the_breaker_within_the_timeout_bound(openai_server: FakeOpenAI) -> None:
    openai_server.responder = lambda prompt: Drop(after_s=5.0)  # accepts, never answers
    judge = client(openai_server, timeout=0.3, **DEAD)
    bound = judge.dead_judge_bound_s(attempt_s=0.3, n_prompts=10)
    assert bound == pytest.approx(0.8)
    err = _fails_within_bound(judge, bound)
    assert "APITimeoutError" in str(err)


def test_one_success_resets_the_count(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend([RESET, RESET, RESET, "1", RESET, RESET, RESET, "2"])
    judge = client(openai_server, max_concurrency=1, max_consecutive_failures=4, max_retries=5)
    assert [r.text for r in judge.complete_many([MESSAGES, [{"role": "user", "content": "b"}]])] == ["1", "2"]
    assert not judge.usage()["breaker_open"]


def test_rate_limits_and_bad_bodies_do_not_open_the_breaker(openai_server: FakeOpenAI) -> None:
    openai_server.script.extend([429, Raw(b"oops", "text/plain"), 500, 429, Raw(b"{"), "3"])
    judge = client(openai_server, max_consecutive_failures=2, max_retries=5)
    assert judge.ask(MESSAGES, int, nudge="").value == 3


def test_gateway_errors_count_as_connection_failures(openai_server: FakeOpenAI) -> None:
    openai_server.responder = lambda prompt: 503
    judge = client(openai_server, max_consecutive_failures=3, max_retries=5)
    with pytest.raises(JudgeDown, match="3 connection failures"):
        judge.complete(MESSAGES)


def test_refused_credentials_stop_the_batch(openai_server: FakeOpenAI) -> None:
    openai_server.responder = lambda prompt: 401
    judge = client(openai_server, max_concurrency=2)
    with pytest.raises(JudgeUnavailable, match="refused the credentials"):
        judge.ask_many([[{"role": "user", "content": f"item {i}"}] for i in range(20)], int, nudge="")
    time.sleep(0.2)
    assert len(openai_server.requests) <= 2  # one per worker, the queue cancelled


# -- a kill re-pays at most max_concurrency prompts --------------------------------------------------------

KILLED_RUN = """
import sys
from rlhfv_nb.evaluate.judge import JudgeClient
judge = JudgeClient("judge-test", base_url=sys.argv[1], cache_dir=sys.argv[2], max_concurrency=3)
judge.ask_many([[{"role": "user", "content": str(i)}] for i in range(12)], int, nudge="")
"""


def test_a_kill_repays_at_most_max_concurrency_prompts(openai_server: FakeOpenAI, tmp_path: Path) -> None:
    openai_server.delay_s = 0.2
    openai_server.responder = lambda prompt: prompt
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, openai_server.url, str(tmp_path)],
                           env=env, cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 60
    while len(openai_server.requests) < 5 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    run.kill()
    run.wait()
    time.sleep(0.3)  # the server finishes the requests it was answering
    sent = len(openai_server.requests)
    cached = [p for p in tmp_path.rglob("*.json") if not p.name.startswith(".")]
    assert 5 <= sent < 12 and sent - len(cached) <= 3  # paid for but lost: at most max_concurrency
    rerun = client(openai_server, cache_dir=tmp_path)
    assert [j.value for j in rerun.ask_many([[{"role": "user", "content": str(i)}] for i in range(12)],
                                            int, nudge="")] == list(range(12))
    assert rerun.usage()["cache_hits"] == len(cached) and rerun.usage()["requests"] == 12 - len(cached)
