"""`billing_run` over `--tenants` subscribed tenants and `--rows` ledger rows of one month.

Seeding is done by PostgreSQL itself: tenants and subscriptions in bulk, the ledger with one
INSERT ... SELECT over generate_series (3 models, a price change mid-month; neighbouring rows
belong to tenants far apart, as ingestion writes them, so no tenant range sits in a few pages),
with the ledger's secondary indexes dropped during the insert and built afterwards. Then
`billing_run` runs in a fresh process; reported: wall time, peak memory (VmHWM, reset after
start-up), and a no-op rerun.

    .venv/bin/python -m bench.billing [--tenants 5000] [--rows 1000000]
    .venv/bin/python -m bench.billing --tenants 50000 --rows 10000000      # the target size

DATABASE_URL names the PostgreSQL server; a throwaway database is made and dropped (`--keep`
keeps it, `--reuse NAME` bills an already seeded one again after deleting its invoices).
Results are printed and written to bench/billing/RESULTS.md with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.ledger.__main__ import DEFAULT_SERVER, MONTH, _admin_execute, _db_url, _fixtures, _setup_django

HERE = Path(__file__).resolve().parent
PERIOD = f"{MONTH.year:04d}-{MONTH.month:02d}"

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
INSERT INTO billing_usagerecord (request_id, client_request_id, tenant_id, key_id, model_name, model_version,
    node_name, journal_seq, prompt_tokens, completion_tokens, outcome, queue_ms, ttft_ms, duration_ms, started_at,
    finished_at, price_id, input_price_per_1m, output_price_per_1m, currency, cost, ingested_at, end_user, metadata,
    trace_id, engine_ms)
SELECT 'gen-' || g.i, 'gen-' || g.i, t.ids[1 + (g.i * 48271) %% t.n], NULL, pr.model_name, 'v1', 'bench-gen',
       g.i, g.p, g.c,
       CASE WHEN g.i %% 50 = 0 THEN 'aborted' ELSE 'stop' END, 1, 12, 180, g.ts, g.ts + interval '180 ms',
       CASE WHEN g.ts < %(change)s THEN pr.pre_id ELSE pr.post_id END,
       CASE WHEN g.ts < %(change)s THEN pr.pre_in ELSE pr.post_in END,
       CASE WHEN g.ts < %(change)s THEN pr.pre_out ELSE pr.post_out END,
       'USD',
       (g.p * CASE WHEN g.ts < %(change)s THEN pr.pre_in ELSE pr.post_in END
        + g.c * CASE WHEN g.ts < %(change)s THEN pr.pre_out ELSE pr.post_out END) * 0.000001,
       now(), 'user-' || g.i %% 1000, '{"team": "bench"}'::jsonb, md5(g.i::text), 150.0
FROM g, t, models
JOIN pr ON true
WHERE pr.model_name = models.names[1 + g.i %% 3]
"""

# The ledger's indexes that back no constraint: cheaper built once after the insert than row by row.
_SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes i
WHERE i.tablename = 'billing_usagerecord'
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
"""


def generate_ledger(rows: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_SECONDARY_INDEXES)
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # Seeding only: the generated rows name existing tenants and prices by construction.
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(
            GENERATE_SQL,
            {"change": MONTH + timedelta(days=15), "start": MONTH, "seconds": 31 * 86400, "rows": rows},
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("VACUUM ANALYZE billing_usagerecord")
    return time.perf_counter() - started


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


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
                "failed": len(result.failed),
                "invoices_in_db": Invoice.objects.count(),
                "billing_run_s": round(elapsed, 2),
                "rerun_s": round(rerun, 2),
                "rerun_issued": len(again.created),
                "rss_mib_at_start": round(rss_start / 1024, 1),
                "peak_rss_mib": round(peak / 1024, 1),
            }
        )
    )


def _seed(db_url: str, tenants: int, rows: int) -> float:
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    _fixtures(tenants)
    print(f"migrated, {tenants} tenants subscribed in {time.perf_counter() - started:.1f}s", flush=True)
    seconds = generate_ledger(rows)
    print(f"generated {rows} ledger rows in {seconds:.1f}s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.billing")
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the seeded database (its name is printed)")
    parser.add_argument("--reuse", metavar="NAME", help="bill an already seeded database again (its invoices go)")
    parser.add_argument("--billing-phase", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()
    if args.billing_phase:
        _setup_django(args.billing_phase)
        billing_phase()
        return

    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = args.reuse or f"mmorch_bench_billing_{os.getpid()}"
    db_url = _db_url(server, name)
    if not args.reuse:
        _admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        _setup_django(db_url)
        from django.db import connection, connections

        if args.reuse:
            with connection.cursor() as cursor:
                cursor.execute(
                    "TRUNCATE billing_invoiceline, billing_invoice, billing_invoicesequence, billing_billingrun CASCADE"
                )
                cursor.execute("DELETE FROM tenants_auditevent WHERE action = 'invoice.finalize'")
                cursor.execute("SELECT count(*), count(DISTINCT tenant_id) FROM billing_usagerecord")
                rows, tenants = cursor.fetchone()
            args.rows, args.tenants, gen_s = rows, tenants, 0.0
        else:
            gen_s = _seed(db_url, args.tenants, args.rows)
        connections.close_all()
        load_before = round(os.getloadavg()[0], 2)
        child = subprocess.run(
            [sys.executable, "-m", "bench.billing", "--billing-phase", db_url],
            capture_output=True, text=True, cwd=HERE.parent.parent,
        )  # fmt: skip
        if child.returncode != 0:
            sys.exit(f"billing phase failed:\n{child.stderr[-4000:]}")
        billing: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        billing.update(
            {
                "tenants": args.tenants,
                "ledger_rows": args.rows,
                "generate_s": round(gen_s, 1),
                "load_before": load_before,
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
        print("billing", json.dumps(billing), flush=True)
        if not args.no_write:
            _write_results(billing, sys.argv[1:])
        if args.json:
            Path(args.json).write_text(json.dumps({"billing": billing}, indent=1))
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep or args.reuse:
            print(f"kept database {name} (--reuse {name} bills it again)")
        else:
            _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _write_results(billing: dict[str, Any], argv: list[str]) -> None:
    command = " ".join([".venv/bin/python -m bench.billing", *argv])
    text = f"""# billing_run benchmark results

Command: `{command}` (PostgreSQL from `DATABASE_URL`, a throwaway database per run)

Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()},
run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; 1-minute load average {billing["load_before"]} before the
billing run, {billing["load_after"]} after it (PostgreSQL shares the cores).

One month of ledger rows over 3 models with a price change on the 16th; each tenant gets an invoice
with 12 usage lines (model x token kind x price), the base fee and the included-allowance
discount. `billing_run` runs in a fresh process: per chunk of tenants (`BILLING_RUN_CHUNK`) one
aggregate over their ledger rows, then one transaction per batch (`BILLING_RUN_BATCH`) that takes
the batch's numbers and writes its invoices, lines and audit events.

| what | value |
|---|---:|
| tenants / ledger rows | {billing["tenants"]:,} / {billing["ledger_rows"]:,} |
| seeding the ledger (generate_series, not timed below) | {billing["generate_s"]} s |
| invoices issued (failed) | {billing["invoices"]:,} ({billing["failed"]}) |
| `billing_run` wall time | **{billing["billing_run_s"]} s** |
| rerun (no-op) wall time | {billing["rerun_s"]} s, {billing["rerun_issued"]} issued |
| peak memory of the billing process during the run (VmHWM, reset before it) | **{billing["peak_rss_mib"]} MiB** (RSS after Django start-up: {billing["rss_mib_at_start"]} MiB) |

Target: 50,000 tenants x 10M ledger rows under 5 minutes, memory flat (bounded by the chunk).
"""  # noqa: E501
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
