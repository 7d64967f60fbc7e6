"""The demo's supervisor, with real child processes: a crashed child is restarted after a
back-off and logged; a child in a crash loop stops the platform with its name; stop ends all."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from scripts.supervisor import CrashLoop, Supervisor

# Crashes (exit 3) on its first start, then stays up: the marker file remembers the first start.
CRASH_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("started")
    sys.exit(3)
time.sleep(60)
"""


def _poll_until(supervisor: Supervisor, done: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.poll()
        if callable(done) and done():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_a_crashed_child_is_restarted_after_its_backoff_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mmorch.supervisor")
    supervisor = Supervisor(cwd=tmp_path, backoff_s=0.3, max_backoff_s=1.0)
    child = supervisor.add("node", [sys.executable, "-c", CRASH_ONCE, str(tmp_path / "marker")], dict(os.environ))
    steady = supervisor.add("web", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    supervisor.start_all()
    try:
        first = child.proc
        assert first is not None
        first.wait(timeout=10)
        crashed_at = time.monotonic()
        _poll_until(supervisor, lambda: child.proc is not first)
        # Not restarted before the back-off had passed, and then it stays up.
        assert time.monotonic() - crashed_at >= 0.25
        assert child.restarts == 1
        assert child.proc is not None and child.proc.poll() is None
        assert steady.restarts == 0 and steady.proc is not None and steady.proc.poll() is None
        messages = [r.getMessage() for r in caplog.records]
        assert "node: exited with 3; restarting in 0.3 s" in messages
        assert "node: restarting (restart 1)" in messages
    finally:
        supervisor.stop_all(grace_s=5)
    assert all(c.proc is not None and c.proc.poll() is not None for c in supervisor.children)


def test_the_backoff_doubles_up_to_its_cap(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path, backoff_s=0.05, max_backoff_s=0.2, max_crashes=100)
    child = supervisor.add("flaky", [sys.executable, "-c", "raise SystemExit(1)"], dict(os.environ))
    supervisor.start_all()
    delays: list[float] = []
    try:
        while len(delays) < 4:
            before = child.restart_at
            supervisor.poll()
            if child.restart_at is not None and before is None:
                delays.append(round(child.restart_at - time.monotonic(), 2))
            time.sleep(0.01)
    finally:
        supervisor.stop_all(grace_s=5)
    assert delays[0] <= 0.05 and 0.08 <= delays[1] <= 0.1 and 0.15 <= delays[2] <= 0.2 and delays[3] <= 0.2


def test_a_crash_loop_stops_the_platform_naming_the_child(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path, backoff_s=0.01, max_backoff_s=0.01, max_crashes=3, crash_window_s=30)
    supervisor.add("celery-beat", [sys.executable, "-c", "raise SystemExit(2)"], dict(os.environ))
    supervisor.start_all()
    try:
        with pytest.raises(CrashLoop, match="celery-beat keeps crashing"):
            _poll_until(supervisor, lambda: False)
    finally:
        supervisor.stop_all(grace_s=5)
