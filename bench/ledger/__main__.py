"""Ledger benchmarks against PostgreSQL, in a throwaway database that is dropped afterwards.

1. Ingestion: a node's journal served over HTTP in the inference plane's format (pages of
   `--page-size`), pulled by `usage_ingest_node` into the ledger with prices and rollups.
   Reported: events/s end to end, and events/s of the database part alone.
2. Billing: `--tenants` tenants and `--rows` ledger rows in one month (made with
   generate_series, a price change mid-month), then `billing_run`. Reported: wall time and
   peak memory (max RSS of a fresh process that only runs the billing).

    .venv/bin/python -m bench.ledger [--events 100000] [--tenants 1000] [--rows 1000000]

DATABASE_URL names the PostgreSQL server (its database is not touched); results are printed
and written to bench/ledger/RESULTS.md with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import uuid
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
                }
            )
        for start in range(0, events, page_size):
            chunk = records[start : start + page_size]
            next_after = chunk[-1]["seq"]
            body = {"records": chunk, "next_after": next_after, "has_more": next_after < events}
            self.pages[start] = json.dumps(body).encode()
        self.empty = json.dumps({"records": [], "next_after": events, "has_more": False}).encode()
        self.records = records


def _serve(pages: _Pages) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            after = int(parse_qs(urlsplit(self.path).query)["after"][0])
            body = pages.pages.get(after, pages.empty)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


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


def bench_ingestion(events: int, page_size: int, tenant_ids: list[int]) -> dict[str, Any]:
    from django.db import connection, transaction

    from billing.models import IngestCursor, UsageRecord
    from billing.services.ingestion import usage_ingest_node, usage_records_insert
    from wire.usage import JournalRecord

    pages = _Pages(tenant_ids, events, page_size)
    server, url = _serve(pages)

    class Node:
        name = f"bench-node-{uuid.uuid4().hex[:8]}"
        base_url = url

    try:
        started = time.perf_counter()
        result = usage_ingest_node(Node(), page_size=page_size)
        elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()
    assert result.inserted == events, result
    assert IngestCursor.objects.get(node_name=Node.name).after_seq == events
    # The database part alone: the same records under fresh ids, no HTTP or JSON.
    fresh = [JournalRecord.model_validate({**r, "request_id": "db-" + r["request_id"]}) for r in pages.records]
    started = time.perf_counter()
    for start in range(0, len(fresh), page_size):
        with transaction.atomic():
            usage_records_insert(fresh[start : start + page_size], node_name="bench-db")
    db_elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerecord")
    total = UsageRecord.objects.count()
    UsageRecord.objects.all()._raw_delete(UsageRecord.objects.db)  # type: ignore[attr-defined]
    return {
        "events": events,
        "page_size": page_size,
        "end_to_end_s": round(elapsed, 3),
        "end_to_end_events_per_s": round(events / elapsed),
        "db_only_s": round(db_elapsed, 3),
        "db_only_events_per_s": round(events / db_elapsed),
        "ledger_rows_after": total,
    }


# --- 2. billing run ----------------------------------------------------------------------------
GENERATE_SQL = """
WITH t AS (SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM tenants_tenant WHERE slug LIKE 'bench-%%'),
pr AS (
    SELECT model_name,
           max(id) FILTER (WHERE effective_from < %(change)s) AS pre_id,
           max(input_per_1m) FILTER (WHERE effective_from < %(change)s) AS pre_in,
           max(output_per_1m) FILTER (WHERE effective_from < %(change)s) AS pre_out,
           max(id) FILTER (WHERE effective_from = %(change)s) AS post_id,
           max(input_per_1m) FILTER (WHERE effective_from = %(change)s) AS post_in,
           max(output_per_1m) FILTER (WHERE effective_from = %(change)s) AS post_out
    FROM billing_price GROUP BY model_name
),
models AS (SELECT array_agg(model_name ORDER BY model_name) AS names FROM pr),
g AS (
    SELECT s AS i,
           20 + (s * 7919) %% 2000 AS p,
           (s * 104729) %% 900 AS c,
           %(start)s::timestamptz + ((s::bigint * 2654435761) %% %(seconds)s) * interval '1 second' AS ts
    FROM generate_series(1::bigint, %(rows)s::bigint) AS s
)
INSERT INTO billing_usagerecord (request_id, tenant_id, key_id, model_name, model_version, node_name, journal_seq,
    prompt_tokens, completion_tokens, outcome, queue_ms, ttft_ms, duration_ms, started_at, finished_at, price_id,
    input_price_per_1m, output_price_per_1m, currency, cost, ingested_at,
    client_request_id, end_user, metadata, trace_id, engine_ms)
SELECT 'gen-' || g.i, t.ids[1 + g.i %% t.n], NULL, pr.model_name, 'v1', 'bench-gen', g.i, g.p, g.c,
       CASE WHEN g.i %% 50 = 0 THEN 'aborted' ELSE 'stop' END, 1, 12, 180, g.ts, g.ts + interval '180 ms',
       CASE WHEN g.ts < %(change)s THEN pr.pre_id ELSE pr.post_id END,
       CASE WHEN g.ts < %(change)s THEN pr.pre_in ELSE pr.post_in END,
       CASE WHEN g.ts < %(change)s THEN pr.pre_out ELSE pr.post_out END,
       'USD',
       (g.p * CASE WHEN g.ts < %(change)s THEN pr.pre_in ELSE pr.post_in END
        + g.c * CASE WHEN g.ts < %(change)s THEN pr.pre_out ELSE pr.post_out END) / 1000000,
       now(),
       'gen-' || g.i, '', '{}'::jsonb, '', 0
FROM g, t, models
JOIN pr ON true
WHERE pr.model_name = models.names[1 + g.i %% 3]
"""


def generate_ledger(rows: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            GENERATE_SQL,
            {"change": MONTH + timedelta(days=15), "start": MONTH, "seconds": 31 * 86400, "rows": rows},
        )
        cursor.execute("ANALYZE billing_usagerecord")
    return time.perf_counter() - started


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def billing_phase() -> None:
    """Runs in a fresh process: billing_run only, then prints time and memory as JSON."""
    from billing.models import Invoice
    from billing.services.invoices import billing_run

    rss_start = _status_kib("VmRSS")
    # Reset the peak-RSS mark so it shows the billing run, not the imports before it.
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    result = billing_run(period=PERIOD)
    elapsed = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    started = time.perf_counter()
    again = billing_run(period=PERIOD)
    rerun = time.perf_counter() - started
    print(
        json.dumps(
            {
                "invoices": len(result.created),
                "invoices_in_db": Invoice.objects.count(),
                "billing_run_s": round(elapsed, 2),
                "rerun_s": round(rerun, 2),
                "rerun_issued": len(again.created),
                "rss_mib_at_start": round(rss_start / 1024, 1),
                "peak_rss_mib": round(peak / 1024, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="ingestion rounds (the best is reported)")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--billing-phase", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()
    if args.billing_phase:
        _setup_django(args.billing_phase)
        billing_phase()
        return

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
        rounds = []
        for _ in range(args.rounds):
            rounds.append(bench_ingestion(args.events, args.page_size, tenant_ids))
            print("ingestion", json.dumps(rounds[-1]), flush=True)
        ingestion = max(rounds, key=lambda r: r["end_to_end_events_per_s"])
        ingestion["rounds"] = [r["end_to_end_events_per_s"] for r in rounds]
        ingestion["db_rounds"] = [r["db_only_events_per_s"] for r in rounds]
        ingestion["load_before"] = round(load_before, 2)
        gen_s = generate_ledger(args.rows)
        print(f"generated {args.rows} ledger rows in {gen_s:.1f}s", flush=True)
        from django.db import connections

        connections.close_all()
        child = subprocess.run(
            [sys.executable, "-m", "bench.ledger", "--billing-phase", db_url],
            capture_output=True, text=True, check=True, cwd=HERE.parent.parent,
        )  # fmt: skip
        billing = json.loads(child.stdout.strip().splitlines()[-1])
        billing.update({"tenants": args.tenants, "ledger_rows": args.rows, "generate_s": round(gen_s, 1),
                        "load_after": round(os.getloadavg()[0], 2)})  # fmt: skip
        print("billing", json.dumps(billing), flush=True)
        if not args.no_write:
            _write_results(ingestion, billing, sys.argv[1:])
        if args.json:
            Path(args.json).write_text(json.dumps({"ingestion": ingestion, "billing": billing}, indent=1))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _write_results(ingestion: dict[str, Any], billing: dict[str, Any], argv: list[str]) -> None:
    cpu = os.cpu_count()
    command = " ".join([".venv/bin/python -m bench.ledger", *argv])
    text = f"""# Ledger benchmark results

Command: `{command}` (PostgreSQL from `DATABASE_URL`, a throwaway database per run)

Machine: {platform.machine()}, {cpu} CPU cores, Python {platform.python_version()},
run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. The journal server, the ingester and PostgreSQL share the cores
with whatever else the machine runs: 1-minute load average {ingestion["load_before"]} before the ingestion
rounds, {billing["load_after"]} after the billing run.

## Ingestion (journal → ledger, priced, rolled up)

| what | events | page size | seconds | events/s |
|---|---:|---:|---:|---:|
| end to end: HTTP pull + JSON + price + insert + rollups + cursor (best round) | {ingestion["events"]} | {ingestion["page_size"]} | {ingestion["end_to_end_s"]} | **{ingestion["end_to_end_events_per_s"]:,}** |
| database part only (price + insert + rollups per page), same round | {ingestion["events"]} | {ingestion["page_size"]} | {ingestion["db_only_s"]} | {ingestion["db_only_events_per_s"]:,} |

Every round, events/s end to end: {", ".join(f"{r:,}" for r in ingestion["rounds"])}; database part only:
{", ".join(f"{r:,}" for r in ingestion["db_rounds"])}.

Target: ≥ 10,000 events/s on one PostgreSQL.

Workload: every round serves a fresh journal of {ingestion["events"]:,} records with new request ids, spread
over {billing["tenants"]:,} subscribed tenants and 3 models (2 % aborted), so almost every record also
touches its own hourly and daily rollup rows (the worst case for the rollup upsert). The ledger is
emptied between rounds. "Database part only" feeds the same records to `usage_records_insert`
directly (no HTTP, no JSON), one transaction per page.

## billing_run over {billing["tenants"]:,} tenants and {billing["ledger_rows"]:,} ledger rows

One month of ledger rows over 3 models with a price change on the 16th; each tenant gets an invoice
with 12 usage lines (model x token kind x price), the base fee and the included-allowance
discount. `billing_run` runs in a fresh process (one aggregate query over the month, then one
transaction per tenant that writes the invoice, its lines and its number).

| what | value |
|---|---:|
| ledger rows generated (generate_series, not timed below) | {billing["ledger_rows"]:,} in {billing["generate_s"]} s |
| invoices issued | {billing["invoices"]:,} |
| `billing_run` wall time | **{billing["billing_run_s"]} s** |
| rerun (no-op) wall time | {billing["rerun_s"]} s, {billing["rerun_issued"]} issued |
| peak memory of the billing process during the run (VmHWM, reset before it) | **{billing["peak_rss_mib"]} MiB** (RSS after Django start-up: {billing["rss_mib_at_start"]} MiB) |
"""  # noqa: E501
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
