"""key_authenticate warm and cold, p50/p99, against PostgreSQL and Redis.

    .venv/bin/python -m bench.key_auth [--keys 200] [--rounds 5] [--warm-calls 200] [--write]

Works in a throwaway database (`mmorch_bench_keys`, created and dropped here) on the server of
DATABASE_URL (default postgres://postgres@127.0.0.1:5432/mmorch); REDIS_URL (default
redis://127.0.0.1:6379/0) carries the key version. `--write` stores the table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

BENCH_DB = "mmorch_bench_keys"
HERE = Path(__file__).resolve().parent


def _server_url(database_url: str, name: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _admin(database_url: str, sql: str) -> None:
    with psycopg.connect(_server_url(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run(keys: int, rounds: int, warm_calls: int, redis_url: str) -> dict[str, list[float]]:
    from tenants import services
    from tests import factories

    os.environ["REDIS_URL"] = redis_url
    from django.conf import settings

    settings.REDIS_URL = redis_url
    services.key_cache_reset()
    tenant = factories.tenant(factories.unique("bench-"), requests_per_minute=600)
    owner = factories.member(tenant, "owner")
    raws = [factories.inference_key(tenant, owner, name=f"bench {i}")[1] for i in range(keys)]
    cache = services.key_cache()
    cold: list[float] = []
    warm: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        cache.clear()
        cache.current_version()  # the version read is not part of a key lookup
        for raw in raws:
            started = clock()
            context = services.key_authenticate(raw)
            cold.append((clock() - started) / 1000)
            assert context is not None
        for _ in range(warm_calls):
            for raw in raws:
                started = clock()
                services.key_authenticate(raw)
                warm.append((clock() - started) / 1000)
    return {"cold": cold, "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm-calls", type=int, default=100, help="warm calls per key per round")
    parser.add_argument("--write", action="store_true", help="write the table to bench/key_auth/RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mmorch")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    _admin(database_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    _admin(database_url, f'CREATE DATABASE "{BENCH_DB}"')
    try:
        os.environ["DATABASE_URL"] = _server_url(database_url, BENCH_DB)
        os.environ["REDIS_URL"] = redis_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        os.environ.setdefault("AXES_ENABLED", "false")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", "tenants", verbosity=0)
        results = {"PostgreSQL + Redis": _run(args.keys, args.rounds, args.warm_calls, redis_url)}
        results["PostgreSQL, in-process version (no Redis)"] = _run(args.keys, args.rounds, args.warm_calls, "")
    finally:
        from django.db import connections

        connections.close_all()
        _admin(database_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')

    lines = [
        "| setup | path | calls | p50 (µs) | p99 (µs) | mean (µs) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for setup, runs in results.items():
        for path in ("warm", "cold"):
            samples = runs[path]
            lines.append(
                f"| {setup} | {path} | {len(samples)} | {_percentile(samples, 0.5):.1f} | "
                f"{_percentile(samples, 0.99):.1f} | {statistics.fmean(samples):.1f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.json:
        figures = {
            setup: {
                path: {
                    "calls": len(runs[path]),
                    "p50_us": _percentile(runs[path], 0.5),
                    "p99_us": _percentile(runs[path], 0.99),
                    "mean_us": statistics.fmean(runs[path]),
                }
                for path in ("warm", "cold")
            }
            for setup, runs in results.items()
        }
        Path(args.json).write_text(json.dumps({"results": figures}, indent=1))
    if args.write:
        command = "DATABASE_URL=... REDIS_URL=... .venv/bin/python -m bench.key_auth " + " ".join(sys.argv[1:])
        (HERE / "RESULTS.md").write_text(
            "# key_authenticate latency\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, the CPUs shared with other work (cold figures are\n"
            "noisy: they are one PostgreSQL round trip each). Target: warm p50 <= 50 µs.\n\n"
            "Warm: the key is in the process's cache (a SHA-256, a dict lookup and a clock check; the\n"
            "global key version is re-read from Redis at most every 0.25 s, and that read is included\n"
            "in the samples where it falls). Cold: the cache is empty, one PostgreSQL query.\n\n"
            f"{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
