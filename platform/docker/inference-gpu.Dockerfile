# syntax=docker/dockerfile:1.7
# An inference node on NVIDIA GPUs: CUDA runtime base with the vLLM engine (the `vllm` extra).
#
#   docker build -f platform/docker/inference-gpu.Dockerfile -t mmorch/inference-gpu .
#
# vLLM brings the CUDA build of torch it was compiled against, so the lock's CPU torch pin is
# left out of the constraints here; everything else keeps the lock's versions.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# Keep in step with [project.optional-dependencies] vllm in pyproject.toml (a test checks it).
ARG VLLM_REQUIREMENT="vllm>=0.8"

FROM ${CUDA_IMAGE} AS deps
ARG VLLM_REQUIREMENT
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY requirements.lock platform/docker/inference.requirements.in /tmp/
RUN grep -v '^torch==' /tmp/requirements.lock > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt -r /tmp/inference.requirements.in "${VLLM_REQUIREMENT}" \
    && pip check

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/var/lib/mmorch \
    INFERENCE_HOST=0.0.0.0 \
    INFERENCE_JOURNAL_PATH=/var/lib/mmorch/journal/journal.sqlite3 \
    MMORCH_LOG_FORMAT=json
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mmorch \
    && useradd --system --uid 10001 --gid mmorch --home-dir /var/lib/mmorch --shell /usr/sbin/nologin mmorch \
    && install -d -o mmorch -g mmorch -m 0750 /var/lib/mmorch /var/lib/mmorch/journal /var/lib/mmorch/models
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY wire/ wire/
COPY inference/ inference/
RUN python -m compileall -q wire inference
USER 10001:10001
VOLUME ["/var/lib/mmorch/journal"]
EXPOSE 8100
# Loading a large model takes minutes; /health answers as soon as the server is up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/health', timeout=4)"]
CMD ["python", "-m", "inference"]
