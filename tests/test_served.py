"""Answers through a served model: against a local OpenAI-compatible stand-in that answers from the request."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rlhfv_nb.config import ServedConfig, load_config
from rlhfv_nb.generate import AnswersFile, GenerationSettings, answers_header, header_key, open_backend, read_answers
from rlhfv_nb.served import (
    ServedBackend,
    ServedError,
    ServedUnavailable,
    public_url,
    request_params,
    served_answers,
)

MODEL = "served-llava"
SECRET = "sk-served-SECRET-never-written-42"
GREEDY = GenerationSettings(max_new_tokens=7, repetition_penalty=1.1)
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


def _image(colour: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


ITEMS = [{"id": f"q{i}", "question": f"What is in picture {i}?",
          "image": _image((40 * i, 90, 200 - 30 * i), "PNG" if i % 2 else "JPEG")} for i in range(5)]


def expected_answer(image: bytes, mime: str, prompt: str, beam: int = 0) -> str:
    """What the stand-in answers: a hash of the image bytes that arrived, their mime type and the prompt."""
    return f"beam{beam} {hashlib.sha256(image).hexdigest()[:12]} {mime} {prompt}"


class FakeServer:
    """/v1/models and /v1/chat/completions. Scripted HTTP statuses are used first; records every request."""

    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = [{"id": MODEL, "root": "/models/llava"}]
        self.script: deque[int] = deque()
        self.requests: list[dict[str, Any]] = []
        self.model_requests = 0
        self.auth: list[str] = []
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.url = ""

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            status = self.script.popleft() if self.script else 200
        if status != 200:
            return status, {"error": {"message": f"scripted {status}", "type": "test", "code": status}}
        image_part, text_part = body["messages"][0]["content"]
        header, data = image_part["image_url"]["url"].split(",", 1)
        mime = header.removeprefix("data:").removesuffix(";base64")
        beams = body.get("n", 1)
        answers = [expected_answer(base64.b64decode(data), mime, text_part["text"], b) for b in range(beams)]
        return 200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": b, "message": {"role": "assistant", "content": f" {a} "}, "finish_reason": "stop"}
                        for b, a in enumerate(answers)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 6 * beams, "total_tokens": 10 + 6 * beams},
        }


def _handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            with fake.lock:
                fake.model_requests += 1
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, {"error": {"message": "not found"}})
            models = [{"object": "model", "created": 0, "owned_by": "test", **m} for m in fake.models]
            self._send(200, {"object": "list", "data": models})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization", ""))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            time.sleep(fake.delay_s)
            try:
                self._send(*fake.chat(body))
            finally:
                with fake.lock:
                    fake.in_flight -= 1

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.delenv("RLHFV_NB_SERVER_KEY", raising=False)
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


def config(fake: FakeServer, **changes: Any) -> ServedConfig:
    return ServedConfig(**{"base_url": fake.url, "model": None, "max_concurrency": 2, "timeout": 10.0, **changes})


def _image_of(request: dict[str, Any]) -> tuple[str, bytes]:
    header, data = request["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return header[5:-7], base64.b64decode(data)


def test_image_prompt_and_greedy_settings_reach_the_server(server, tmp_path):
    answers = served_answers(config(server), ITEMS, GREEDY, tmp_path / "answers.jsonl", progress=False)
    assert len(server.requests) == len(ITEMS) and server.model_requests == 1  # the served model looked up once
    by_prompt = {r["messages"][0]["content"][1]["text"]: r for r in server.requests}
    for item, answer in zip(ITEMS, answers):
        request = by_prompt[item["question"]]
        mime, data = _image_of(request)
        assert data == item["image"] and mime == ("image/png" if data.startswith(b"\x89PNG") else "image/jpeg")
        assert request["messages"][0]["content"][1] == {"type": "text", "text": item["question"]}
        assert request["model"] == MODEL
        assert request["temperature"] == 0 and request["max_tokens"] == 7 and request["repetition_penalty"] == 1.1
        assert not {"n", "use_beam_search", "seed", "top_p"} & set(request)
        assert answer == {"id": item["id"], "question": item["question"], "new_tokens": 6,
                          "answer": expected_answer(item["image"], mime, item["question"])}
    assert {m for m, _ in map(_image_of, server.requests)} == {"image/png", "image/jpeg"}
    assert set(server.auth) == {"Bearer EMPTY"}  # no key set: "EMPTY", as vLLM accepts
    assert read_answers(tmp_path / "answers.jsonl") == {a["id"]: a for a in answers}


def test_sampling_and_beam_search_mapping(server, caplog):
    sampling = GenerationSettings(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, seed=11)
    served_answers(config(server), ITEMS, sampling, progress=False)
    seeds = {r["messages"][0]["content"][1]["text"]: r["seed"] for r in server.requests}
    assert seeds == {item["question"]: 11 + i for i, item in enumerate(ITEMS)}  # one seed per item, by place
    assert all(r["temperature"] == 0.7 and r["top_p"] == 0.9 and r["repetition_penalty"] == 1.0
               for r in server.requests)

    server.requests.clear()
    beams = GenerationSettings(max_new_tokens=9, num_beams=3, repetition_penalty=1.1)
    with caplog.at_level(logging.WARNING, logger="rlhfv_nb.served"):
        answers = served_answers(config(server, model=MODEL), ITEMS, beams, progress=False)
    assert all(r["use_beam_search"] is True and r["n"] == 3 and r["temperature"] == 0 and r["max_tokens"] == 9
               for r in server.requests)
    assert all(a["answer"].startswith("beam0 ") and a["new_tokens"] is None for a in answers)  # the best beam
    assert "does not apply repetition_penalty" in caplog.text
    with pytest.raises(ValueError, match="beam sampling"):
        request_params(GenerationSettings(num_beams=2, do_sample=True))


def test_requests_in_flight_never_exceed_max_concurrency(server):
    server.delay_s = 0.1
    items = [{**ITEMS[i % 5], "id": f"x{i}"} for i in range(12)]
    served_answers(config(server, max_concurrency=3), items, GREEDY, progress=False)
    assert len(server.requests) == 12 and server.max_in_flight == 3


def test_resume_asks_only_for_missing_answers(server, tmp_path):
    path = tmp_path / "answers.jsonl"
    served_answers(config(server), ITEMS[:2], GREEDY, path, progress=False)
    assert len(server.requests) == 2
    server.requests.clear()
    answers = served_answers(config(server), ITEMS, GREEDY, path, progress=False)
    assert sorted(r["messages"][0]["content"][1]["text"] for r in server.requests) == \
        sorted(i["question"] for i in ITEMS[2:])
    assert [a["id"] for a in answers] == [i["id"] for i in ITEMS] and len(path.read_text().splitlines()) == 5

    text = path.read_text()
    path.write_text(text[: len(text) - 10])  # killed while writing the last answer
    torn = json.loads(text.splitlines()[-1])["question"]
    server.requests.clear()
    assert served_answers(config(server), ITEMS, GREEDY, path, progress=False) == answers
    assert [r["messages"][0]["content"][1]["text"] for r in server.requests] == [torn]
    server.requests.clear()
    served_answers(config(server), ITEMS, GREEDY, path, progress=False)
    assert server.requests == []


def test_transient_errors_are_retried(server):
    server.script.extend([500, 503, 429])
    answers = served_answers(config(server, max_concurrency=1), ITEMS[:2], GREEDY, progress=False, **FAST)
    assert len(server.requests) == 2 + 3
    assert answers[0]["answer"] == expected_answer(ITEMS[0]["image"], "image/jpeg", ITEMS[0]["question"])


def test_a_request_error_is_not_retried_and_names_the_server(server, tmp_path):
    path = tmp_path / "answers.jsonl"
    served_answers(config(server), ITEMS[:1], GREEDY, path, progress=False)
    server.script.append(400)
    with pytest.raises(ServedError, match=rf"item 'q1': {server.url} answered HTTP 400"):
        served_answers(config(server, max_concurrency=1), ITEMS, GREEDY, path, progress=False, **FAST)
    asked = [r["messages"][0]["content"][1]["text"] for r in server.requests]
    assert asked.count(ITEMS[1]["question"]) == 1  # not retried
    assert len(asked) <= 3  # the run stopped (at most the request the worker had already taken)
    server.script.extend([500, 500])
    with pytest.raises(ServedUnavailable, match=rf"item 'q1': no answer from {server.url} after 2 attempts"):
        served_answers(config(server, max_concurrency=1), ITEMS, GREEDY, path, progress=False,
                       max_retries=1, **FAST)
    assert "q0" in read_answers(path)  # answers made before the failure are kept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_fails_clearly_and_quickly(monkeypatch):
    monkeypatch.delenv("RLHFV_NB_SERVER_KEY", raising=False)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ServedUnavailable, match=rf"listing models: no answer from {url} after 3 attempts"):
        ServedBackend(ServedConfig(base_url=url, model=None), max_retries=2, **FAST)
    with pytest.raises(ServedUnavailable, match=rf"no answer from {url}"):
        served_answers(ServedConfig(base_url=url, model=MODEL), ITEMS, GREEDY, progress=False, max_retries=2,
                       **FAST)
    assert time.monotonic() - start < 10


def test_a_server_that_never_answers_times_out(monkeypatch):
    monkeypatch.delenv("RLHFV_NB_SERVER_KEY", raising=False)
    with socket.socket() as sock:  # accepts connections (the kernel's backlog), never replies
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        start = time.monotonic()
        with pytest.raises(ServedUnavailable, match=rf"no answer from {url} after 2 attempts: APITimeoutError"):
            served_answers(ServedConfig(base_url=url, model=MODEL, timeout=0.3), ITEMS[:2], GREEDY,
                           progress=False, max_retries=1, **FAST)
        assert time.monotonic() - start < 10


def test_served_model_is_found_by_path_or_named(server):
    server.models = [{"id": "base", "root": "/runs/a/base"}, {"id": "ddpo", "root": "/runs/a/ddpo"}]
    assert ServedBackend(config(server), "/runs/a/ddpo").model == "ddpo"
    assert ServedBackend(config(server), "base").model == "base"
    with pytest.raises(ServedUnavailable, match=rf"{server.url} lists 'base', 'ddpo', none of them served from "
                                                "/runs/a/sft: serve it"):
        ServedBackend(config(server), "/runs/a/sft")
    # one served model is not taken for another model's answers
    server.models = [{"id": "base", "root": "/runs/a/base"}]
    with pytest.raises(ServedUnavailable, match="lists 'base', none of them served from /runs/a/ddpo"):
        ServedBackend(config(server), "/runs/a/ddpo")
    calls = server.model_requests
    assert ServedBackend(config(server, model="chosen")).model == "chosen" and server.model_requests == calls


def test_answers_file_records_the_server_and_never_the_key(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RLHFV_NB_SERVER_KEY", SECRET)
    path = tmp_path / f"answers-{header_key(answers_header(GREEDY))}.jsonl"
    server.script.append(503)
    with caplog.at_level(logging.DEBUG), ServedBackend(config(server), **FAST) as backend:
        assert SECRET not in repr(backend)
        assert backend.key(GREEDY) != header_key(answers_header(GREEDY))  # never a file of the settings alone
        served_path = tmp_path / f"answers-{backend.key(GREEDY)}.jsonl"
        answers = backend.answer(ITEMS, GREEDY, served_path, progress=False)
    assert set(server.auth) == {f"Bearer {SECRET}"}
    sidecar = json.loads(served_path.with_name(served_path.name + ".settings.json").read_text())
    assert sidecar["backend"] == {"kind": "openai", "base_url": server.url, "model": MODEL,
                                  "request": request_params(GREEDY)}
    assert {k: v for k, v in sidecar.items() if k != "backend"} == answers_header(GREEDY)

    # credentials in the URL are not recorded and do not make another backend; another host does
    with ServedBackend(config(server, base_url=server.url.replace("http://", "http://user:pw@"))) as same:
        assert same.key(GREEDY) == backend.key(GREEDY)
        server.requests.clear()
        assert same.answer(ITEMS, GREEDY, served_path, progress=False) == answers and server.requests == []
    elsewhere = ServedBackend(config(server, base_url=server.url.replace("127.0.0.1", "localhost"), model=MODEL))
    assert elsewhere.key(GREEDY) != backend.key(GREEDY)
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in written and "pw@" not in written and SECRET not in caplog.text

    # an in-process answers file and a served one refuse each other
    AnswersFile(path, answers_header(GREEDY)).close()
    with pytest.raises(ValueError, match="use another file"):
        served_answers(config(server, model=MODEL), ITEMS, GREEDY, path, progress=False)
    with pytest.raises(ValueError, match="use another file"):
        AnswersFile(served_path, answers_header(GREEDY))


def test_public_url_drops_credentials():
    assert public_url("https://me:secret@host.example:8443/v1/?api-key=abc#x") == "https://host.example:8443/v1"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_open_backend_picks_the_served_backend(server):
    cfg = load_config(evaluation={"backend": "openai", "server": {"base_url": server.url, "max_concurrency": 2}})
    with open_backend(cfg, "/models/llava") as backend:
        assert isinstance(backend, ServedBackend) and backend.model == MODEL
        answers = backend.answer(ITEMS[:2], GREEDY, progress=False)
    assert [a["id"] for a in answers] == ["q0", "q1"]


def test_an_undecodable_image_is_reported(server):
    with pytest.raises(Exception, match="undecodable image"):
        served_answers(config(server, model=MODEL), [{**ITEMS[0], "image": b"not an image"}], GREEDY,
                       progress=False)


def test_items_are_answered_in_order_whatever_finishes_first(server, tmp_path: Path):
    server.delay_s = 0.02
    answers = served_answers(config(server, max_concurrency=4), ITEMS, GREEDY, tmp_path / "a.jsonl",
                             progress=False)
    assert [a["id"] for a in answers] == [i["id"] for i in ITEMS]


def test_the_suite_evaluates_served_models_end_to_end(server, tmp_path):
    """`evaluation.backend: openai`: notebook 04's suite asks the server for every model, each found by its folder."""
    from rlhfv_nb import pipeline, world_eval
    from rlhfv_nb.config import load_config
    from rlhfv_nb.evaluate.suite import run_benchmarks
    from tests.tiny_run import CPU_TINY, SHAPE

    cfg = load_config(CPU_TINY, run_dir=str(tmp_path / "run"), model={"tiny": vars(SHAPE)},
                      data={"sft_images": 20, "feedback_images": 2, "eval_images": 3},
                      evaluation={"limit": 2, "backend": "openai", "max_new_tokens": 8,
                                  "server": {"base_url": server.url, "max_concurrency": 2, "timeout": 10.0}})
    pipeline.prepare_data(cfg)
    models = {"SFT": str(tmp_path / "sft"), "DDPO gamma=5": str(tmp_path / "ddpo")}  # served, never loaded here
    server.models = [{"id": "sft", "root": models["SFT"]}, {"id": "ddpo", "root": models["DDPO gamma=5"]}]
    result = run_benchmarks(cfg, models)

    items = len(world_eval.eval_items(cfg))
    assert len(server.requests) == 2 * items  # every item once per model, nothing generated in this process
    assert {r["model"] for r in server.requests} == {"sft", "ddpo"}
    assert all(r["temperature"] == 0 and r["max_tokens"] == 8 for r in server.requests)
    for name in models:
        by_bench = result.results[name]
        assert all(r.ok for r in by_bench.values()), by_bench
        answers = Path(by_bench["world_chair"].answers)
        assert answers.name != f"answers-{header_key(answers_header(result.generation))}.jsonl"  # settings alone
        assert len(answers.read_text().splitlines()) == items
    assert result.to_dict()["backend"] == {"kind": "openai", "base_url": server.url, "model": None}
    again = run_benchmarks(cfg, models)  # resumed from the answers files: no request
    assert len(server.requests) == 2 * items and again.table().equals(result.table())
