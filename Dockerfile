# Generated from pyproject.toml by tools/sync_env.py; edit pyproject.toml and re-run it.
# docker build -t rlhfv-nb . && docker run --gpus all -it -v $PWD/runs:/opt/rlhfv-nb/runs rlhfv-nb
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive MAMBA_ROOT_PREFIX=/opt/conda PATH=/opt/conda/envs/rlhfv-nb/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends curl bzip2 ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && curl -Ls https://micro.mamba.pm/api/micromamba/linux-64/latest | tar -xj -C /usr/local bin/micromamba
WORKDIR /opt/rlhfv-nb
COPY . .
# The same environment as environment.yml (torch==2.13.0, the package with its gpu extra).
RUN micromamba create -y -f environment.yml && micromamba clean -a -y
ENV MAX_JOBS=8
RUN pip install --no-build-isolation -c constraints.txt -e ".[flash]"
CMD ["bash"]
