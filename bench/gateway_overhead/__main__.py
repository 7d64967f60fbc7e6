"""Gateway overhead as production runs it: PostgreSQL and Redis, KEYS keys (default 10,000) over
many tenants, each request with the next key in the list. The same request is sent direct, through
a bare Django pass-through (full stack and the gateway's lean lane) and through the gateway
(authentication, quotas, prompt count, routing), at 1 and 32 connections, per uvicorn worker count.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mmorch REDIS_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python -m bench.gateway_overhead [--duration 10] [--workers 1 2] [--keys 10000] \\
        [--litellm /path/to/litellm-venv]

Per worker count: a cold pass first (each of --cold-keys keys sent once, one at a time: the key is
in no process's cache, so this is the cold lookup), then a warm-up over every key, then wrk cycling
through all keys (warm). Peak PostgreSQL backends on the benchmark's database are reported beside
the pool's limit. LiteLLM's proxy is measured when --litellm (or BENCH_LITELLM) names a virtual
environment with `litellm[proxy]`; named and missing, the benchmark stops with an error.
Writes bench/gateway_overhead/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from pathlib import Path

from bench.gateway_overhead import tracing
from bench.gateway_overhead.harness import (
    BODY,
    BackendWatch,
    Result,
    database_recreate,
    free_port,
    load,
    percentile,
    process,
    timed_requests,
    wait_http,
    wrk,
    wrk_script,
)
from bench.gateway_overhead.report import ColdResult, WorkerRun, write_results

HERE = Path(__file__).resolve().parent
BENCH_DB = "mmorch_bench_gateway"


def _pool_checkouts(app: str) -> float:
    """mmorch_db_pool_requests_total over every worker (each samples its pool every few seconds)."""
    with urllib.request.urlopen(app + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("mmorch_db_pool_requests_total")
    )


def _litellm_bin(option: str) -> Path | None:
    if not option:
        return None
    binary = Path(option) / "bin" / "litellm"
    if not binary.exists():
        sys.exit(
            f"LiteLLM was asked for ({option}) but {binary} does not exist. Make it with:\n"
            f"  python3 -m venv {option} && {option}/bin/pip install 'litellm[proxy]'\n"
            "or leave out --litellm / BENCH_LITELLM to measure without it."
        )
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to measure")
    parser.add_argument("--keys", type=int, default=10_000, help="inference keys, cycled through")
    parser.add_argument("--tenants", type=int, default=100, help="tenants the keys are spread over")
    parser.add_argument("--cold-keys", type=int, default=2000, help="keys timed one at a time on first use")
    parser.add_argument("--warm-rounds", type=int, default=0, help="warm-up passes over every key (0: by workers)")
    parser.add_argument("--pool-size", type=int, default=8, help="DATABASE_POOL_MAX_SIZE of each worker")
    parser.add_argument(
        "--litellm", default=os.environ.get("BENCH_LITELLM", ""), help="virtual environment with litellm[proxy]"
    )
    parser.add_argument("--tracing", action="store_true", help="also measure the gateway with tracing on")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    server_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        sys.exit("set DATABASE_URL (a PostgreSQL server; the benchmark makes its own database) and REDIS_URL")
    if args.cold_keys >= args.keys:
        sys.exit("--cold-keys must be smaller than --keys")
    litellm = _litellm_bin(args.litellm)

    load_before = load()
    bench_url = database_recreate(server_url, BENCH_DB)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
            runs, results, lite = _measure(args, Path(tmp), bench_url, redis_url, litellm)
    finally:
        database_recreate(server_url, BENCH_DB, drop_only=True)
    write_results(Path(args.output), args, results, runs, lite, load_before)
    if args.json:
        figures = {"results": [asdict(r) for r in results], "workers": [asdict(run) for run in runs]}
        Path(args.json).write_text(json.dumps(figures, indent=1))


def _redis_clean(redis_url: str) -> None:
    import redis

    # Fresh database, fresh ids: drop quota counters and key marks an earlier run left (only those).
    client = redis.Redis.from_url(redis_url)
    for pattern in ("mmorch:q:*", "mmorch:{keys-used}*"):
        for stale in client.scan_iter(match=pattern, count=500):
            client.delete(stale)


def _measure(
    args: argparse.Namespace, work: Path, bench_url: str, redis_url: str, litellm: Path | None
) -> tuple[list[WorkerRun], list[Result], bool]:
    backend_port, app_port = free_port(), free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.gateway_overhead.settings",
        "DATABASE_URL": bench_url,
        "REDIS_URL": redis_url,
        "DATABASE_POOL_MAX_SIZE": str(args.pool_size),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "BENCH_BACKEND_URL": backend,
        "PYTHONPATH": str(HERE.parents[1]),
    }
    _redis_clean(redis_url)
    py = sys.executable
    results: list[Result] = []
    runs: list[WorkerRun] = []
    keys_file = work / "keys.txt"
    with process([py, "-m", "bench.gateway_overhead.backend", str(backend_port)], env, work / "backend.log"):
        wait_http(backend + "/ready")
        print(f"seeding {args.keys} keys over {args.tenants} tenants ...", flush=True)
        seed = [py, "-m", "bench.gateway_overhead.seed", backend, str(keys_file), "--keys", str(args.keys),
                "--tenants", str(args.tenants)]  # fmt: skip
        import subprocess

        subprocess.run(seed, env=env, check=True)
        keys = keys_file.read_text().split()
        script = wrk_script(work, "cycle", keys_file)
        for connections in (1, 32):
            results.append(wrk("direct", backend + "/v1/chat/completions", script, connections, args.duration))
        for workers in args.workers:
            runs.append(_measure_workers(args, work, env, app_port, workers, keys, script, results))
            app_port = free_port()
        lite = False
        if litellm is not None:
            _measure_litellm(litellm, backend, work, args.duration, results)
            lite = True
    return runs, results, lite


def _measure_workers(
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    port: int,
    workers: int,
    keys: list[str],
    script: Path,
    results: list[Result],
) -> WorkerRun:
    metrics_dir = work / f"metrics-{workers}"
    metrics_dir.mkdir()
    wenv = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    uvicorn = [
        sys.executable, "-m", "uvicorn", "bench.gateway_overhead.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--http", "httptools", "--loop", "uvloop", "--no-access-log",
        "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    app = f"http://127.0.0.1:{port}"
    gateway = app + "/v1/chat/completions"
    rounds = args.warm_rounds or (1 if workers == 1 else 5)

    def warm_up(url: str) -> None:
        for _ in range(rounds):
            # New connections spread the keys over the workers (a kept-alive one stays on one).
            timed_requests(url, keys, concurrency=32, fresh_connections=workers > 1)

    with process(uvicorn, wenv, work / f"uvicorn-{workers}.log"):
        watch = BackendWatch(env["DATABASE_URL"])
        watch.start()
        auth = {"authorization": f"Bearer {keys[0]}", "content-type": "application/json"}
        wait_http(gateway, data=BODY.encode(), headers=auth)
        print(f"{workers} worker(s): cold pass over {args.cold_keys} keys ...", flush=True)
        cold_samples, cold_status = timed_requests(gateway, keys[1 : 1 + args.cold_keys])
        print(f"  warm-up: {rounds} pass(es) over {len(keys)} keys ...", flush=True)
        warm_up(gateway)
        # The same keys, the same client, now warm: what the cold pass paid beyond a warm request.
        warm_samples, _ = timed_requests(gateway, keys[1 : 1 + args.cold_keys])
        before = _pool_checkouts(app)
        for connections in (1, 32):
            results.append(wrk(f"gateway ({workers}w)", gateway, script, connections, args.duration, warmup=0))
        checkouts = _pool_checkouts(app) - before
        for connections in (1, 32):
            for name, path in (
                ("bare-django", "/bare/v1/chat/completions"),
                ("bare-lean", "/lean/bare/v1/chat/completions"),
            ):
                results.append(wrk(f"{name} ({workers}w)", app + path, script, connections, args.duration))
        peak = watch.stop()
    if args.tracing:  # the same gateway again, exporting spans (bench/gateway_overhead/tracing.py)
        results += tracing.measure_traced(
            workers=workers, uvicorn=uvicorn, port=free_port(), env=wenv, key=keys[0], body=BODY.encode(),
            script=script, duration=args.duration, work=work, process=process, wait_http=wait_http, wrk=wrk,
            warm_up=warm_up,
        )  # fmt: skip
    cold = ColdResult(
        p50_ms=percentile(cold_samples, 0.5), p99_ms=percentile(cold_samples, 0.99), count=len(cold_samples),
        statuses=cold_status, warm_p50_ms=percentile(warm_samples, 0.5),
    )  # fmt: skip
    print(f"  cold: p50={cold.p50_ms:.2f}ms p99={cold.p99_ms:.2f}ms (same keys warm: p50={cold.warm_p50_ms:.2f}ms) "
          f"{cold_status}; peak backends {peak}", flush=True)  # fmt: skip
    return WorkerRun(workers, cold, peak, args.pool_size * workers, checkouts)


def _measure_litellm(binary: Path, backend: str, work: Path, duration: int, results: list[Result]) -> None:
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: demo-llama\n    litellm_params:\n"
        f"      model: openai/demo-llama\n      api_base: {backend}/v1\n      api_key: unused\n"
    )
    lenv = {**os.environ, "LITELLM_MASTER_KEY": "sk-bench-master", "LITELLM_LOG": "ERROR"}
    lenv.pop("DATABASE_URL", None)
    cmd = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with process(cmd, lenv, work / "litellm.log"):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        auth = {"authorization": "Bearer sk-bench-master", "content-type": "application/json"}
        wait_http(url, data=BODY.encode(), headers=auth, timeout=180)
        master = work / "litellm-key.txt"
        master.write_text("sk-bench-master\n")
        script = wrk_script(work, "litellm", master)
        for connections in (1, 32):
            results.append(wrk("litellm", url, script, connections, duration))


if __name__ == "__main__":
    main()
