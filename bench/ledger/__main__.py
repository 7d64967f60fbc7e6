"""Ledger ingestion benchmark against PostgreSQL, in a throwaway database that is dropped afterwards.

A node's journal served over HTTP in the inference plane's format (pages of
   `--page-size`), pulled by `usage_ingest_node` into the ledger with prices and rollups.
   Reported: events/s end to end, and events/s of the database part alone.
   `--nodes 1 4`: the events split over that many nodes' journals, pulled at once by
   `usage_ingest_all` (one connection per node).

    .venv/bin/python -m bench.ledger [--events 100000] [--nodes 1 4] [--tenants 1000]

The billing run has its own benchmark: `python -m bench.billing`.

DATABASE_URL names the PostgreSQL server (its database is not touched); results are printed
and written to bench/ledger/RESULTS.md with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/mmorch"
MONTH = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = "2026-01"


def _db_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _admin_execute(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(_db_url(base, "postgres"), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _setup_django(db_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ.pop("REDIS_URL", None)  # the benchmark measures PostgreSQL only
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    # As in production: with DEBUG on, Django keeps every query's SQL (time and memory).
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()


# --- 1. ingestion ------------------------------------------------------------------------------
class _Pages:
    """Pre-serialised journal pages, so the server costs little CPU next to the ingester."""

    def __init__(self, tenant_ids: list[int], events: int, page_size: int) -> None:
        self.pages: dict[int, bytes] = {}
        started = MONTH + timedelta(days=3)
        records = []
        for seq in range(1, events + 1):
            at = started + timedelta(milliseconds=37 * seq)
            records.append(
                {
                    "seq": seq,
                    "request_id": f"bench-{uuid.uuid4().hex}",
                    "tenant": tenant_ids[seq % len(tenant_ids)],
                    "key": None,
                    "model": ("demo-llama", "big-model", "tiny")[seq % 3],
                    "model_version": "v1",
                    "prompt_tokens": 20 + seq % 500,
                    "completion_tokens": seq % 300,
                    "outcome": "aborted" if seq % 50 == 0 else "stop",
                    "queue_ms": 1,
                    "ttft_ms": 12,
                    "duration_ms": 180,
                    "started_at": at.isoformat(),
                    "finished_at": (at + timedelta(milliseconds=180)).isoformat(),
                    "version": 3,
                    "end_user": f"user-{seq % 1000}",
                    "metadata": {"team": ("search", "chat")[seq % 2], "env": "prod"},
                    "trace_id": uuid.uuid4().hex,
                    "engine_ms": 150.5,
                }
            )
        for start in range(0, events, page_size):
            chunk = records[start : start + page_size]
            next_after = chunk[-1]["seq"]
            body = {"records": chunk, "next_after": next_after, "has_more": next_after < events}
            self.pages[start] = json.dumps(body).encode()
        self.empty = json.dumps({"records": [], "next_after": events, "has_more": False}).encode()
        self.records = records


def _serve(journals: list[_Pages]) -> tuple[ThreadingHTTPServer, list[str]]:
    """One HTTP server for every node's journal: node i answers under `/n<i>`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            pages = journals[int(parts.path.split("/")[1][1:])]
            after = int(parse_qs(parts.query)["after"][0])
            body = pages.pages.get(after, pages.empty)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    return server, [f"{base}/n{i}" for i in range(len(journals))]


def _fixtures(tenants: int) -> list[int]:
    from billing.models import Plan, Price, Subscription
    from tenants.models import Tenant

    existing = list(Tenant.objects.filter(slug__startswith="bench-").order_by("id").values_list("id", flat=True))
    if len(existing) >= tenants:
        return existing[:tenants]
    Tenant.objects.bulk_create(
        [Tenant(slug=f"bench-{i:05d}", name=f"Bench {i}") for i in range(len(existing), tenants)], batch_size=1000
    )
    ids = list(Tenant.objects.filter(slug__startswith="bench-").order_by("id").values_list("id", flat=True))
    plan, _ = Plan.objects.get_or_create(
        name="bench", defaults={"currency": "USD", "base_fee": "19.00", "included_tokens": 100_000}
    )
    change = MONTH + timedelta(days=15)
    for model, (inp, out, inp2, out2) in {
        "demo-llama": ("0.150000", "0.600000", "0.120000", "0.480000"),
        "big-model": ("3.000000", "15.000000", "2.500000", "12.500000"),
        "tiny": ("0.010000", "0.020000", "0.010000", "0.030000"),
    }.items():
        Price.objects.get_or_create(
            plan=plan, model_name=model, effective_from=MONTH - timedelta(days=31),
            defaults={"input_per_1m": inp, "output_per_1m": out},
        )  # fmt: skip
        Price.objects.get_or_create(
            plan=plan, model_name=model, effective_from=change, defaults={"input_per_1m": inp2, "output_per_1m": out2}
        )
    Subscription.objects.bulk_create(
        [Subscription(tenant_id=t, plan=plan, starts_at=MONTH - timedelta(days=31)) for t in ids], batch_size=1000
    )
    return ids


def bench_ingestion(events: int, page_size: int, tenant_ids: list[int], nodes: int = 1) -> dict[str, Any]:
    """`events` records split over `nodes` journals, pulled at once by `usage_ingest_all`."""
    from django.db import connection, transaction

    from billing.models import IngestCursor, UsageRecord
    from billing.services.ingestion import usage_ingest_all, usage_records_insert
    from wire.usage import JournalRecord

    journals = [_Pages(tenant_ids, events // nodes, page_size) for _ in range(nodes)]
    server, urls = _serve(journals)

    @dataclass
    class Node:
        name: str
        base_url: str

    run = uuid.uuid4().hex[:8]
    targets = [Node(f"bench-node-{run}-{i}", url) for i, url in enumerate(urls)]
    try:
        started = time.perf_counter()
        result = usage_ingest_all(nodes=targets, feed=False)
        elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()
    total = sum(len(j.records) for j in journals)
    assert not result.errors and result.inserted == total, result
    for node, journal in zip(targets, journals, strict=True):
        assert IngestCursor.objects.get(node_name=node.name).after_seq == len(journal.records)
    # The database part alone: the same records under fresh ids, no HTTP or JSON, one connection.
    records = journals[0].records
    fresh = [JournalRecord.model_validate({**r, "request_id": "db-" + r["request_id"]}) for r in records]
    started = time.perf_counter()
    for start in range(0, len(fresh), page_size):
        with transaction.atomic():
            usage_records_insert(fresh[start : start + page_size], node_name="bench-db")
    db_elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerecord")
    rows = UsageRecord.objects.count()
    UsageRecord.objects.all()._raw_delete(UsageRecord.objects.db)  # type: ignore[attr-defined]
    return {
        "nodes": nodes,
        "events": total,
        "page_size": page_size,
        "end_to_end_s": round(elapsed, 3),
        "end_to_end_events_per_s": round(total / elapsed),
        "db_only_events": len(fresh),
        "db_only_s": round(db_elapsed, 3),
        "db_only_events_per_s": round(len(fresh) / db_elapsed),
        "ledger_rows_after": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="ingestion rounds (the best is reported)")
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[1, 4], help="node journals pulled at once (events split over them)"
    )
    parser.add_argument("--tenants", type=int, default=1000, help="subscribed tenants the journals spread over")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = f"mmorch_bench_ledger_{os.getpid()}"
    db_url = _db_url(server, name)
    _admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        _setup_django(db_url)
        from django.core.management import call_command

        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        print(f"migrated in {time.perf_counter() - started:.1f}s", flush=True)
        tenant_ids = _fixtures(args.tenants)
        load_before = os.getloadavg()[0]
        ingestion = []
        for nodes in args.nodes:
            rounds = []
            for _ in range(args.rounds):
                rounds.append(bench_ingestion(args.events, args.page_size, tenant_ids, nodes))
                print("ingestion", json.dumps(rounds[-1]), flush=True)
            best = max(rounds, key=lambda r: r["end_to_end_events_per_s"])
            best["rounds"] = [r["end_to_end_events_per_s"] for r in rounds]
            best["db_rounds"] = [r["db_only_events_per_s"] for r in rounds]
            best["load_before"] = round(load_before, 2)
            ingestion.append(best)
        load_after = round(os.getloadavg()[0], 2)
        if not args.no_write:
            _write_results(ingestion, args.tenants, load_after, sys.argv[1:])
        if args.json:
            Path(args.json).write_text(json.dumps({"ingestion": ingestion}, indent=1))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _write_results(ingestion: list[dict[str, Any]], tenants: int, load_after: float, argv: list[str]) -> None:
    cpu = os.cpu_count()
    command = " ".join([".venv/bin/python -m bench.ledger", *argv])
    rows = "\n".join(
        f"| {r['nodes']} | end to end: HTTP pull + JSON + price + insert + rollups + cursor (best round) "
        f"| {r['events']:,} | {r['page_size']} | {r['end_to_end_s']} | **{r['end_to_end_events_per_s']:,}** |\n"
        f"| {r['nodes']} | database part only (price + insert + rollups per page, one connection) "
        f"| {r['db_only_events']:,} | {r['page_size']} | {r['db_only_s']} | {r['db_only_events_per_s']:,} |"
        for r in ingestion
    )
    rounds = "; ".join(
        f"{r['nodes']} node(s): {', '.join(f'{x:,}' for x in r['rounds'])} "
        f"(database part: {', '.join(f'{x:,}' for x in r['db_rounds'])})"
        for r in ingestion
    )
    text = f"""# Ledger ingestion benchmark results

Command: `{command}` (PostgreSQL from `DATABASE_URL`, a throwaway database per run)

Machine: {platform.machine()}, {cpu} CPU cores, Python {platform.python_version()},
run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. The journal server, the ingester and PostgreSQL share the cores
with whatever else the machine runs: 1-minute load average {ingestion[0]["load_before"]} before the
ingestion rounds, {load_after} after them.

## Ingestion (journal → ledger, priced, rolled up)

| nodes at once | what | events | page size | seconds | events/s |
|---:|---|---:|---:|---:|---:|
{rows}

Every round, events/s end to end: {rounds}.

Target: ≥ 10,000 events/s on one PostgreSQL.

Workload: every round serves fresh journals with new request ids (the events split evenly over
the nodes' journals, pulled at once by `usage_ingest_all`), spread over {tenants:,} subscribed
tenants and 3 models (2 % aborted), so almost every record also touches its own hourly and daily
rollup rows (the worst case for the rollup upsert). The ledger is emptied between rounds.
"Database part only" feeds one journal's records to `usage_records_insert` directly (no HTTP, no
JSON), one transaction per page.
"""
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
