"""A small OpenAI-compatible node on a real loopback socket, for the gateway's own tests.

It checks the gateway's signature, records every request it gets, and answers with a fixed
reply whose usage it reports, streaming or not. `mode` makes it fail on purpose.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientConnectionResetError, web

from wire.signing import SignatureError, verify_signature

PROMPT_TOKENS = 7
REPLY_WORDS = ["Hello", " from", " the", " fake", " node", "."]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeNode:
    secret: str
    mode: str = "ok"  # ok | error500 | error400 | hang_stream
    seen: list[Seen] = field(default_factory=list)
    aborted: int = 0
    runner: web.AppRunner | None = None
    url: str = ""
    # When set, usage reports the prompt as this tokenizer and its chat template make it (as a real node).
    tokenizer: Any = None

    async def start(self) -> FakeNode:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/embeddings", self._embed)
        app.router.add_get("/ready", self._ready)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _count(self, body: dict[str, Any]) -> int:
        from wire.prompt import chat_prompt_ids, message_text, text_prompt_ids

        if "messages" in body:
            messages = [{"role": m["role"], "content": message_text(m.get("content"))} for m in body["messages"]]
            return len(chat_prompt_ids(self.tokenizer, messages))
        return len(text_prompt_ids(self.tokenizer, body["prompt"]))

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def _embed(self, request: web.Request) -> web.Response:
        """One fixed 3-dimension vector per input; usage as a real node reports it (prompt only)."""
        raw = await request.read()
        try:
            ctx = verify_signature([self.secret], "POST", request.path_qs, raw, dict(request.headers))
        except SignatureError as exc:
            return web.json_response(
                {"error": {"message": str(exc), "type": "auth", "param": None, "code": None}}, status=401
            )
        body = orjson.loads(raw)
        self.seen.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        inputs = body["input"] if isinstance(body["input"], list) and not isinstance(body["input"][0], int) else [1]
        data = [{"object": "embedding", "index": i, "embedding": [0.6, 0.0, 0.8]} for i in range(len(inputs))]
        usage = {"prompt_tokens": PROMPT_TOKENS * len(inputs), "total_tokens": PROMPT_TOKENS * len(inputs)}
        payload = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers={"x-request-id": ctx.request_id}
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            ctx = verify_signature([self.secret], "POST", request.path_qs, raw, dict(request.headers))
        except SignatureError as exc:
            return web.json_response(
                {"error": {"message": str(exc), "type": "auth", "param": None, "code": None}}, status=401
            )
        body = orjson.loads(raw)
        self.seen.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        if self.mode == "error500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if self.mode == "error400":
            error = {"message": "bad roles", "type": "invalid_request_error", "param": "messages", "code": None}
            return web.json_response({"error": error}, status=400)
        chat = request.path.endswith("chat/completions")
        words = REPLY_WORDS[: body.get("max_tokens") or len(REPLY_WORDS)]
        prompt_tokens = PROMPT_TOKENS if self.tokenizer is None else self._count(body)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        rid = ctx.request_id
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(words), "refusal": None}
            else:
                choice["text"] = "".join(words)
            payload = {
                "id": rid, "object": "chat.completion" if chat else "text_completion", "created": 1,
                "model": body["model"], "choices": [choice], "usage": usage,
            }  # fmt: skip
            return web.Response(
                body=orjson.dumps(payload), content_type="application/json", headers={"x-request-id": rid}
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": rid})
        await response.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            for i, word in enumerate(words):
                delta: dict[str, Any] = {"index": 0, "finish_reason": None}
                if chat:
                    delta["delta"] = {"content": word} if i else {"role": "assistant", "content": word}
                else:
                    delta["text"] = word
                chunk = {"id": rid, "object": obj, "created": 1, "model": body["model"], "choices": [delta]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if self.mode == "hang_stream":
                    # Stall until the gateway hangs up (at most 10 s).
                    for _ in range(1000):
                        if request.transport is None or request.transport.is_closing():
                            self.aborted += 1
                            return response
                        await asyncio.sleep(0.01)
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {"id": rid, "object": obj, "created": 1, "model": body["model"], "choices": [], "usage": usage}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError):
            self.aborted += 1
            raise
        return response
