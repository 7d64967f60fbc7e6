# syntax=docker/dockerfile:1.7
# An inference node on CPU (PyTorch CPU build): `python -m inference`.
#
#   docker build -f platform/docker/inference-cpu.Dockerfile -t mmorch/inference-cpu .
#
# The build context is the repository root; inference-cpu.Dockerfile.dockerignore beside this
# file keeps everything but the lock and inference/ out of it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements.lock platform/docker/inference.requirements.in /tmp/
# torch comes first, at the lock's version, from the CPU-only wheel index (no CUDA libraries);
# the rest is pinned by the lock, which that torch already satisfies.
RUN torch_version="$(sed -n 's/^torch==//p' /tmp/requirements.lock)" \
    && test -n "$torch_version" \
    && pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch==${torch_version}" \
    && pip install -c /tmp/requirements.lock -r /tmp/inference.requirements.in \
    && pip check

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/var/lib/mmorch \
    INFERENCE_HOST=0.0.0.0 \
    INFERENCE_JOURNAL_PATH=/var/lib/mmorch/journal/journal.sqlite3 \
    MMORCH_LOG_FORMAT=json
RUN groupadd --system --gid 10001 mmorch \
    && useradd --system --uid 10001 --gid mmorch --home-dir /var/lib/mmorch --shell /usr/sbin/nologin mmorch \
    && install -d -o mmorch -g mmorch -m 0750 /var/lib/mmorch /var/lib/mmorch/journal /var/lib/mmorch/models
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY wire/ wire/
COPY inference/ inference/
RUN python -m compileall -q wire inference
USER 10001:10001
# The usage journal must outlive the container: billing reads it after a restart.
VOLUME ["/var/lib/mmorch/journal"]
EXPOSE 8100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/health', timeout=4)"]
CMD ["python", "-m", "inference"]
