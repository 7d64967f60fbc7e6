"""The usage journal: durability across kill -9, idempotent pulls, retention."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from inference.journal import Journal, utc_iso
from tests.inference.conftest import signed
from tests.support.inference_node import inference_node
from wire.client import usage_pull
from wire.usage import JournalRecord

SECRET = "journal-secret"


def pull_all(base_url: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    after = 0
    while True:
        page = usage_pull(base_url, SECRET, after=after, limit=50)
        records.extend(page["records"])
        after = page["next_after"]
        if not page["has_more"]:
            return records


@pytest.mark.slow
async def test_completed_requests_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    with inference_node(secret=SECRET, workdir=tmp_path, INFERENCE_MAX_BATCH_SIZE="8") as node:
        completed: list[str] = []
        sent: list[str] = []
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession, n: int) -> None:
            path = "/v1/chat/completions" if n % 2 else "/v1/completions"
            while not stop.is_set():
                rid = str(uuid.uuid4())
                payload: dict[str, object] = {"model": "demo-llama", "max_tokens": 24, "stream": n % 3 == 0}
                if n % 2:
                    payload["messages"] = [{"role": "user", "content": f"client {n}"}]
                else:
                    payload["prompt"] = f"client {n}"
                body = json.dumps(payload).encode()
                sent.append(rid)
                try:
                    async with session.post(
                        node.base_url + path, data=body, headers=signed(SECRET, path, body, request_id=rid)
                    ) as r:
                        data = await r.read()
                except (aiohttp.ClientError, OSError):
                    return
                # Complete: the whole JSON body, or the stream through its [DONE].
                if r.status == 200 and (data.endswith(b"data: [DONE]\n\n") or data.endswith(b"}")):
                    completed.append(rid)

        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client(session, n)) for n in range(8)]
            while len(completed) < 30:
                await asyncio.sleep(0.02)
            node.kill()  # SIGKILL in the middle of the load
            stop.set()
            await asyncio.gather(*clients)

        node.start()
        records = await asyncio.to_thread(pull_all, node.base_url)
        again = await asyncio.to_thread(pull_all, node.base_url)

    assert len(completed) >= 30
    assert len(sent) > len(completed)  # the kill really cut requests off mid-flight
    counts = Counter(str(r["request_id"]) for r in records)
    missing = [rid for rid in completed if counts[rid] != 1]
    assert missing == []
    assert all(count == 1 for count in counts.values())
    assert set(counts) <= set(sent)
    assert records == again
    assert [r["seq"] for r in records] == sorted({r["seq"] for r in records})


def record(request_id: str, finished_ts: float) -> JournalRecord:
    return JournalRecord(
        request_id=request_id,
        tenant=1,
        key=2,
        model="m",
        model_version="v1",
        prompt_tokens=1,
        completion_tokens=2,
        outcome="stop",
        queue_ms=0.0,
        ttft_ms=1.0,
        duration_ms=2.0,
        started_at=utc_iso(finished_ts),
        finished_at=utc_iso(finished_ts),
    )


async def test_retention_prunes_old_records_and_sequence_numbers_never_repeat(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", retention_days=7)
    journal.open()
    now = time.time()
    old = await journal.append(record("old", now - 8 * 86400))
    recent = await journal.append(record("recent", now - 86400))
    journal.close()
    assert journal.prune() == 1
    page = journal.read_page(after=0, limit=10)
    assert [r.request_id for r in page.records] == ["recent"]
    assert (page.next_after, page.has_more) == (recent, False)
    journal.open()  # opening prunes too, and the next sequence number continues after the deleted ones
    newer = await journal.append(record("newer", now))
    journal.close()
    assert newer > recent > old
    assert journal.read_page(after=recent, limit=10).records[0].request_id == "newer"


async def test_group_commit_keeps_every_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.open()
    seqs = await asyncio.gather(*(journal.append(record(f"r{i}", time.time())) for i in range(200)))
    journal.close()
    assert sorted(seqs) == list(range(1, 201))
    page = journal.read_page(after=0, limit=1000)
    assert {r.request_id for r in page.records} == {f"r{i}" for i in range(200)}


def test_sigterm_on_an_idle_node_exits_cleanly(tmp_path: Path) -> None:
    with inference_node(secret=SECRET, workdir=tmp_path) as node:
        assert node.stop(timeout=20) == 0
        assert "Traceback" not in node.log()


async def test_a_journal_from_before_attempt_ids_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from inference.journal import SCHEMA

    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.replace(",\n    client_request_id TEXT NOT NULL DEFAULT ''", ""))
    conn.execute(
        "INSERT INTO usage (request_id, tenant, key, model, model_version, prompt_tokens, completion_tokens, outcome,"
        " queue_ms, ttft_ms, duration_ms, started_at, finished_at, finished_ts)"
        " VALUES ('client-1', '1', '', 'm', 'v1', 1, 2, 'stop', 0, 1, 2, ?, ?, ?)",
        (utc_iso(time.time()), utc_iso(time.time()), time.time()),
    )
    conn.commit()
    conn.close()
    journal = Journal(path)
    journal.open()
    await journal.append(record("attempt-2", time.time()).model_copy(update={"client_request_id": "client-2"}))
    journal.close()
    got = [(r.request_id, r.client_request_id) for r in journal.read_page(after=0, limit=10).records]
    assert got == [("client-1", "client-1"), ("attempt-2", "client-2")]


@pytest.mark.slow
async def test_a_journal_from_before_attribution_is_upgraded_and_keeps_it_after(tmp_path: Path) -> None:
    import sqlite3

    from inference.journal import SCHEMA

    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path)
    before = SCHEMA.split(",\n    end_user")[0] + "\n);"  # the version 2 table
    assert "metadata" not in before and "client_request_id" in before
    conn.executescript(before)
    conn.execute(
        "INSERT INTO usage (request_id, client_request_id, tenant, key, model, model_version, prompt_tokens,"
        " completion_tokens, outcome, queue_ms, ttft_ms, duration_ms, started_at, finished_at, finished_ts)"
        " VALUES ('old-1', 'old-1', '1', '', 'm', 'v1', 1, 2, 'stop', 0, 1, 2, ?, ?, ?)",
        (utc_iso(time.time()), utc_iso(time.time()), time.time()),
    )
    conn.commit()
    conn.close()
    journal = Journal(path)
    journal.open()
    tagged = record("new-2", time.time()).model_copy(
        update={"end_user": "user-9", "metadata": {"team": "search", "env": "prod"}, "trace_id": "0f" * 16}
    )
    await journal.append(tagged.model_copy(update={"engine_ms": 3.25}))
    journal.close()
    old, new = journal.read_page(after=0, limit=10).records
    assert (old.end_user, old.metadata, old.trace_id, old.engine_ms) == ("", {}, "", 0.0)
    assert (new.end_user, new.metadata, new.trace_id, new.engine_ms) == (
        "user-9",
        {"team": "search", "env": "prod"},
        "0f" * 16,
        3.25,
    )
