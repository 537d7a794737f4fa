"""Fixtures of the RLAIF-V feedback tests: the evaluation tests' local OpenAI-compatible server (imported, not
copied) and one tiny random LLaVA saved like a hub checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.modeling import build_tiny_model
from tests.evaluate import conftest as evaluate_servers
from tests.evaluate.conftest import JUDGE_MODEL, FakeOpenAI
from tests.tiny_run import SHAPE

openai_server = evaluate_servers.openai_server  # the fake OpenAI endpoint fixture, for the tests of this folder

YES_NO_CORPUS = [
    f"USER: <image>\nIs there {thing} in the {place}? ASSISTANT: {answer}</s>"
    for thing in ("a red ball", "a blue star", "a green tent") for place in ("top left", "bottom right")
    for answer in ("Yes", "No", "yes", "no")
]


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny LLaVA folder (`rlhfv_nb.modeling.build_tiny_model`, the tests' small shape), its
    vocabulary large enough that " Yes", " yes", " No" and " no" are one token each."""
    shape = replace(SHAPE, vocab_size=400)
    return build_tiny_model(YES_NO_CORPUS * 4, shape, tmp_path_factory.mktemp("labeler") / "model", seed=0)


@pytest.fixture
def judge_client(openai_server: FakeOpenAI, tmp_path: Path) -> Callable[..., JudgeClient]:
    """Makes clients of the local server sharing one cache folder: a second one is the client after a restart."""

    def make(**kwargs: Any) -> JudgeClient:
        settings = {"max_retries": 1, "backoff_s": 0.01, "timeout": 10.0, **kwargs}
        return JudgeClient(JUDGE_MODEL, base_url=openai_server.url, cache_dir=tmp_path / "judge-cache", **settings)

    return make
