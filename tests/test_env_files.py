"""environment.yml and Dockerfile agree with pyproject.toml (Docker cannot build here: there is no engine)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _sync_env():
    spec = importlib.util.spec_from_file_location("sync_env", ROOT / "tools" / "sync_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_pins(text: str) -> set[str]:
    return set(re.findall(r"torch==[\w.+]+", text))


def test_files_are_what_sync_env_writes():
    sync = _sync_env()
    assert (ROOT / "environment.yml").read_text() == sync.environment_yml(PYPROJECT), "run tools/sync_env.py"
    assert (ROOT / "Dockerfile").read_text() == sync.dockerfile(PYPROJECT), "run tools/sync_env.py"


def test_torch_pin_identical_everywhere():
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch==")]
    for name in ("constraints.txt", "environment.yml", "Dockerfile"):
        assert _torch_pins((ROOT / name).read_text()) == {pin}, name


def test_every_referenced_extra_exists():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    referenced = set()
    for name in ("environment.yml", "Dockerfile"):
        for group in re.findall(r"\.\[([\w,]+)\]", (ROOT / name).read_text()):
            referenced.update(group.split(","))
    assert referenced and referenced <= extras, referenced - extras
    flash = " ".join(PYPROJECT["project"]["optional-dependencies"]["flash"])
    assert "flash-attn" in flash and "flash-attn" not in " ".join(PYPROJECT["project"]["optional-dependencies"]["gpu"])


def test_environment_yml_is_valid_and_python_allowed():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    version = tuple(int(x) for x in python.split("=")[1].split("."))
    assert version >= tuple(int(x) for x in minimum.split("."))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("-e .[") for line in pip)


def test_dockerfile_uses_a_cuda_devel_image_and_the_environment():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-cudnn-devel-ubuntu", text, re.M)  # nvcc for flash-attn
    assert "environment.yml" in text and "--no-build-isolation" in text
