# syntax=docker/dockerfile:1.7
# The control plane: web (uvicorn), Celery worker, Celery beat and the migration job share this image.
#
#   docker build -f platform/docker/control-plane.Dockerfile -t mmorch/control-plane .
#
# The build context is the repository root; control-plane.Dockerfile.dockerignore beside this file
# keeps the virtual environment, node_modules and local state out of it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# --- dashboard assets from npm (lock file committed) -----------------------------------------
FROM ${NODE_IMAGE} AS assets
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# --- Python dependencies, pinned by the lock ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements.lock platform/docker/control-plane.requirements.in /tmp/
RUN pip install -c /tmp/requirements.lock -r /tmp/control-plane.requirements.in && pip check

# --- application code and collected static files ------------------------------------------------
FROM deps AS app
WORKDIR /app
COPY manage.py ./
COPY config/ config/
COPY core/ core/
COPY wire/ wire/
COPY tenants/ tenants/
COPY gateway/ gateway/
COPY billing/ billing/
COPY frontend/ frontend/
COPY wire/ wire/
COPY inference/ inference/
COPY --from=assets /src/frontend/node_modules/ frontend/node_modules/
# Static files are collected at build time and served by WhiteNoise; node_modules is not shipped.
RUN python frontend/build_assets.py \
    && python manage.py collectstatic --noinput \
    && rm -rf frontend/node_modules \
    && python -m compileall -q config tenants gateway billing frontend wire inference

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=config.settings \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MMORCH_LOG_FORMAT=json
RUN groupadd --system --gid 10001 mmorch \
    && useradd --system --uid 10001 --gid mmorch --home-dir /app --no-create-home --shell /usr/sbin/nologin mmorch
COPY --from=deps /opt/venv /opt/venv
COPY --from=app --chown=root:root /app /app
# The code is read-only to the service user; only the demo seed writes here (its credentials file).
RUN install -d -o mmorch -g mmorch -m 0700 /app/var /app/var/demo
COPY --chmod=0755 platform/docker/control-plane-entrypoint.sh /usr/local/bin/mmorch-control-plane
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Liveness of the web process; the worker and beat override it (see docker-compose.yaml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["mmorch-control-plane"]
CMD ["web"]
