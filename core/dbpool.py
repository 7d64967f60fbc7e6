"""Prometheus metrics of the per-process PostgreSQL connection pool (psycopg 3's, through Django).

The pool lives in each process, so each process writes its own samples (multiprocess files when
PROMETHEUS_MULTIPROC_DIR is set) and /metrics adds them up: the gauges are live sums over the
running processes, the counters totals. Samples are taken by a daemon thread every
`SAMPLE_INTERVAL_S` once the process has opened the pool, and again by the process serving /metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from django.db import connections
from prometheus_client import Counter, Gauge

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0

POOL_MAX = Gauge(
    "mmorch_db_pool_max_connections",
    "Most connections the pools may open (sum over processes)",
    ["alias"],
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "mmorch_db_pool_connections",
    "Connections the pools hold now, busy or idle (sum over processes)",
    ["alias"],
    multiprocess_mode="livesum",
)
POOL_IDLE = Gauge(
    "mmorch_db_pool_idle_connections",
    "Connections idle in the pools now (sum over processes)",
    ["alias"],
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "mmorch_db_pool_waiting_requests",
    "Requests waiting for a pooled connection now (sum over processes)",
    ["alias"],
    multiprocess_mode="livesum",
)
POOL_REQUESTS = Counter("mmorch_db_pool_requests", "Connections taken from the pools", ["alias"])
POOL_WAITS = Counter("mmorch_db_pool_waits", "Connections that had to wait for a free one", ["alias"])
POOL_WAIT_SECONDS = Counter("mmorch_db_pool_wait_seconds", "Time spent waiting for a pooled connection", ["alias"])
POOL_TIMEOUTS = Counter(
    "mmorch_db_pool_timeouts", "Requests that gave up waiting for a connection (or were refused)", ["alias"]
)
POOL_OPENED = Counter("mmorch_db_pool_connections_opened", "Connections the pools opened to the server", ["alias"])
POOL_LOST = Counter("mmorch_db_pool_connections_lost", "Pooled connections found broken", ["alias"])

_lock = threading.Lock()
_sampler_pid: int | None = None


def _pools() -> dict[str, Any]:
    """The pools this process has created, by alias (none on SQLite or before the first query)."""
    found: dict[str, Any] = {}
    for alias in connections:
        pools = getattr(type(connections[alias]), "_connection_pools", None)
        if pools and alias in pools:
            found[alias] = pools[alias]
    return found


def db_pool_stats(alias: str = "default") -> dict[str, int] | None:
    """The pool's current figures (psycopg_pool's names), or None when this process has no pool."""
    pool = _pools().get(alias)
    return dict(pool.get_stats()) if pool is not None else None


def db_pool_sample() -> None:
    """Copies this process's pool figures into the metrics (counters by what happened since the last call)."""
    with _lock:
        for alias, pool in _pools().items():
            stats = pool.pop_stats()  # gauges as they are now, counters since the last pop
            POOL_MAX.labels(alias).set(stats.get("pool_max", 0))
            POOL_SIZE.labels(alias).set(stats.get("pool_size", 0))
            POOL_IDLE.labels(alias).set(stats.get("pool_available", 0))
            POOL_WAITING.labels(alias).set(stats.get("requests_waiting", 0))
            POOL_REQUESTS.labels(alias).inc(stats.get("requests_num", 0))
            POOL_WAITS.labels(alias).inc(stats.get("requests_queued", 0))
            POOL_WAIT_SECONDS.labels(alias).inc(stats.get("requests_wait_ms", 0) / 1000)
            POOL_TIMEOUTS.labels(alias).inc(stats.get("requests_errors", 0))
            POOL_OPENED.labels(alias).inc(stats.get("connections_num", 0))
            POOL_LOST.labels(alias).inc(stats.get("connections_lost", 0))


def _sample_forever() -> None:
    while True:
        time.sleep(SAMPLE_INTERVAL_S)
        try:
            db_pool_sample()
        except Exception:  # a metric must never take the process down
            logger.debug("db pool metrics: sampling failed", exc_info=True)


def db_pool_sampler_start(**_: Any) -> None:
    """Starts this process's sampler once (connection_created receiver; a forked child starts its own)."""
    global _sampler_pid
    if _sampler_pid == os.getpid() or not _pools():
        return
    with _lock:
        if _sampler_pid == os.getpid():
            return
        _sampler_pid = os.getpid()
    threading.Thread(target=_sample_forever, name="db-pool-metrics", daemon=True).start()
