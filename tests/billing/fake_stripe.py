"""A small Stripe API stand-in for tests: records every call and replays idempotent requests.

The real `stripe` library talks to it (STRIPE_API_BASE). `fail(path_prefix, times)` makes the
next requests under a path answer 500, as Stripe does on an internal error.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Call:
    method: str
    path: str
    idempotency_key: str | None
    form: dict[str, str]
    status: int


@dataclass
class FakeStripe:
    calls: list[Call] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    replies: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # idempotency key → reply
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    url: str = ""

    def fail(self, path_prefix: str, times: int = 1) -> None:
        self.failures[path_prefix] = times

    def calls_to(self, path_prefix: str, method: str = "POST") -> list[Call]:
        return [c for c in self.calls if c.path.startswith(path_prefix) and c.method == method]

    def handle(self, method: str, path: str, key: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            for prefix, left in list(self.failures.items()):
                if path.startswith(prefix) and left > 0:
                    self.failures[prefix] = left - 1
                    self.calls.append(Call(method, path, key, form, 500))
                    return 500, {"error": {"type": "api_error", "message": "internal error"}}
            if key and key in self.replies:
                status, body = self.replies[key]
                self.calls.append(Call(method, path, key, form, status))
                return status, body
            status, body = self._route(method, path, form)
            if key:
                self.replies[key] = (status, body)
            self.calls.append(Call(method, path, key, form, status))
            return status, body

    def _new(self, prefix: str, obj: str, **fields: Any) -> dict[str, Any]:
        ident = f"{prefix}_{next(self._ids):06d}"
        record = {"id": ident, "object": obj, "livemode": False, **fields}
        self.objects[ident] = record
        return record

    def _route(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        meta = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        if method == "POST" and path == "/v1/customers":
            return 200, self._new("cus", "customer", name=form.get("name"), metadata=meta)
        if method == "POST" and path == "/v1/invoices":
            return 200, self._new("in", "invoice", customer=form.get("customer"), status="draft", metadata=meta,
                                  currency=form.get("currency"))  # fmt: skip
        if method == "POST" and path == "/v1/invoiceitems":
            invoice = self.objects.get(form.get("invoice", ""))
            if invoice is None:
                return 404, {"error": {"type": "invalid_request_error", "message": "no such invoice"}}
            return 200, self._new(
                "ii",
                "invoiceitem",
                invoice=invoice["id"],
                metadata=meta,
                unit_amount_decimal=form.get("unit_amount_decimal"),
                amount=form.get("amount"),
            )
        if method == "POST" and path.startswith("/v1/invoices/") and path.endswith("/finalize"):
            invoice = self.objects.get(path.split("/")[3])
            if invoice is None:
                return 404, {"error": {"type": "invalid_request_error", "message": "no such invoice"}}
            invoice["status"] = "open"
            return 200, invoice
        return 404, {"error": {"type": "invalid_request_error", "message": f"unknown route {method} {path}"}}


def _handler(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            form = dict(parse_qsl(raw, keep_blank_values=True))
            status, body = fake.handle(method, self.path.split("?")[0], self.headers.get("Idempotency-Key"), form)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_fake")
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

    return Handler


@contextmanager
def fake_stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
