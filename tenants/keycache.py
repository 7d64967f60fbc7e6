"""The per-process cache behind `key_authenticate`.

Entries are keyed by the SHA-256 digest of the raw key and tagged with the global key
version that was current before the row was read. Any change that can make a cached key
wrong (revoke, rotate, key edit, tenant suspension, limits) bumps the version after its
transaction commits. With Redis (settings.REDIS_URL) the version lives there and each process
reads it at most once every `check_interval` seconds, so a change reaches every process within
that interval plus one read; without Redis the version is a plain in-process counter.

Time-based validity (expiry, the end of a rotation grace period) does not need a version
bump: every hit, warm or cold, compares the entry's `valid_until` with the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tenants.types import KeyContext

logger = logging.getLogger(__name__)

VERSION_KEY = "mmorch:keys:version"
# How often a process re-reads the global version: revocation is seen within about this long.
DEFAULT_CHECK_INTERVAL = 0.25
# Unknown keys are cached too (a flood of bad keys must not hit the database every time),
# but only this many, so random keys cannot grow memory without bound.
MAX_NEGATIVE_ENTRIES = 10_000
MAX_ENTRIES = 100_000


@dataclass(slots=True)
class _Entry:
    context: KeyContext | None  # None: no usable key with this digest
    version: int
    valid_until: float | None  # epoch seconds; None: no time limit
    reason: str  # why there is no context ("unknown", "revoked", ...), or why it ends at valid_until


class KeyCache:
    """A digest → KeyContext map that drops everything when the global version moves."""

    def __init__(self, redis_url: str = "", check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        self._redis_url = redis_url
        self._redis: Any = None
        self._check_interval = check_interval
        self._entries: dict[str, _Entry] = {}
        self._negative = 0
        self._version = 0
        self._local_version = 0  # the counter when there is no Redis
        self._next_check = 0.0  # monotonic time of the next version read
        self._lock = threading.Lock()

    # --- version ------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._redis is None:
            from core.redis_url import redis_client

            self._redis = redis_client(self._redis_url, timeout=0.5)  # standalone, Sentinel or Cluster
        return self._redis

    def _read_version(self) -> int | None:
        if not self._redis_url:
            return self._local_version
        try:
            raw = self._client().get(VERSION_KEY)
        except Exception:  # Redis down: trust nothing cached until it answers again
            logger.warning("key cache: cannot read the key version from Redis", exc_info=True)
            return None
        return int(raw) if raw is not None else 0

    def current_version(self) -> int:
        """The version to tag new entries with; re-read when the last read is too old."""
        now = time.monotonic()
        if now >= self._next_check:
            with self._lock:
                if now >= self._next_check:
                    seen = self._read_version()
                    if seen is None:
                        # Unknown version: a fresh negative number never matches a cached tag.
                        self._version = -int(now * 1000) - 1
                        self._entries.clear()
                        self._negative = 0
                    elif seen != self._version:
                        self._version = seen
                        self._entries.clear()
                        self._negative = 0
                    self._next_check = now + self._check_interval
        return self._version

    def bump(self) -> None:
        """Announce a change: every process drops its entries at its next version read."""
        if self._redis_url:
            try:
                self._client().incr(VERSION_KEY)
            except Exception:
                logger.exception("key cache: cannot bump the key version in Redis")
        with self._lock:
            self._local_version += 1
            self._entries.clear()
            self._negative = 0
            self._next_check = 0.0

    # --- entries ------------------------------------------------------------------------
    def lookup(self, digest: str) -> tuple[bool, KeyContext | None, str]:
        """(hit, context, reason). A hit with no context is a known-bad key; reason says why."""
        version = self.current_version()
        entry = self._entries.get(digest)
        if entry is None or entry.version != version:
            return False, None, ""
        if entry.valid_until is not None and time.time() >= entry.valid_until:
            return True, None, entry.reason
        return True, entry.context, entry.reason if entry.context is None else ""

    def put(
        self, digest: str, context: KeyContext | None, version: int, valid_until: float | None, reason: str = ""
    ) -> None:
        with self._lock:
            if version != self._version:
                return  # the world moved while the row was read; do not keep it
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
                self._negative = 0
            if context is None:
                if self._negative >= MAX_NEGATIVE_ENTRIES:
                    return
                self._negative += 1
            self._entries[digest] = _Entry(context, version, valid_until, reason)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._negative = 0
            self._next_check = 0.0

    def __len__(self) -> int:
        return len(self._entries)
