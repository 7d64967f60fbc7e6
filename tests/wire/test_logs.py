"""The log format switch: JSON lines, console lines, and a malformed value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.config import load_config
from tests.support.inference_node import demo_model_path
from wire.logs import log_format_from

REPO_ROOT = Path(__file__).resolve().parents[2]

# Logs twice through a configured process: a request line and a uvicorn access line.
PROGRAM = """
import logging
from wire.logs import log_bind, log_request_start, logging_setup
logging_setup(service="svc", level="INFO")
logging_setup(service="svc", level="INFO")  # a second set-up (Django and Celery both may) warns no more
log_request_start("req-1")
log_bind(tenant=4, key_id=7, model="m", node="n")
logging.getLogger("app").info("hello %s", "world")
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "10.0.0.1:5", "POST", "/v1/x", "1.1", 200)
"""


def run(fmt: str | None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    if fmt is not None:
        env["MMORCH_LOG_FORMAT"] = fmt
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_json_lines_carry_the_request_fields() -> None:
    hello, access = (json.loads(line) for line in run("json"))
    assert hello["event"] == "hello world" and hello["level"] == "info" and hello["logger"] == "app"
    assert {k: hello[k] for k in ("request_id", "tenant", "key_id", "model", "node", "service")} == {
        "request_id": "req-1", "tenant": 4, "key_id": 7, "model": "m", "node": "n", "service": "svc",
    }  # fmt: skip
    assert access["logger"] == "uvicorn.access" and access["request_id"] == "req-1"
    assert (access["method"], access["path"], access["status"], access["client"]) == (
        "POST",
        "/v1/x",
        200,
        "10.0.0.1:5",
    )


@pytest.mark.parametrize("fmt", [None, "console", " CONSOLE "])
def test_console_is_the_default_and_reads_as_key_value(fmt: str | None) -> None:
    hello, access = run(fmt)
    assert "hello world" in hello and "request_id=req-1" in hello and "tenant=4" in hello and "[app]" in hello
    assert not hello.startswith("{")
    assert "status=200" in access


def test_a_malformed_format_warns_once_and_logs_as_console() -> None:
    lines = run("yaml")
    assert len(lines) == 3, lines
    warning, hello, _ = lines
    assert "[warning" in warning and "MMORCH_LOG_FORMAT='yaml' is not one of json, console" in warning
    assert "hello world" in hello and "request_id=req-1" in hello


def test_log_format_from() -> None:
    assert log_format_from({}) == ("console", "")
    assert log_format_from({"MMORCH_LOG_FORMAT": "json"}) == ("json", "")
    fmt, warning = log_format_from({"MMORCH_LOG_FORMAT": "xml"})
    assert fmt == "console" and "xml" in warning


def test_the_node_takes_the_same_switch_and_a_bad_value_does_not_stop_it() -> None:
    base = {"INFERENCE_SHARED_SECRET": "s", "INFERENCE_MODEL_PATH": str(demo_model_path())}
    assert load_config({**base, "MMORCH_LOG_FORMAT": "json"}).log_format == "json"
    assert load_config({**base, "MMORCH_LOG_FORMAT": "yaml"}).log_format == "yaml"  # warned at start, console
    assert load_config(base).log_format == "console"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_logged_exception_shows_its_traceback_and_no_local_variable(fmt: str) -> None:
    program = (
        "import logging\n"
        "from wire.logs import logging_setup\n"
        "logging_setup(service='svc')\n"
        "def charge(api_key='sk-local-secret-0123456789abcdef'):\n"
        "    raise ValueError('declined')\n"
        "try:\n"
        "    charge()\n"
        "except ValueError:\n"
        "    logging.getLogger('billing').exception('charge failed')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "MMORCH_LOG_FORMAT": fmt}
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ValueError: declined" in result.stderr and "in charge" in result.stderr
    assert "sk-local-secret" not in result.stderr
    if fmt == "json":
        (line,) = result.stderr.splitlines()
        assert json.loads(line)["exception"].startswith("Traceback")
