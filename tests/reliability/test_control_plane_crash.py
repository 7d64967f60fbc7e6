"""kill -9 of the control plane while 20 streams run: usage is counted at the node, so nothing is lost
and nothing is billed twice."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from billing.models import Outcome, UsageRecord
from billing.services.ingestion import usage_ingest_all
from tests.e2e.support import control_plane
from tests.reliability.support import (
    Reply,
    chat,
    child_database_url,
    gateway_env,
    journal_wait,
    manage,
    rid_new,
    world_make,
)
from tests.support.inference_node import InferenceNode

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STREAMS = 20
MAX_TOKENS = 500  # far more than a stream makes in the seconds before the kill


def test_control_plane_sigkill_mid_stream_bills_each_request_once_with_the_journaled_tokens(
    node: InferenceNode, settings: Any
) -> None:
    """Proves: when the control plane dies (SIGKILL, one uvicorn process) under 20 live streams, the
    node notices every disconnect and journals each stream as `aborted` with the tokens it produced;
    three ingestion runs (in-process, `manage.py ingest_usage`, in-process) put each request in the
    ledger exactly once with the journal's token counts, and requests that finished before the kill
    are there exactly once too."""
    world = world_make(node, requests_per_minute=10_000, tokens_per_minute=10_000_000)
    with control_plane(workers=1, env=gateway_env(node)) as cp:
        finished = [chat(cp.base_url, world.raw, request_id=rid_new("done"), max_tokens=6) for _ in range(3)]
        assert [r.status for r in finished] == [200] * 3, [r.body for r in finished]

        replies: list[Reply] = []
        lock = threading.Lock()
        first_text = [threading.Event() for _ in range(STREAMS)]

        def stream(index: int) -> None:
            reply = chat(cp.base_url, world.raw, request_id=rid_new("cut"), max_tokens=MAX_TOKENS, stream=True,
                         on_chunk=first_text[index])  # fmt: skip
            with lock:
                replies.append(reply)

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        for event in first_text:
            assert event.wait(max(0.1, deadline - time.monotonic())), "a stream got no text in 30 s"
        time.sleep(0.5)  # every stream is well under way
        cp.process.kill()
        cp.process.wait(10)
        for thread in threads:
            thread.join(30)

    assert len(replies) == STREAMS
    for reply in replies:
        assert reply.status == 200 and reply.content_chunks > 0, reply
        assert not reply.complete, reply  # each was cut by the crash

    cut_ids = [r.request_id for r in replies]
    done_ids = [r.request_id for r in finished]
    records = journal_wait(node, cut_ids + done_ids)
    missing = [rid for rid in cut_ids + done_ids if rid not in records]
    assert not missing, f"not journaled: {missing}"
    for reply in replies:
        record = records[reply.request_id]
        assert record["outcome"] == "aborted", record
        # The node made at least what the client saw, and stopped long before max_tokens.
        assert reply.content_chunks <= record["completion_tokens"] < MAX_TOKENS, (reply, record)
    for reply in finished:
        usage = reply.json()["usage"]
        record = records[reply.request_id]
        assert record["outcome"] == "length"
        assert (record["prompt_tokens"], record["completion_tokens"]) == (usage["prompt_tokens"], 6)

    settings.INFERENCE_SHARED_SECRET = node.secret
    first = usage_ingest_all()
    assert not first.errors and first.inserted >= len(cut_ids + done_ids), first
    command = manage("ingest_usage", env={"INFERENCE_SHARED_SECRET": node.secret, "DATABASE_URL": child_database_url()})
    assert command.returncode == 0, command.stdout + command.stderr
    assert "inserted=0" in command.stdout, command.stdout
    assert usage_ingest_all().inserted == 0

    all_ids = cut_ids + done_ids
    rows = list(UsageRecord.objects.filter(client_request_id__in=all_ids))
    assert sorted(r.client_request_id for r in rows) == sorted(all_ids)  # each exactly once
    for row in rows:
        record = records[row.client_request_id]
        assert (row.prompt_tokens, row.completion_tokens) == (record["prompt_tokens"], record["completion_tokens"])
        assert row.tenant_id == world.tenant.id and row.key_id == world.key_id
        assert row.outcome == (Outcome.ABORTED if row.client_request_id in cut_ids else "length")
