"""Gateway overhead: the same request direct, through a bare Django pass-through, through the
gateway (authentication, quotas, routing all on) and through LiteLLM's proxy, with wrk at 1 and
32 connections. Writes bench/gateway_overhead/RESULTS.md.

    .venv/bin/python -m bench.gateway_overhead [--duration 10] [--workers 1] [--litellm /tmp/litellm-venv]

REDIS_URL set: quotas in Redis (one round trip to admit, one to settle); empty: in-process.
LiteLLM runs from its own virtual environment (never the project's); without one it is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BODY = '{"model":"demo-llama","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200: {last}")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Result:
    name: str
    connections: int
    p50_ms: float
    p99_ms: float
    rps: float
    errors: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(name: str, url: str, key: str, connections: int, duration: int, workdir: Path) -> Result:
    script = workdir / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    threads = 1 if connections == 1 else 2
    # Warm up (connection pools, key cache, routing snapshot), then measure.
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url], capture_output=True, check=True)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = ", ".join(
        x
        for x in [f"non-2xx {non2xx.group(1)}" if non2xx else "", socket_errors.group(1) if socket_errors else ""]
        if x
    )
    print(f"  {name:<18} c={connections:<3} p50={p50:.2f}ms p99={p99:.2f}ms rps={rps:.0f} {errors}", flush=True)
    return Result(name, connections, p50, p99, rps, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to measure")
    parser.add_argument("--litellm", default="/tmp/litellm-venv", help="virtual environment with litellm[proxy]")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        work = Path(tmp)
        backend_port, app_port, litellm_port = free_port(), free_port(), free_port()
        backend = f"http://127.0.0.1:{backend_port}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.gateway_overhead.settings",
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "REDIS_URL": os.environ.get("REDIS_URL", ""),
            "DJANGO_DEBUG": "false",
            "LOG_LEVEL": "WARNING",
            "BENCH_BACKEND_URL": backend,
            "PYTHONPATH": str(ROOT),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if env["REDIS_URL"]:
            import redis

            # Fresh database, fresh ids: drop quota counters an earlier run left for them (only those).
            client = redis.Redis.from_url(env["REDIS_URL"])
            for stale in client.scan_iter(match="mmorch:q:*", count=500):
                client.delete(stale)
        py = sys.executable
        results: list[Result] = []
        with process([py, "-m", "bench.gateway_overhead.backend", str(backend_port)], env, work / "backend.log"):
            wait_http(backend + "/ready")
            print("seeding the database ...", flush=True)
            key = subprocess.run(
                [py, "-m", "bench.gateway_overhead.seed", backend], env=env, cwd=ROOT, capture_output=True, text=True,
                check=True,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            for workers in args.workers:
                uvicorn = [
                    py, "-m", "uvicorn", "bench.gateway_overhead.asgi:application", "--host", "127.0.0.1",
                    "--port", str(app_port), "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                    "--log-level", "warning", "--workers", str(workers),
                ]  # fmt: skip
                app = f"http://127.0.0.1:{app_port}"
                with process(uvicorn, env, work / f"uvicorn-{workers}.log"):
                    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
                    wait_http(app + "/v1/chat/completions", data=BODY.encode(), headers=auth)
                    paths = [
                        ("direct", backend + "/v1/chat/completions"),
                        ("bare-django", app + "/bare/v1/chat/completions"),
                        ("bare-lean", app + "/lean/bare/v1/chat/completions"),
                        ("gateway", app + "/v1/chat/completions"),
                    ]
                    for connections in (1, 32):
                        for name, url in paths:
                            if name == "direct" and workers != args.workers[0]:
                                continue  # the backend alone does not depend on the workers
                            label = name if name == "direct" else f"{name} ({workers}w)"
                            results.append(wrk(label, url, key, connections, args.duration, work))
                app_port = free_port()
            litellm_bin = Path(args.litellm) / "bin" / "litellm"
            if litellm_bin.exists():
                config = work / "litellm.yaml"
                config.write_text(
                    "model_list:\n  - model_name: demo-llama\n    litellm_params:\n"
                    f"      model: openai/demo-llama\n      api_base: {backend}/v1\n      api_key: unused\n"
                )
                lenv = {**os.environ, "LITELLM_MASTER_KEY": "sk-bench-master", "LITELLM_LOG": "ERROR"}
                lenv.pop("DATABASE_URL", None)
                cmd = [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(litellm_port)]
                with process(cmd, lenv, work / "litellm.log"):
                    lurl = f"http://127.0.0.1:{litellm_port}/v1/chat/completions"
                    lauth = {"authorization": "Bearer sk-bench-master", "content-type": "application/json"}
                    wait_http(lurl, data=BODY.encode(), headers=lauth, timeout=180)
                    for connections in (1, 32):
                        results.append(wrk("litellm", lurl, "sk-bench-master", connections, args.duration, work))
            else:
                print(f"LiteLLM skipped: {litellm_bin} not found", flush=True)
        write_results(Path(args.output), results, args, bool(env["REDIS_URL"]), load_before)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=1))


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_results(path: Path, results: list[Result], args: argparse.Namespace, redis: bool, load_before: str) -> None:
    by = {(r.name, r.connections): r for r in results}
    lines = [
        "# Gateway overhead",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} with {os.cpu_count()} CPUs "
        f"(shared with the load generator and the backend), Python {platform.python_version()}. "
        f"Load average before / after: {load_before} / {_load()} (the machine is shared with other work).",
        "",
        "Command:",
        "",
        "```",
        f"REDIS_URL={'redis://127.0.0.1:6379/2' if redis else ''} .venv/bin/python -m bench.gateway_overhead "
        f"--duration {args.duration} --workers {' '.join(map(str, args.workers))}",
        "```",
        "",
        "The same POST /v1/chat/completions (non-streaming, fixed reply with usage) is sent with wrk to: the fixed "
        "backend directly; a bare Django async pass-through view (aiohttp upstream, no authentication, no quotas) "
        "served by Django's standard ASGI handler with the project's full middleware (`bare-django`, the floor the "
        "issue names) and by the gateway's lean ASGI lane (`bare-lean`); the gateway (key authentication, model "
        "access, quota admission and "
        f"settlement in {'Redis' if redis else 'the in-process backend'}, routing, signed forwarding); LiteLLM's "
        f"proxy (master key only, no database, its default single process). uvicorn with httptools and uvloop; "
        "`(Nw)` is the number of uvicorn workers. "
        "Added latency is the path's percentile minus the direct one.",
        "",
        "| path | connections | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        direct = by.get(("direct", r.connections))  # measured once, shared by every row
        added50 = f"{r.p50_ms - direct.p50_ms:.2f}" if direct and r.name != "direct" else ""
        added99 = f"{r.p99_ms - direct.p99_ms:.2f}" if direct and r.name != "direct" else ""
        lines.append(
            f"| {r.name} | {r.connections} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {added50} | {added99} "
            f"| {r.rps:.0f} | {r.errors} |"
        )
    lines += ["", "Against the targets:", ""]
    direct1 = by.get(("direct", 1))
    lite32, lite1 = by.get(("litellm", 32)), by.get(("litellm", 1))
    for workers in args.workers:
        gw1, gw32 = by.get((f"gateway ({workers}w)", 1)), by.get((f"gateway ({workers}w)", 32))
        bare32, lean32 = by.get((f"bare-django ({workers}w)", 32)), by.get((f"bare-lean ({workers}w)", 32))
        lines.append(f"{workers} worker(s):")
        lines.append("")
        if gw1 and direct1:
            lines.append(f"- added p50 at 1 connection: {gw1.p50_ms - direct1.p50_ms:.2f} ms (target ≤ 2 ms)")
            lines.append(f"- added p99 at 1 connection: {gw1.p99_ms - direct1.p99_ms:.2f} ms (target ≤ 10 ms)")
        if gw32:
            lines.append(f"- gateway at 32 connections: {gw32.rps:.0f} requests/s (target ≥ 1,000)")
        if gw32 and bare32:
            lines.append(f"- gateway / bare-django at 32 connections: {gw32.rps / bare32.rps:.2f} (target ≥ 0.8)")
        if gw32 and lean32:
            lines.append(f"- gateway / bare-lean (same lane, no work) at 32 connections: {gw32.rps / lean32.rps:.2f}")
        if gw32 and lite32:
            lines.append(f"- gateway / LiteLLM at 32 connections: {gw32.rps / lite32.rps:.1f}x the requests/s")
        if gw1 and lite1 and direct1:
            lines.append(
                f"- LiteLLM added p50 at 1 connection: {lite1.p50_ms - direct1.p50_ms:.2f} ms "
                f"(gateway: {gw1.p50_ms - direct1.p50_ms:.2f} ms)"
            )
        lines.append("")
    lines += [
        "Notes:",
        "",
        "- The machine is shared: other work runs beside the benchmark, so p99 values and their differences are "
        "noisy (a negative added p99 means the direct path's p99 was the worse one in that run). Re-run for "
        "fresh numbers; compare rows of the same run only.",
        "- `bare-django` pays a thread hop per request (WhiteNoise is sync-only middleware, and Django's request "
        "signals run their sync receivers in a thread); `gateway.asgi` serves /v1 without them, which is why the "
        "gateway beats that floor. `bare-lean` is the floor of the gateway's own lane.",
        "- Per request on the gateway's warm path: no database query, one Redis EVALSHA to admit and one to settle "
        "(auto-pipelined: calls made in the same event-loop turn share one write).",
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
