"""bench/gateway_overhead/RESULTS.md from one run's figures."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.gateway_overhead import tracing
from bench.gateway_overhead.harness import Result, load


@dataclass
class ColdResult:
    p50_ms: float
    p99_ms: float
    count: int
    statuses: dict[int, int] = field(default_factory=dict)
    warm_p50_ms: float = float("nan")  # the same keys sent again by the same client, once warm


@dataclass
class WorkerRun:
    workers: int
    cold: ColdResult
    peak_backends: int
    pool_limit: int  # DATABASE_POOL_MAX_SIZE x workers
    warm_checkouts: float  # pooled connections taken during the warm gateway runs


def _command(args: argparse.Namespace, lite: bool) -> str:
    parts = [
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/mmorch REDIS_URL=redis://127.0.0.1:6379/2",
        ".venv/bin/python -m bench.gateway_overhead",
        f"--duration {args.duration} --workers {' '.join(map(str, args.workers))} --keys {args.keys}",
        f"--tenants {args.tenants} --cold-keys {args.cold_keys} --pool-size {args.pool_size}",
    ]
    if lite:
        parts.append(f"--litellm {args.litellm}")
    return " ".join(parts)


def write_results(
    path: Path, args: argparse.Namespace, results: list[Result], runs: list[WorkerRun], lite: bool, load_before: str
) -> None:
    by = {(r.name, r.connections): r for r in results}
    direct1, direct32 = by.get(("direct", 1)), by.get(("direct", 32))
    lines = [
        "# Gateway overhead",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} with {os.cpu_count()} CPUs "
        f"(shared with the load generator and the backend), Python {platform.python_version()}. "
        f"Load average before / after: {load_before} / {load()}.",
        "",
        "Command:",
        "",
        "```",
        _command(args, lite),
        "```",
        "",
        f"PostgreSQL and Redis; {args.keys:,} inference keys over {args.tenants} tenants; every request takes the "
        "next key in the list (wrk cycles through all of them), so the key cache, the quota counters and the "
        "last-use notes work on 10,000 keys as in production. The same POST /v1/chat/completions "
        "(non-streaming, fixed reply with usage) goes to: the fixed backend directly; a bare Django async "
        "pass-through (aiohttp upstream, no authentication, no quotas) through Django's standard ASGI handler "
        "with the project's full middleware (`bare-django`) and through the gateway's lean lane (`bare-lean`); "
        "the gateway (key authentication, model access, quota admission and settlement in Redis, prompt "
        "count, routing, signed forwarding)"
        + ("; LiteLLM's proxy (master key only, no database, its default single process)" if lite else "")
        + ". uvicorn with httptools and uvloop; `(Nw)` is the number of uvicorn workers. Added latency is the "
        "path's percentile minus the direct one.",
        "",
        "Warm: after a warm-up pass over every key (with several workers, several passes on new connections "
        "so each worker sees each key). Cold: before it, each of the first "
        f"{args.cold_keys:,} keys sent once, one at a time, so each is a key-cache miss (one pooled query).",
        "",
        "| path | connections | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        direct = by.get(("direct", r.connections))
        added50 = f"{r.p50_ms - direct.p50_ms:.2f}" if direct and r.name != "direct" else ""
        added99 = f"{r.p99_ms - direct.p99_ms:.2f}" if direct and r.name != "direct" else ""
        lines.append(
            f"| {r.name} | {r.connections} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {added50} | {added99} "
            f"| {r.rps:.0f} | {r.errors} |"
        )
    lines += [
        "",
        "| workers | cold requests | cold p50 ms | cold p99 ms | cold added p50 ms | statuses | peak PostgreSQL "
        "backends | pool limit (size x workers) | pooled checkouts during the warm runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        added = f"{run.cold.p50_ms - direct1.p50_ms:.2f}" if direct1 else ""
        lines.append(
            f"| {run.workers} | {run.cold.count} | {run.cold.p50_ms:.2f} | {run.cold.p99_ms:.2f} | {added} "
            f"| {run.cold.statuses} | {run.peak_backends} | {run.pool_limit} | {run.warm_checkouts:.0f} |"
        )
    lines += ["", "Against the targets:", ""]
    lite32, lite1 = by.get(("litellm", 32)), by.get(("litellm", 1))
    for run in runs:
        w = run.workers
        gw1, gw32 = by.get((f"gateway ({w}w)", 1)), by.get((f"gateway ({w}w)", 32))
        bare32, lean32 = by.get((f"bare-django ({w}w)", 32)), by.get((f"bare-lean ({w}w)", 32))
        lines += [f"{w} worker(s):", ""]
        if gw1 and direct1:
            lines.append(f"- warm added p50 at 1 connection: {gw1.p50_ms - direct1.p50_ms:.2f} ms (target ≤ 2 ms)")
            lines.append(f"- warm added p99 at 1 connection: {gw1.p99_ms - direct1.p99_ms:.2f} ms")
        if direct1:
            lines.append(f"- cold added p50 at 1 connection: {run.cold.p50_ms - direct1.p50_ms:.2f} ms (target ≤ 3 ms)")
        if gw32:
            lines.append(f"- gateway at 32 connections: {gw32.rps:.0f} requests/s (target ≥ 1,000 at 1 worker)")
        if gw32 and lean32:
            lines.append(
                f"- gateway / bare-lean (same lane) at 32 connections: {gw32.rps / lean32.rps:.2f} (target ≥ 0.6)"
            )
        if gw32 and bare32:
            lines.append(f"- gateway / bare-django at 32 connections: {gw32.rps / bare32.rps:.2f}")
        if gw32 and lite32:
            lines.append(f"- gateway / LiteLLM at 32 connections: {gw32.rps / lite32.rps:.1f}x (target ≥ 25x)")
        if gw1 and lite1 and direct1:
            lines.append(f"- LiteLLM added p50 at 1 connection: {lite1.p50_ms - direct1.p50_ms:.2f} ms")
        lines.append(
            f"- peak PostgreSQL backends {run.peak_backends} for a pool limit of {run.pool_limit} "
            f"({args.pool_size} per worker)"
        )
        lines += tracing.summary_lines(by, w)
        lines.append("")
    if not lite:
        lines += ["LiteLLM: not measured in this run (no --litellm / BENCH_LITELLM given).", ""]
    if direct32:
        lines.append(
            f"The direct path gave {direct32.rps:.0f} requests/s at 32 connections: the ceiling of this machine."
        )
    lines += [
        "",
        "Notes:",
        "",
        "- The machine is shared: p99 values and their differences are noisy. Compare rows of the same run.",
        "- Pooled checkouts during the warm runs are cold lookups plus one per routing refresh (each worker "
        "reloads its routing snapshot every GATEWAY_REGISTRY_REFRESH_S, default 1 s); each worker reports its "
        "pool every few seconds, so the figure is approximate.",
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
