# mm-orch: `make demo` runs the whole platform locally, `make test` runs every check.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/mmorch
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: setup setup-python setup-frontend setup-system static demo test lint typecheck pytest bench bench-report clean

setup: setup-python setup-frontend

# The virtual environment is rebuilt only when the lock file changes.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	touch $@

setup-python: $(VENV)/.installed

# Dashboard assets come from npm (lock file committed) and are copied into static files.
setup-frontend: frontend/node_modules/.installed
frontend/node_modules/.installed: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python frontend/build_assets.py
	touch $@

# Static files are collected for whitenoise (the dashboard works offline, no CDN).
static: setup-python setup-frontend
	$(BIN)/python manage.py collectstatic --noinput -v0

# Debian packages the tests use: Chromium (browser tests), promtool (alert rules), wrk (benchmarks),
# redis-server and redis-cli (TLS, Sentinel and Cluster tests start their own servers).
SYSTEM_PACKAGES := chromium:chromium prometheus:promtool wrk:wrk redis-server:redis-server redis-tools:redis-cli
setup-system:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair#*:} >/dev/null || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

lint: setup-python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup-python
	$(BIN)/mypy

pytest: setup setup-system static
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup static
	$(BIN)/python scripts/demo.py

bench: setup
	$(BIN)/python -m bench $(BENCH)

# Every benchmark with short settings into one self-contained page, var/bench/report.html.
# `make bench-report QUICK=1` uses the shortest settings (under five minutes).
bench-report: setup
	$(BIN)/python -m bench.report $(if $(QUICK),--quick) $(BENCH_REPORT_ARGS)

clean:
	rm -rf var/demo var/celery staticfiles
