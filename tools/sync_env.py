"""Write environment.yml and Dockerfile from pyproject.toml, so the three cannot drift. Run by hand:

    python tools/sync_env.py          # rewrite both files
    python tools/sync_env.py --check  # exit 1 if either is stale (tests/test_env_files.py does the same)

Both install the package itself (`-e .[gpu]`), so its dependency list lives only in pyproject.toml; what
is written here is the torch pin (taken from pyproject), the Python version, and the flash-attn step,
which needs torch already installed to build and so cannot share pip's call with it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
CUDA_IMAGE = "nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04"  # devel: flash-attn compiles against nvcc
FLASH_BUILD_TOOLS = ["ninja", "packaging", "psutil", "wheel", "setuptools>=68"]
FLASH_STEP = 'pip install --no-build-isolation -c constraints.txt -e ".[flash]"'
HEADER = "Generated from pyproject.toml by tools/sync_env.py; edit pyproject.toml and re-run it."


def torch_pin(pyproject: dict) -> str:
    """The `torch==X` requirement of the package's dependencies."""
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    if len(pins) != 1:
        raise SystemExit(f"pyproject.toml: expected one torch==X dependency, found {pins}")
    return pins[0].replace(" ", "")


def environment_yml(pyproject: dict) -> str:
    tools = "".join(f"      - {tool}\n" for tool in FLASH_BUILD_TOOLS)
    return f"""# {HEADER}
# conda env create -f environment.yml && conda activate rlhfv-nb
# then flash-attn, which imports torch to build (the Dockerfile does both):
#   {FLASH_STEP}
name: rlhfv-nb
channels:
  - conda-forge
dependencies:
  - python={PYTHON}
  - pip
  - pip:
      - -c constraints.txt
      - {torch_pin(pyproject)}  # PyPI's Linux wheel is the CUDA build
      - -e .[gpu,dev]
      # build tools for flash-attn's --no-build-isolation install
{tools}"""


def dockerfile(pyproject: dict) -> str:
    return f"""# {HEADER}
# docker build -t rlhfv-nb . && docker run --gpus all -it -v $PWD/runs:/opt/rlhfv-nb/runs rlhfv-nb
FROM {CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive MAMBA_ROOT_PREFIX=/opt/conda PATH=/opt/conda/envs/rlhfv-nb/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends curl bzip2 ca-certificates git \\
    && rm -rf /var/lib/apt/lists/* \\
    && curl -Ls https://micro.mamba.pm/api/micromamba/linux-64/latest | tar -xj -C /usr/local bin/micromamba
WORKDIR /opt/rlhfv-nb
COPY . .
# The same environment as environment.yml ({torch_pin(pyproject)}, the package with its gpu extra).
RUN micromamba create -y -f environment.yml && micromamba clean -a -y
ENV MAX_JOBS=8
RUN {FLASH_STEP}
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
