"""kill -9 of the inference node while 20 streams run: what the clients saw against what was billed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from billing.models import UsageRecord
from billing.services.ingestion import usage_ingest_all
from tests.e2e.support import control_plane
from tests.reliability.support import Reply, chat, gateway_env, journal, rid_new, world_make
from tests.support.inference_node import InferenceNode

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SHORT, LONG = 6, 14  # 20 streams: the short ones finish before the crash, the long ones cannot
SHORT_TOKENS, LONG_TOKENS = 6, 500


def test_node_sigkill_mid_stream_bills_exactly_the_complete_responses(node: InferenceNode, settings: Any) -> None:
    """Proves the crash guarantee of docs/reliability.md: the node's journal commits before the last
    byte of a response is sent, so after a SIGKILL of the node under 20 streams, a restart and two
    ingestion runs, every request whose client saw a complete response (finish reason, usage,
    `[DONE]`) is billed exactly once with the usage the client saw, and every stream the crash cut
    was never journaled and is not billed (the tokens its client saw are free)."""
    world = world_make(node, requests_per_minute=10_000, tokens_per_minute=10_000_000)
    replies: list[Reply] = []
    lock = threading.Lock()
    plan = [SHORT_TOKENS] * SHORT + [LONG_TOKENS] * LONG
    first_text = [threading.Event() for _ in plan]

    def stream(index: int) -> None:
        reply = chat(cp.base_url, world.raw, request_id=rid_new(f"s{plan[index]}"), max_tokens=plan[index],
                     stream=True, on_chunk=first_text[index])  # fmt: skip
        with lock:
            replies.append(reply)

    with control_plane(workers=2, env=gateway_env(node)) as cp:
        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(len(plan))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        for event in first_text:
            assert event.wait(max(0.1, deadline - time.monotonic())), "a stream got no text in 30 s"
        for thread in threads[:SHORT]:
            thread.join(max(0.1, deadline - time.monotonic()))
        time.sleep(0.3)
        node.kill()
        for thread in threads:
            thread.join(30)
        node.restart()  # same port, same journal file

        assert len(replies) == len(plan)
        complete = {r.request_id: r for r in replies if r.complete}
        cut = {r.request_id: r for r in replies if not r.complete}
        # What the clients saw: the short streams whole, the long ones cut part-way.
        assert sum(r.usage["completion_tokens"] == SHORT_TOKENS for r in complete.values()) == SHORT, replies
        assert len(cut) == LONG, replies
        for reply in cut.values():
            assert reply.status == 200 and 0 < reply.content_chunks < LONG_TOKENS, reply
            assert reply.usage is None, reply

        settings.INFERENCE_SHARED_SECRET = node.secret
        for _ in range(2):
            result = usage_ingest_all()
            assert not result.errors, result.errors

    records = journal(node)
    sent = [r.request_id for r in replies]
    rows = {row.client_request_id: row for row in UsageRecord.objects.filter(client_request_id__in=sent)}
    assert sorted(rows) == sorted(complete)  # billed: exactly the complete ones, each once
    for request_id, reply in complete.items():
        row = rows[request_id]
        assert reply.usage is not None
        assert (row.prompt_tokens, row.completion_tokens) == (
            reply.usage["prompt_tokens"],
            reply.usage["completion_tokens"],
        )
        assert row.outcome == reply.finish_reason
    for request_id in cut:
        assert request_id not in records  # the crash left no record: these tokens are free
