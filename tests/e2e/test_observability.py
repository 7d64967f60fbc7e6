"""Logs and traces across real processes: the control plane (uvicorn), an inference node, a Celery
worker, and a real OTLP/HTTP receiver decoding what they export.

One request is followed by its id through the three processes' JSON lines, and by its trace id
through the spans of both planes and into its ledger row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e import support
from tests.e2e.support import REPO_ROOT, ControlPlane, control_plane, free_port
from tests.e2e.test_gateway import REGISTRY_REFRESH_S, client_for, make_world
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan, otlp_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SERVER, CLIENT = 2, 3  # OTLP span kinds
KEY_RE = re.compile(r"sk-(?:admin-)?[A-Za-z0-9_-]{16,}")


def telemetry_env(endpoint: str) -> dict[str, str]:
    return {
        "MMORCH_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, so the test waits little
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def node(receiver: OTLPReceiver) -> Iterator[InferenceNode]:
    env = {**telemetry_env(receiver.endpoint), "INFERENCE_LOG_LEVEL": "info", "INFERENCE_NODE_NAME": "node-a"}
    with inference_node(secret=DEFAULT_SECRET, **env) as running:
        yield running


def server_env(endpoint: str) -> dict[str, str]:
    return {
        **telemetry_env(endpoint),
        "INFERENCE_SHARED_SECRET": DEFAULT_SECRET,
        "GATEWAY_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S),
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def server(django_db_setup: Any, node: InferenceNode, receiver: OTLPReceiver) -> Iterator[ControlPlane]:
    with control_plane(
        workers=1, env=server_env(receiver.endpoint), args=["--access-log", "--log-level", "info"]
    ) as cp:
        yield cp


@contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """A real Celery worker on a queue of its own; yields (queue, log path) once it is ready."""
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="celery-worker-") as tmp:
        log_path = Path(tmp) / "worker.log"
        child_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": support.test_database_url(),
            "PYTHONPATH": str(REPO_ROOT),
            **env,
        }
        child_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cmd = [
            sys.executable, "-m", "celery", "-A", "config", "--quiet", "worker", "-P", "solo", "-Q", queue,
            "-n", f"{queue}@%h", "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while " ready." not in log_path.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"celery worker did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
                time.sleep(0.2)
            yield queue, log_path
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def json_lines(text: str, where: str) -> list[dict[str, Any]]:
    """Every line of a process's output, each parsed as one JSON object."""
    parsed = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{where} wrote a line that is not JSON: {line!r}")
        assert isinstance(obj, dict), line
        parsed.append(obj)
    return parsed


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service}:{name}: {found}"
    return found[0]


def test_one_request_across_logs_traces_and_the_ledger(
    server: ControlPlane, node: InferenceNode, receiver: OTLPReceiver
) -> None:
    from billing.models import UsageRecord
    from config.celery import app as celery_app

    world = make_world(node.base_url, limits={"requests_per_minute": 1000, "tokens_per_minute": 100_000})
    client = client_for(server, world.raw)
    rid = f"obs-{uuid.uuid4().hex}"
    reply = client.chat.completions.with_raw_response.create(
        model="demo-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
        extra_headers={"x-request-id": rid},
    )  # fmt: skip
    assert reply.parse().choices[0].message.content
    # The other usual paths write their lines too (and must not leak a key): a stream, the
    # model list, a refused key.
    list(
        client.chat.completions.create(
            model="demo-llama", messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True
        )
    )
    assert [m.id for m in client.models.list()] == ["demo-llama"]
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "sk-" + "x" * 40).models.list()
    # A page of Django's full stack (the dashboard's sign-in), traced by the Django instrumentation.
    with urllib.request.urlopen(server.base_url + "/login/", timeout=10) as page:
        assert page.status == 200

    # The usage reaches the ledger through the real ingestion task.
    worker_env = {**server_env(receiver.endpoint), "REDIS_URL": os.environ.get("REDIS_URL", "")}
    with celery_worker(worker_env) as (queue, worker_log):
        celery_app.send_task("billing.tasks.usage_ingest_task", queue=queue)
        deadline = time.monotonic() + 60
        while not UsageRecord.objects.filter(client_request_id=rid).exists():
            assert time.monotonic() < deadline, f"not ingested:\n{worker_log.read_text()[-4000:]}"
            time.sleep(0.2)
        worker_text = worker_log.read_text(errors="replace")
    row = UsageRecord.objects.get(client_request_id=rid)
    assert re.fullmatch(r"[0-9a-f]{32}", row.trace_id), row.trace_id

    # Logs: every line of every process is JSON; the request's id is in each process's lines,
    # with its tenant, key id, model and node, and never a key or the shared secret.
    cp_lines = json_lines("\n".join(server.lines()), "the control plane")
    node_lines = json_lines(node.log_path.read_text(errors="replace"), "the node")
    worker_lines = json_lines(worker_text, "the worker")
    expected = {"tenant": world.tenant.id, "key_id": world.key_id, "model": "demo-llama", "node": "node-a"}
    access = [ln for ln in cp_lines if ln.get("request_id") == rid and ln["logger"] == "uvicorn.access"]
    assert len(access) == 1, [ln for ln in cp_lines if ln["logger"] == "uvicorn.access"]
    assert access[0]["status"] == 200 and access[0]["path"] == "/v1/chat/completions"
    assert {k: access[0][k] for k in expected} == expected
    finished = [ln for ln in node_lines if ln.get("request_id") == rid and ln["event"] == "request finished"]
    assert len(finished) == 1
    assert {k: finished[0][k] for k in expected} == expected
    assert finished[0]["attempt_id"] == row.request_id and finished[0]["completion_tokens"] == 4
    ingested = [ln for ln in worker_lines if ln.get("request_id") == rid]
    assert len(ingested) == 1 and ingested[0]["event"] == "usage record ingested"
    assert ingested[0]["task"] == "billing.tasks.usage_ingest_task" and ingested[0]["task_id"]
    assert ingested[0]["trace_id"] == row.trace_id and ingested[0]["tenant"] == world.tenant.id
    for where, text in (
        ("control plane", "\n".join(server.lines())),
        ("node", node.log_path.read_text()),
        ("worker", worker_text),
    ):
        assert world.raw not in text and DEFAULT_SECRET not in text, where
        assert not KEY_RE.search(text), f"{where}: {KEY_RE.search(text)}"

    # Traces: the request's spans from both planes share its trace id, parent to child.
    cp_service, node_service = "mmorch-control-plane", "mmorch-inference"
    wanted = {
        (cp_service, "gateway.authenticate"), (cp_service, "gateway.quota_admission"), (cp_service, "gateway.route"),
        (cp_service, "gateway.upstream"), (node_service, "node.queue"), (node_service, "node.prefill"),
        (node_service, "node.decode"), (node_service, "node.journal_commit"),
    }  # fmt: skip

    def complete(spans: list[ReceivedSpan]) -> bool:
        have = {(s.service, s.name) for s in spans if s.trace_id == row.trace_id}
        return wanted <= have and any(s.service == node_service and s.kind == SERVER for s in spans)

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == row.trace_id]
    cp_root = [s for s in spans if s.service == cp_service and s.kind == SERVER]
    assert len(cp_root) == 1 and cp_root[0].parent_span_id == ""
    for name in ("gateway.authenticate", "gateway.quota_admission", "gateway.route", "gateway.upstream"):
        assert one(spans, cp_service, name).parent_span_id == cp_root[0].span_id, name
    upstream = one(spans, cp_service, "gateway.upstream")
    assert upstream.attributes["mmorch.attempt_id"] == row.request_id
    # The aiohttp client's span sits under the upstream wait; the node's server span hangs off
    # the span the gateway signed into the request, and the engine's spans off the node's.
    client_spans = [s for s in spans if s.service == cp_service and s.kind == CLIENT]
    assert [s.parent_span_id for s in client_spans if s.parent_span_id == upstream.span_id]
    node_root = [s for s in spans if s.service == node_service and s.kind == SERVER]
    assert len(node_root) == 1 and node_root[0].parent_span_id == upstream.span_id
    for name in ("node.queue", "node.prefill", "node.decode", "node.journal_commit"):
        assert one(spans, node_service, name).parent_span_id == node_root[0].span_id, name
    # The other instrumentations: the quota's Redis calls under the request, a dashboard page,
    # the ingestion task with its database queries.
    assert [s for s in spans if s.service == cp_service and s.attributes.get("db.system") == "redis"]
    everything = receiver.spans()
    assert [s for s in everything if s.service == cp_service and s.kind == SERVER and "login" in s.name]
    task = [s for s in everything if s.service == "mmorch-worker" and "usage_ingest_task" in s.name]
    assert task, sorted({(s.service, s.name) for s in everything if s.service == "mmorch-worker"})
    assert [s for s in everything if s.trace_id == task[0].trace_id and s.attributes.get("db.system") == "postgresql"]
    queue, prefill, decode = (one(spans, node_service, n) for n in ("node.queue", "node.prefill", "node.decode"))
    assert queue.end_ns <= prefill.start_ns + 1 and prefill.end_ns <= decode.start_ns + 1
    assert decode.attributes["mmorch.completion_tokens"] == 4


def wait_for_line(read: Any, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in read():
        assert time.monotonic() < deadline, f"never logged {needle!r}:\n{read()[-3000:]}"
        time.sleep(0.2)


def test_an_unreachable_collector_warns_once_and_fails_no_request(django_db_setup: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**telemetry_env(closed), "INFERENCE_LOG_LEVEL": "info"}
    with inference_node(secret=DEFAULT_SECRET, **env) as unreachable_node:
        world = make_world(unreachable_node.base_url)
        with control_plane(workers=1, env=server_env(closed)) as cp:
            client = client_for(cp, world.raw)
            messages = [{"role": "user", "content": "hi"}]

            def serve() -> None:
                chat = client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=2)
                assert chat.choices[0].message.content
                streamed = client.chat.completions.create(
                    model="demo-llama", messages=messages, max_tokens=2, stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

            serve()
            # Both processes try to export those spans, fail, and say so once; requests go on.
            wait_for_line(lambda: "\n".join(cp.lines()), "trace export")
            wait_for_line(lambda: unreachable_node.log_path.read_text(errors="replace"), "trace export")
            serve()
            serve()
            # Stopping flushes what is buffered: every export has been tried once a process is gone.
            cp.stop()
            cp_text = "\n".join(cp.lines())
        unreachable_node.stop()
        node_text = unreachable_node.log_path.read_text(errors="replace")
    for where, text in (("control plane", cp_text), ("node", node_text)):
        lines = json_lines(text, where)
        warnings = [ln for ln in lines if "trace export" in ln["event"]]
        assert len(warnings) == 1, (where, text[-3000:])
        assert warnings[0]["level"] == "warning" and closed in warnings[0]["event"]
        assert not [ln for ln in lines if ln["level"] in ("error", "critical")], (where, text[-3000:])
