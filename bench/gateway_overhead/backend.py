"""A minimal OpenAI-compatible backend with a fixed reply: `python -m bench.gateway_overhead.backend PORT`.

Raw asyncio + httptools + uvloop, so the backend itself costs as little as possible and the
numbers measure what sits in front of it. It ignores signatures and answers every POST with
the same chat completion (with usage), and GET /ready with 200.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

REPLY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"demo-llama",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
MODELS = b'{"object":"list","data":[{"id":"demo-llama","object":"model","created":1700000000,"owned_by":"bench"}]}'


def _response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


CHAT = _response(REPLY)
READY = _response(b'{"status":"ready"}')
LIST = _response(MODELS)


class Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        if method == b"GET" and self.url.startswith(b"/ready"):
            self.transport.write(READY)
        elif method == b"GET":
            self.transport.write(LIST)
        else:
            self.transport.write(CHAT)
        self.url = b""
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
