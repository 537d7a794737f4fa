"""environment.yml and Dockerfile agree with pyproject.toml (Docker cannot build here: there is no engine).

The CUDA checks: the base image's CUDA major must be the one the pinned torch wheel requires (flash-attn compiles
with the image's nvcc against that torch). tools/sync_env.py records the wheel's `cuda-toolkit==X` per torch pin;
one test checks the Dockerfile against the record offline, another re-derives the record from the registry with
pip's resolver (a dry run that reads wheel metadata, no multi-GB download).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _sync_env():
    spec = importlib.util.spec_from_file_location("sync_env", ROOT / "tools" / "sync_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_pins(text: str) -> set[str]:
    return set(re.findall(r"torch==[\w.+]+", text))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _copy_sources(args: str) -> list[str]:
    parts = json.loads(args) if args.startswith("[") else [p for p in args.split() if not p.startswith("--")]
    return parts[:-1]


def _covers(source: str, path: str) -> bool:
    source = source.removeprefix("./").rstrip("/")
    return source in ("", ".") or path == source or path.startswith(source + "/") or fnmatch.fnmatch(path, source)


def _from_image() -> str:
    (image,) = [args.split()[0] for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    return image


def test_files_are_what_sync_env_writes():
    sync = _sync_env()
    assert (ROOT / "environment.yml").read_text() == sync.environment_yml(PYPROJECT), "run tools/sync_env.py"
    assert (ROOT / "Dockerfile").read_text() == sync.dockerfile(PYPROJECT), "run tools/sync_env.py"


def test_torch_pin_identical_everywhere():
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch==")]
    for name in ("constraints.txt", "environment.yml", "Dockerfile"):
        assert _torch_pins((ROOT / name).read_text()) == {pin}, name


def test_base_image_cuda_major_is_the_one_the_torch_wheel_requires():
    sync = _sync_env()
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?devel-ubuntu[\d.]+", _from_image())
    assert match, f"{_from_image()}: expected an nvidia/cuda X.Y.Z devel image (nvcc builds flash-attn)"
    toolkit = Version(sync.torch_cuda_toolkit(PYPROJECT))  # what the pinned torch wheel requires (recorded)
    assert int(match[1]) == toolkit.major == sync.BASE_IMAGE.cuda_major, (
        f"the Dockerfile's CUDA {match[1]} differs from {sync.torch_pin(PYPROJECT)}'s cuda-toolkit=={toolkit}"
    )


def test_the_generator_refuses_a_base_image_of_another_cuda_major(monkeypatch):
    sync = _sync_env()
    monkeypatch.setattr(sync, "BASE_IMAGE", sync.CudaImage(cuda="12.8.1", flavour="cudnn-devel-ubuntu22.04"))
    with pytest.raises(SystemExit, match="requires CUDA 13"):
        sync.dockerfile(PYPROJECT)
    monkeypatch.setattr(sync, "TORCH_WHEEL_CUDA_TOOLKIT", {})
    with pytest.raises(SystemExit, match="no CUDA recorded for torch=="):
        sync.dockerfile(PYPROJECT)


def _pip_dry_run_report(requirement: str, python: str, tmp_path: Path) -> dict:
    """What pip would install for `requirement` on Linux x86_64 (manylinux 2.17-2.28) with `python`, from the
    registry only: the local configuration (find-links with CPU wheels, extra indexes) is left out, and fast-deps
    reads each wheel's metadata with range requests instead of downloading it (torch's wheel is 527 MB)."""
    report = tmp_path / "report.json"
    platforms = [f"--platform=manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)]
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
        "--use-feature=fast-deps", "--only-binary=:all:", "--implementation=cp", f"--python-version={python}",
        *platforms, "--platform=manylinux2014_x86_64", "--no-cache-dir", "--retries=1", "--timeout=20", requirement,
    ]  # fmt: skip
    local = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_TARGET", "PIP_USER"}
    env = {k: v for k, v in os.environ.items() if k not in local} | {"PIP_CONFIG_FILE": os.devnull}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("pip's dry run took over 90 s (is it downloading whole wheels?)")
    offline = r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|Max retries exceeded"
    if proc.returncode and (why := re.search(rf".*({offline}).*", proc.stderr)):
        pytest.skip(f"package registry unreachable: {why[0].strip()[:300]}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())


def test_recorded_cuda_is_what_the_registry_resolves(tmp_path):
    sync = _sync_env()
    pin = sync.torch_pin(PYPROJECT)
    install = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]
        for item in _pip_dry_run_report(pin, sync.PYTHON, tmp_path)["install"]
    }
    torch_requires = [Requirement(r) for r in install["torch"]["requires_dist"]]
    (toolkit_req,) = [r for r in torch_requires if canonicalize_name(r.name) == "cuda-toolkit"]
    (spec,) = toolkit_req.specifier
    found = Version(spec.version)
    assert spec.operator == "==" and Version(install["cuda-toolkit"]["version"]) == found
    recorded = Version(sync.TORCH_WHEEL_CUDA_TOOLKIT.get(pin, "0"))
    assert found == recorded, f"set TORCH_WHEEL_CUDA_TOOLKIT[{pin!r}] = {str(found)!r} in tools/sync_env.py"
    # every CUDA library wheel it pulls is of that major: nvidia-*-cuNN by name, the toolkit's parts by version
    suffixed = {name: int(m[1]) for name in install if (m := re.fullmatch(r"nvidia-[\w-]+-cu(\d+)", name))}
    assert suffixed and set(suffixed.values()) == {found.major}, suffixed
    assert Version(install["nvidia-cuda-runtime"]["version"]).major == found.major


def _run_step(steps: list[tuple[str, str]], pattern: str) -> int:
    found = [i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and re.search(pattern, args)]
    assert len(found) == 1, f"expected one RUN matching {pattern!r}, found {len(found)}"
    return found[0]


def test_code_is_copied_after_the_environment_and_flash_attn():
    steps = _dockerfile_instructions()
    env_step = _run_step(steps, r"micromamba create")
    flash_step = _run_step(steps, r"flash-attn|\[flash\]")
    copies = [(i, _copy_sources(args)) for i, (kw, args) in enumerate(steps) if kw in ("COPY", "ADD")]
    whole_tree = [i for i, sources in copies if any(_covers(s, "any/file") for s in sources)]
    assert whole_tree and all(i > max(env_step, flash_step) for i in whole_tree), steps
    assert min(whole_tree) < _run_step(steps, r"-e \.(\s|$)")  # the package goes in after its code
    # editing code, tests, docs or pyproject's tool settings invalidates nothing up to the flash-attn build
    # (a dependency change in pyproject.toml reaches the environment layer through the regenerated environment.yml)
    for path in ("rlhfv_nb/cli.py", "tests/test_env_files.py", "docs/real-scale.md", "pyproject.toml", "README.md"):
        first = min(i for i, sources in copies if any(_covers(s, path) for s in sources))
        assert first > flash_step, f"editing {path} would rebuild the environment or flash-attn"
    # while the files the environment is made of are there before it
    for path in ("environment.yml", "constraints.txt"):
        assert min(i for i, sources in copies if any(_covers(s, path) for s in sources)) < env_step, path


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs"):
        assert entry in ignored, entry
    assert not any(_covers(entry, "rlhfv_nb/cli.py") for entry in ignored if not entry.startswith("!"))


def test_environment_has_the_dependencies_but_not_the_package():
    sync = _sync_env()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [line for line in pip if line.startswith("-e") or line.startswith(".")], "needs the source tree"
    project = PYPROJECT["project"]
    wanted = set(project["dependencies"])
    for extra in sync.ENV_EXTRAS:
        wanted |= set(project["optional-dependencies"][extra])
    assert wanted <= set(pip), wanted - set(pip)
    assert set(pip) - wanted == {"-c constraints.txt", *sync.build_tools(PYPROJECT)}
    assert "flash" not in sync.ENV_EXTRAS
    assert not any("flash-attn" in d for d in project["optional-dependencies"]["gpu"])


def test_environment_yml_is_valid_and_python_allowed():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    version = tuple(int(x) for x in python.split("=")[1].split("."))
    assert version >= tuple(int(x) for x in minimum.split("."))


def test_flash_attn_step_is_the_flash_extra_at_a_cuda_13_release():
    text = (ROOT / "Dockerfile").read_text()
    steps = _dockerfile_instructions()
    flash = steps[_run_step(steps, r"flash-attn|\[flash\]")][1]
    assert "--no-build-isolation" in flash and "-c constraints.txt" in flash and "environment.yml" in text
    (req,) = [Requirement(r) for r in re.findall(r'"(flash-attn[^"]*)"', flash)]
    (extra,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["flash"]]
    assert not req.specifier.contains("2.8.3")  # its setup.py predates CUDA 13 (2.8.3.post1 has it)
    admitted = [v for v in ("2.8.3.post1", "2.8.3.post2", "2.9.0", "3.0.0") if req.specifier.contains(v)]
    assert admitted and all(extra.specifier.contains(v) for v in admitted), (req, extra)
