"""What the reliability tests share: a tenant wired to a node, raw HTTP clients that record exactly
what they saw, the node's journal, and throw-away Redis and PostgreSQL servers of their own.

The shared Redis (6379) and PostgreSQL (5432) are never stopped: a test that kills a backing service
starts its own on a free loopback port and kills only that one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway import services as gw
from gateway.models import ModelVersion, NodeState
from tests import factories
from tests.e2e import support as e2e_support
from tests.e2e.support import REPO_ROOT, free_port
from tests.support.inference_node import InferenceNode
from wire.client import usage_pull

ACTOR = factories.SYSTEM
REGISTRY_REFRESH_S = 0.2


# --- the world the requests run in -------------------------------------------------------------
@dataclass
class World:
    tenant: Any
    key_id: int
    raw: str
    version: ModelVersion


def world_make(node: InferenceNode, *, node_name: str = "node-a", **limits: Any) -> World:
    """A tenant (with `limits`) and an inference key, the demo model granted, the node registered."""
    tenant = factories.tenant(**limits)
    key, raw = factories.inference_key(tenant)
    model = gw.model_create(name="demo-llama", actor=ACTOR)
    version = gw.model_version_create(model=model, version="v1", status="active", actor=ACTOR)
    gw.model_grant_create(tenant=tenant, model=model, actor=ACTOR)
    gw.node_register(name=node_name, base_url=node.base_url, versions=[version], state=NodeState.UP, actor=ACTOR)
    # Each server process reloads its routing snapshot at most this long after a registry change.
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    return World(tenant, key.id, raw, version)


def node_add(world: World, node: InferenceNode, *, node_name: str) -> None:
    """Another node serving the world's model version."""
    gw.node_register(name=node_name, base_url=node.base_url, versions=[world.version], state=NodeState.UP, actor=ACTOR)
    time.sleep(REGISTRY_REFRESH_S * 1.5)


def tenant_add(world: World, **limits: Any) -> World:
    """Another tenant (with `limits`) and inference key, granted the world's model."""
    tenant = factories.tenant(**limits)
    key, raw = factories.inference_key(tenant)
    gw.model_grant_create(tenant=tenant, model=world.version.model, actor=ACTOR)
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    return World(tenant, key.id, raw, world.version)


def gateway_env(node: InferenceNode, **extra: str) -> dict[str, str]:
    return {
        "INFERENCE_SHARED_SECRET": node.secret,
        "GATEWAY_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S),
        **extra,
    }


def rid_new(prefix: str) -> str:
    return f"rel-{prefix}-{uuid.uuid4().hex[:16]}"


# --- the node's journal ------------------------------------------------------------------------
def journal(node: InferenceNode) -> dict[str, dict[str, Any]]:
    """Every record in the node's journal, by the client's request id (the tests send unique ones)."""
    records: dict[str, dict[str, Any]] = {}
    after = 0
    while True:
        page = usage_pull(node.base_url, node.secret, after=after, limit=1000)
        for record in page["records"]:
            records[record["client_request_id"]] = record
        after = int(page.get("next_after", after))
        if not page.get("has_more") or not page["records"]:
            return records


def journal_list(node: InferenceNode) -> list[dict[str, Any]]:
    """Every record in the node's journal, oldest first (for tests that reuse client ids)."""
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        page = usage_pull(node.base_url, node.secret, after=after, limit=1000)
        records.extend(page["records"])
        after = int(page.get("next_after", after))
        if not page.get("has_more") or not page["records"]:
            return records


def journal_wait(node: InferenceNode, request_ids: Sequence[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """The journal once it holds every one of `request_ids` (or whatever it holds at `timeout`)."""
    deadline = time.monotonic() + timeout
    records = journal(node)
    while not all(r in records for r in request_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = journal(node)
    return records


# --- clients that keep what they saw -----------------------------------------------------------
@dataclass
class Reply:
    """One request as its client saw it."""

    request_id: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_chunks: int = 0  # SSE events that carried generated text
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done: bool = False  # the stream ended with `data: [DONE]`
    error: str | None = None  # what broke the exchange (connection reset, ...)
    sent_at: float = 0.0
    ended_at: float = 0.0

    @property
    def complete(self) -> bool:
        """The client got a whole answer: a finish reason, its usage and the end of the stream."""
        return self.status == 200 and self.done and self.finish_reason is not None and self.usage is not None

    def json(self) -> Any:
        return orjson.loads(self.body)


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def chat(
    base_url: str,
    raw_key: str,
    *,
    request_id: str,
    max_tokens: int,
    stream: bool = False,
    content: str = "Tell me a long story",
    messages: list[dict[str, str]] | None = None,
    timeout: float = 60.0,
    on_chunk: threading.Event | None = None,
) -> Reply:
    """POST /v1/chat/completions on a fresh connection; never raises, the Reply says what happened.
    `on_chunk` is set once the first generated text arrives; `messages` replaces the one user message."""
    reply = Reply(request_id=request_id, sent_at=time.monotonic())
    body: dict[str, Any] = {
        "model": "demo-llama",
        "messages": messages if messages is not None else [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    conn = _connection(base_url, timeout)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=orjson.dumps(body),
            headers={"authorization": f"Bearer {raw_key}", "content-type": "application/json",
                     "x-request-id": request_id, "connection": "close"},
        )  # fmt: skip
        response = conn.getresponse()
        reply.status = response.status
        reply.headers = {k.lower(): v for k, v in response.getheaders()}
        if not stream or response.status != 200:
            reply.body = response.read()
            return reply
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                reply.done = True
                continue
            event = orjson.loads(data)
            if event.get("usage"):
                reply.usage = event["usage"]
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    reply.content_chunks += 1
                    if on_chunk is not None:
                        on_chunk.set()
                if choice.get("finish_reason"):
                    reply.finish_reason = choice["finish_reason"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    finally:
        reply.ended_at = time.monotonic()
        conn.close()
    return reply


def get(url: str, *, raw_key: str | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = _connection(url, timeout)
    headers = {"connection": "close"} | ({"authorization": f"Bearer {raw_key}"} if raw_key else {})
    try:
        conn.request("GET", parts.path or "/", headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_openai_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """The body is the OpenAI error envelope (JSON, no HTML, no traceback) with this status."""
    assert reply.status == status, (reply.status, reply.body[:500], reply.error)
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    assert b"Traceback" not in reply.body and b"<html" not in reply.body.lower(), reply.body[:500]
    error = reply.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


UNHANDLED_MARKERS = ("Exception in ASGI application", "Internal Server Error", "Unhandled exception")


def unhandled_errors(log: str) -> list[str]:
    """Lines of a server log that tell of an exception nothing handled."""
    return [line for line in log.splitlines() if any(marker in line for marker in UNHANDLED_MARKERS)]


def concurrent(calls: Sequence[Any], *, workers: int | None = None) -> list[Any]:
    """Run zero-argument callables at once, one thread each; their results in order."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(10)
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an interval ending as another starts does not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


# --- a Redis of our own ------------------------------------------------------------------------
class OwnRedis:
    """`redis-server` on a free loopback port, no persistence; kill() is SIGKILL, start() reuses the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: install the Debian package redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- a PostgreSQL cluster of our own -----------------------------------------------------------
def _pg_bin(name: str) -> str:
    found = sorted(str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"{name} is missing (looked in /usr/lib/postgresql/*/bin/): install the Debian package postgresql"
        )
    return found[-1]


def _as_postgres(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """PostgreSQL refuses to run as root: its tools run as the `postgres` user."""
    command = args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


class OwnPostgres:
    """A throw-away cluster: no fsync, trust auth on loopback, a free port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/mmorch"

    def init(self) -> None:
        self.data.parent.chmod(0o777)
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres")
        done = _as_postgres(
            [_pg_bin("initdb"), "--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8", "-D", str(self.data)]
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.start()
        created = _as_postgres([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "mmorch"])
        assert created.returncode == 0, created.stdout + created.stderr

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c unix_socket_directories={self.data}"
        done = _as_postgres(
            [_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start"]
        )
        assert done.returncode == 0, done.stdout + done.stderr + self.log_text()

    def stop(self, mode: str = "immediate") -> None:
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    with tempfile.TemporaryDirectory(prefix="rel-postgres-") as tmp:
        cluster = OwnPostgres(Path(tmp))
        cluster.init()
        try:
            yield cluster
        finally:
            cluster.stop()


def child_database_url() -> str:
    """DATABASE_URL of the pytest-django test database, for child processes."""
    return e2e_support.test_database_url()


def manage(*args: str, env: dict[str, str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """`python manage.py ...` in a subprocess with `env` over this process's environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def python_script(source: str, *, env: dict[str, str], timeout: float = 120.0) -> Any:
    """Run `source` in a fresh Django process (env over ours); it prints one JSON value, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + source],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
