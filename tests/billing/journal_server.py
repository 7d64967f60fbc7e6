"""A node's usage journal over HTTP, for ingestion tests that need control over the records.

It speaks the inference plane's `/internal/usage` contract (signed GET, `after`/`limit`,
`records`/`next_after`/`has_more`) and checks the gateway signature with wire.signing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wire.signing import SignatureError, verify_signature


class Journal:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.pulls = 0

    def append(self, **record: Any) -> dict[str, Any]:
        with self.lock:
            record["seq"] = len(self.records) + 1
            self.records.append(record)
        return record

    def page(self, after: int, limit: int) -> dict[str, Any]:
        with self.lock:
            self.pulls += 1
            chunk = [r for r in self.records if r["seq"] > after][:limit]
            last = self.records[-1]["seq"] if self.records else 0
        next_after = chunk[-1]["seq"] if chunk else after
        return {"records": chunk, "next_after": next_after, "has_more": next_after < last}


def _handler(journal: Journal) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            try:
                verify_signature([journal.secret], "GET", self.path, b"", dict(self.headers.items()))
            except SignatureError:
                self.send_response(401)
                self.end_headers()
                return
            if parts.path != "/internal/usage":
                self.send_response(404)
                self.end_headers()
                return
            query = parse_qs(parts.query)
            body = json.dumps(journal.page(int(query["after"][0]), int(query["limit"][0]))).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def journal_server(journal: Journal) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(journal))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
