"""Run the control plane as a real process (uvicorn) for end-to-end tests.

    from tests.e2e.support import control_plane

    @pytest.mark.django_db(transaction=True)   # so the server sees the test's rows
    def test_x(...):
        with control_plane(workers=2, env={"INFERENCE_SHARED_SECRET": node.secret}) as cp:
            cp.base_url        # "http://127.0.0.1:<port>"
            cp.api_base        # cp.base_url + "/v1", for the openai client
            cp.log()           # the server's output so far
            cp.lines()         # all of it, line by line

`args` go to uvicorn after ours (e.g. "--access-log", "--log-level", "info"). Every server's whole
output is kept in `LOGS` (name, text) when it stops: the suite scans it for secrets at the end.

The server uses the pytest-django test database (settings.DATABASES["default"]["NAME"]) and
REDIS_URL from the environment. Extra `env` values override. It is stopped on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[2]
LOGS: list[tuple[str, str]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_url() -> str:
    """A DATABASE_URL for the database pytest-django made (PostgreSQL or SQLite)."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = quote(db.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{db['NAME']}"


class ControlPlane:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_base = self.base_url + "/v1"
        self.log_path = log_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_ready(cp: ControlPlane, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cp.process.poll() is not None:
            raise RuntimeError(f"control plane exited with {cp.process.returncode}:\n{cp.log()}")
        try:
            with urllib.request.urlopen(cp.base_url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"control plane not up after {timeout}s:\n{cp.log()}")


@contextmanager
def control_plane(
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    app: str = "gateway.asgi:application",
    ready_timeout: float = 60.0,
    args: Sequence[str] = (),
) -> Iterator[ControlPlane]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="control-plane-") as tmp:
        log_path = Path(tmp) / "uvicorn.log"
        child_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": os.environ.get("REDIS_URL", ""),
            "DJANGO_DEBUG": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO_ROOT),
            **(env or {}),
        }
        if workers > 1:
            metrics_dir = Path(tmp) / "metrics"
            metrics_dir.mkdir()
            child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        cmd = [
            sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--http", "httptools", "--loop", "uvloop", "--no-access-log",
            "--log-level", "warning", *args,
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT)
        cp = ControlPlane(process, port, log_path)
        try:
            _wait_ready(cp, ready_timeout)
            yield cp
        finally:
            cp.stop()
            LOGS.append((f"control plane :{port}", "\n".join(cp.lines())))
