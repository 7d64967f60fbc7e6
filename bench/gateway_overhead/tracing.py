"""Tracing on against tracing off: the gateway once more, exporting its spans over OTLP/HTTP to a
receiver in this process (decoded, so the spans are known to arrive), at 1 and 32 connections.

Used by `python -m bench.gateway_overhead --tracing`; target: tracing on adds at most 0.3 ms to
the p50 at 1 connection (tracing off is the plain `gateway` row, unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TARGET_ADDED_P50_MS = 0.3


class _Sink:
    """Counts the spans it is sent (OTLP/HTTP protobuf)."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers.get("content-length") or 0)))
                count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with sink._lock:
                    sink.spans += count
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def otlp_sink() -> Iterator[_Sink]:
    sink = _Sink()
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()


def measure_traced(
    *,
    workers: int,
    uvicorn: list[str],
    port: int,
    env: Mapping[str, str],
    key: str,
    body: bytes,
    script: Path,
    duration: int,
    work: Path,
    process: Callable[[list[str], dict[str, str], Path], AbstractContextManager[Any]],
    wait_http: Callable[..., None],
    wrk: Callable[[str, str, Path, int, int], Any],
    warm_up: Callable[[str], None],
) -> list[Any]:
    """The `gateway+tracing (Nw)` rows: the same gateway with OTEL_EXPORTER_OTLP_ENDPOINT set, warmed
    over every key as the untraced one was (a cold key cache would be measured, not tracing)."""
    results = []
    with otlp_sink() as sink:
        traced = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        command = list(uvicorn)
        command[command.index("--port") + 1] = str(port)
        with process(command, traced, work / f"uvicorn-traced-{workers}.log"):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            wait_http(url, data=body, headers=auth)
            warm_up(url)
            for connections in (1, 32):
                results.append(wrk(f"gateway+tracing ({workers}w)", url, script, connections, duration))
        print(f"  tracing: {sink.spans} spans received", flush=True)
        if not sink.spans:
            raise RuntimeError("tracing on, yet no span reached the receiver")
    return results


def summary_lines(by: Mapping[tuple[str, int], Any], workers: int) -> list[str]:
    """Against the target: tracing on minus tracing off, same run, same worker count."""
    off, on = by.get((f"gateway ({workers}w)", 1)), by.get((f"gateway+tracing ({workers}w)", 1))
    if not (off and on):
        return []
    return [
        f"- tracing on (OTLP/HTTP to a local receiver) adds {on.p50_ms - off.p50_ms:.2f} ms p50 at 1 connection "
        f"(target ≤ {TARGET_ADDED_P50_MS} ms); at 32 connections: "
        f"{by[(f'gateway+tracing ({workers}w)', 32)].rps:.0f} vs {by[(f'gateway ({workers}w)', 32)].rps:.0f} requests/s"
    ]
