"""What the gateway benchmarks share: processes, a throwaway PostgreSQL database, wrk with a key
set it cycles through, sequential timed requests, and a watch on PostgreSQL's backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[2]
BODY = '{"model":"demo-llama","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


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


# --- PostgreSQL ------------------------------------------------------------------------------------
def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def database_recreate(server_url: str, name: str, *, drop_only: bool = False) -> str:
    """Drops the benchmark's database (and makes it again, empty); returns its URL."""
    with psycopg.connect(database_url(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


class BackendWatch(threading.Thread):
    """The most backends connected to one database at once (sampled every few ms), not counting
    the watch's own connection."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._conn = psycopg.connect(url, autocommit=True)
        self._db = self._conn.info.dbname
        self._me = self._conn.info.backend_pid
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s"
        while not self._done.is_set():
            row = self._conn.execute(query, [self._db, self._me]).fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            time.sleep(0.005)

    def stop(self) -> int:
        self._done.set()
        self.join(10)
        self._conn.close()
        return self.peak


# --- wrk -------------------------------------------------------------------------------------------
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


def wrk_script(workdir: Path, name: str, keys_file: Path) -> Path:
    """A wrk script that sends BODY with each request's key taken in turn from keys_file (each
    thread starts at its own place in the list)."""
    script = workdir / f"{name}.lua"
    script.write_text(
        "local keys = {}\n"
        f'for line in io.lines("{keys_file}") do keys[#keys + 1] = line end\n'
        "local threads = 0\n"
        "function setup(thread) threads = threads + 1; thread:set('start', threads * 7919) end\n"
        "local requests = {}\n"
        "local i = 0\n"
        "function init(args)\n"
        "  for k = 1, #keys do\n"
        "    requests[k] = wrk.format('POST', nil, {['Content-Type'] = 'application/json',\n"
        "      ['Authorization'] = 'Bearer ' .. keys[k]}, wrk.body)\n"
        "  end\n"
        "  i = (start or 0) % #keys\n"
        "end\n"
        "function request()\n"
        "  i = i % #keys + 1\n"
        "  return requests[i]\n"
        "end\n"
    )
    return script


def wrk(name: str, url: str, script: Path, connections: int, duration: int, *, warmup: int = 2) -> Result:
    threads = 1 if connections == 1 else 2
    body_script = script.with_name(script.stem + "-body.lua")
    body_script.write_text(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\n" + script.read_text())
    if warmup:
        subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{warmup}s", "-s", str(body_script), url],
                       capture_output=True, check=True)  # fmt: skip
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(body_script), url],
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
    print(f"  {name:<22} c={connections:<3} p50={p50:.2f}ms p99={p99:.2f}ms rps={rps:.0f} {errors}", flush=True)
    return Result(name, connections, p50, p99, rps, errors)


# --- timed requests with a fresh key each ------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _timed(
    url: str, keys: list[str], *, method: str, body: bytes | None, concurrency: int, fresh_connections: bool
) -> tuple[list[float], dict[int, int]]:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=fresh_connections)
    samples: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                key = queue.get_nowait()
                headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
                started = time.perf_counter()
                async with session.request(method, url, data=body, headers=headers) as response:
                    await response.read()
                samples.append((time.perf_counter() - started) * 1000)
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, statuses


def timed_requests(
    url: str,
    keys: list[str],
    *,
    method: str = "POST",
    body: bytes | None = BODY.encode(),
    concurrency: int = 1,
    fresh_connections: bool = False,
) -> tuple[list[float], dict[int, int]]:
    """Each key once, `concurrency` at a time: latencies in ms and the count of each status."""
    return asyncio.run(
        _timed(url, keys, method=method, body=body, concurrency=concurrency, fresh_connections=fresh_connections)
    )
