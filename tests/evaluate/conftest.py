"""Local servers for the evaluation tests: an OpenAI-compatible chat endpoint and a static file server."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhfv_nb.evaluate.benchmarks import MMHAL_REPO_ID

FIXTURES = Path(__file__).parent / "fixtures"
API_KEY = "sk-test-SECRET-KEY-never-stored-1234"
JUDGE_MODEL = "judge-test"


@dataclass(frozen=True)
class Raw:
    """A scripted HTTP 200 reply with this body as is (not a chat completion)."""

    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Drop:
    """A scripted connection drop: read the request, wait `after_s`, close the socket with a reset, no reply."""

    after_s: float = 0.0


RESET = Drop()
Step = int | str | Raw | Drop


class FakeOpenAI:
    """Serves /v1/chat/completions. Scripted steps are used first, then `responder(last user message)`.

    A step (scripted, or returned by the responder) is an HTTP status (int: an error reply), a content
    string (a chat completion), `Raw` (a 200 with that body) or `Drop` (no reply, connection reset).
    Records every request."""

    def __init__(self) -> None:
        self.script: deque[Step] = deque()
        self.responder: Callable[[str], Step] = lambda prompt: "ok"
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set at teardown: wakes `Drop` waits
        self.url = ""

    def step(self, body: dict) -> Step:
        with self.lock:
            step = self.script.popleft() if self.script else None
        return step if step is not None else self.responder(body["messages"][-1]["content"])


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": JUDGE_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append(body)
                fake.auth_headers.append(self.headers.get("Authorization", ""))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                time.sleep(fake.delay_s)
                step = fake.step(body)
            finally:
                with fake.lock:
                    fake.in_flight -= 1
            if isinstance(step, Drop):
                fake.closing.wait(step.after_s)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            status, content_type = (200, step.content_type) if isinstance(step, Raw) else (step, "application/json")
            if isinstance(step, Raw):
                data = step.body
            elif isinstance(step, int):
                data = json.dumps({"error": {"message": f"scripted {step}", "type": "test", "code": None}}).encode()
            else:
                status, data = 200, json.dumps(completion(step)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

    return Handler


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A fake OpenAI endpoint on 127.0.0.1 and OPENAI_API_KEY set for it."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    fake = FakeOpenAI()
    for url in _serve(_handler(fake)):
        fake.url = url + "/v1"
        yield fake
        fake.closing.set()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of a static HTTP server on 127.0.0.1 serving `folder`."""
    root = tmp_path / "www"
    root.mkdir()
    for url in _serve(functools.partial(_QuietFiles, directory=str(root))):
        yield url, root


@pytest.fixture
def coco_dir() -> Path:
    return FIXTURES / "coco"


@pytest.fixture
def hub_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A minimal Hugging Face hub `resolve` endpoint for the MMHal-Bench dataset repo."""
    files: dict[str, bytes] = {}
    prefix = f"/datasets/{MMHAL_REPO_ID}/resolve/main/"

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, with_body: bool) -> None:
            path = self.path.split("?")[0]
            data = files.get(path[len(prefix):]) if path.startswith(prefix) else None
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            if data is not None:
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", "a" * 40)
            self.end_headers()
            if with_body and data:
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(False)

        def do_GET(self) -> None:  # noqa: N802
            self._reply(True)

    for url in _serve(Hub):
        yield url, files
