"""The usage journal: one durable record per request that reached the engine.

The record and the page are `wire.usage`'s (billing reads them with the same definition).

SQLite in WAL mode with synchronous=FULL: a record is on disk when `append` returns, so it
survives `kill -9`. One writer thread owns the connection and commits whatever has queued up in
one transaction (group commit), so many concurrent requests share each fsync. Readers open their
own connections (WAL lets them read while the writer writes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import queue
import sqlite3
import threading
import time
from pathlib import Path

from wire.usage import JournalPage, JournalRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('stop', 'length', 'aborted', 'error')),
    queue_ms REAL NOT NULL,
    ttft_ms REAL,
    duration_ms REAL NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    finished_ts REAL NOT NULL,
    client_request_id TEXT NOT NULL DEFAULT '',
    end_user TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    trace_id TEXT NOT NULL DEFAULT '',
    engine_ms REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_finished_ts ON usage (finished_ts);
"""

# The record's fields as stored; `seq` is the row id and `version` is the wire shape's, not stored.
COLUMNS = (
    "request_id",
    "client_request_id",
    "tenant",
    "key",
    "model",
    "model_version",
    "prompt_tokens",
    "completion_tokens",
    "outcome",
    "queue_ms",
    "ttft_ms",
    "duration_ms",
    "started_at",
    "finished_at",
    "end_user",
    "metadata",
    "trace_id",
    "engine_ms",
)
_KEY = COLUMNS.index("key")
_METADATA = COLUMNS.index("metadata")
# Columns later record versions added, with how a journal written before them is upgraded.
_ADDED_COLUMNS = {
    "client_request_id": "TEXT NOT NULL DEFAULT ''",
    "end_user": "TEXT NOT NULL DEFAULT ''",
    "metadata": "TEXT NOT NULL DEFAULT '{}'",
    "trace_id": "TEXT NOT NULL DEFAULT ''",
    "engine_ms": "REAL NOT NULL DEFAULT 0",
}

# Built from the fixed column names above, never from input.
INSERT_SQL = f"INSERT INTO usage ({', '.join(COLUMNS)}, finished_ts) VALUES ({', '.join('?' for _ in COLUMNS)}, ?)"  # noqa: S608
SELECT_SQL = f"SELECT seq, {', '.join(COLUMNS)} FROM usage WHERE seq > ? ORDER BY seq LIMIT ?"  # noqa: S608


def _finished_ts(record: JournalRecord) -> float:
    return dt.datetime.fromisoformat(record.finished_at).timestamp()


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _upgrade(conn: sqlite3.Connection) -> None:
    """Adds the columns an older journal lacks; its rows read them empty (a client id of "" reads
    as the attempt's own)."""
    names = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in names:
            conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {definition}")


class Journal:
    def __init__(self, path: str | Path, *, retention_days: float = 30.0) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self._inbox: queue.SimpleQueue[tuple[JournalRecord, concurrent.futures.Future[int]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        _upgrade(conn)
        conn.close()
        self.prune()
        self._thread = threading.Thread(target=self._writer, name="usage-journal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(30.0)
            self._thread = None

    def submit(self, record: JournalRecord) -> concurrent.futures.Future[int]:
        """Queue a record; the future resolves to its sequence number once it is on disk."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._lock:
            self._pending += 1
        self._inbox.put((record, future))
        return future

    async def append(self, record: JournalRecord) -> int:
        """Write a record and wait until it is durable."""
        return await asyncio.wrap_future(self.submit(record))

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every submitted record is committed."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _writer(self) -> None:
        conn = _connect(self.path)
        insert = INSERT_SQL
        last_prune = time.time()
        try:
            while True:
                item = self._inbox.get()
                batch: list[tuple[JournalRecord, concurrent.futures.Future[int]]] = []
                stop = item is None
                if item is not None:
                    batch.append(item)
                # Group commit: everything already queued rides on the same fsync.
                while len(batch) < 512:
                    try:
                        more = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                if batch:
                    self._write(conn, insert, batch)
                if time.time() - last_prune > 3600:
                    last_prune = time.time()
                    self.prune(conn)
                if stop:
                    return
        finally:
            conn.close()

    def _write(
        self, conn: sqlite3.Connection, insert: str, batch: list[tuple[JournalRecord, concurrent.futures.Future[int]]]
    ) -> None:
        seqs: list[int] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for record, _ in batch:
                values = [getattr(record, c) for c in COLUMNS]
                # The columns predate integer ids (TEXT, "" for no key); readers convert back.
                values[_KEY] = "" if record.key is None else str(record.key)
                values[_METADATA] = json.dumps(record.metadata, separators=(",", ":"))
                cursor = conn.execute(insert, (*values, _finished_ts(record)))
                seqs.append(int(cursor.lastrowid or 0))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(exc)
        else:
            for (_, future), seq in zip(batch, seqs, strict=True):
                future.set_result(seq)
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def prune(self, conn: sqlite3.Connection | None = None) -> int:
        """Delete records older than the retention period."""
        own = conn is None
        conn = conn or _connect(self.path)
        try:
            cutoff = time.time() - self.retention_days * 86400
            cursor = conn.execute("DELETE FROM usage WHERE finished_ts < ?", (cutoff,))
            return cursor.rowcount
        finally:
            if own:
                conn.close()

    def read_page(self, *, after: int, limit: int) -> JournalPage:
        """Records with seq > after, oldest first: the `/internal/usage` page."""
        conn = _connect(self.path)
        try:
            rows = conn.execute(
                SELECT_SQL,
                (after, limit + 1),
            ).fetchall()
        finally:
            conn.close()
        has_more = len(rows) > limit
        rows = rows[:limit]
        names = ("seq", *COLUMNS)
        records = []
        for row in rows:
            stored = dict(zip(names, row, strict=True))
            stored["metadata"] = json.loads(stored["metadata"])
            records.append(JournalRecord.model_validate(stored))
        next_after = records[-1].seq if records else after
        return JournalPage(records=records, next_after=next_after, has_more=has_more)
