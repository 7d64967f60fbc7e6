"""A minimal auto-pipelining Redis client for the quota script (EVALSHA only).

Every admission and settlement is one EVALSHA. Under load many requests run it at once; this
client puts all calls made in the same event-loop turn into one socket write on one connection
and matches the replies in order (Redis answers in order). That saves a system call and a
wake-up of Redis per request, which on a small machine costs more than the script itself, and
it skips redis-py's per-argument encoding. Measured in bench/gateway_overhead.

Every REDIS_URL form of core.redis_url works: TLS (an ssl.SSLContext from the URL's ssl_*
options), Sentinel (the master asked of the sentinels at every connect, so a reconnect follows a
failover) and Cluster (`ClusterScriptPipe`: one pipelined connection per node, each call sent to
the node owning its keys' slot, the slot map from CLUSTER SLOTS, refreshed on MOVED/ASK).

On a lost connection every pending call fails (the caller answers 503) and the next call
reconnects. After a Redis restart the script is loaded again on NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis

from core.redis_url import RedisTarget, parse_redis_url

SLOTS = 16384
MAX_REDIRECTS = 5


def pack(*parts: bytes) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisScriptError(Exception):
    pass


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag `{...}`, or of the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc % SLOTS


Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]


async def _open(
    host: str, port: int, *, tls: ssl.SSLContext | None, limit_s: float, setup: Sequence[bytes]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any, list[Any]]:
    """A connection with its set-up commands sent and answered; an error reply raises."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls is not None else None), limit_s
    )
    parser = hiredis.Reader()
    replies: list[Any] = []
    try:
        writer.write(b"".join(setup))
        while len(replies) < len(setup):
            data = await asyncio.wait_for(reader.read(65536), limit_s)
            if not data:
                raise ConnectionError(f"Redis at {host}:{port} closed the connection during set-up")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RedisScriptError(str(reply))
    except BaseException:
        writer.close()
        raise
    return reader, writer, parser, replies


class _Link:
    """One auto-pipelined connection to one server, opened (and reopened) by `opener`."""

    def __init__(self, opener: Callable[[], Awaitable[Opened]], timeout: float) -> None:
        self._opener = opener
        self._timeout = timeout
        self.writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Future[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self) -> None:
        reader, writer, parser = await self._opener()
        self.writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader, parser, writer))

    async def _read_loop(self, reader: asyncio.StreamReader, parser: Any, writer: asyncio.StreamWriter) -> None:
        error: BaseException = ConnectionError("Redis closed the connection")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, IndexError) as exc:
            error = exc
        except asyncio.CancelledError:
            error = ConnectionError("the quota connection was closed")
        finally:
            if self.writer is writer:
                self.writer = None
            writer.close()
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(ConnectionError(str(error)))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.writer is not None and self._outbox:
            self.writer.write(b"".join(self._outbox))
        self._outbox.clear()

    async def ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (tests): start over on a fresh connection.
            self._loop, self.writer, self._connecting = loop, None, None
            self._pending, self._outbox = deque(), []
        if self.writer is not None:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = loop.create_task(self._connect())  # type: ignore[assignment]
        assert self._connecting is not None
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and connecting.exception() is not None:
                self._connecting = None

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a command on the connection `ensure` opened; it goes out with this loop turn's others."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(future)
        self._outbox.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    async def call(self, command: bytes) -> Any:
        await self.ensure()
        return await asyncio.wait_for(self.submit(command), self._timeout)

    def drop(self) -> None:
        """Forget the connection (a stale master, a moved node): the next call opens a new one."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()


class _ScriptClient:
    """What both pipes share: the script, its SHA, the URL's credentials and TLS."""

    def __init__(self, target: RedisTarget, script: str, timeout: float) -> None:
        self._target = target
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()  # noqa: S324 - Redis names scripts by SHA-1
        self._timeout = timeout
        self._tls = target.tls.context() if target.tls is not None else None

    def _auth(self, username: str | None, password: str | None) -> list[bytes]:
        if password is None:
            return []
        return [pack(b"AUTH", *([username.encode()] if username else []), password.encode())]

    def _setup(self) -> list[bytes]:
        t = self._target
        setup = self._auth(t.username, t.password)
        if t.mode != "cluster":
            setup.append(pack(b"SELECT", str(t.db).encode()))
        setup.append(pack(b"SCRIPT", b"LOAD", self._script))
        return setup

    def _command(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        parts = [b"EVALSHA", self._sha, str(len(keys)).encode()]
        parts += [k.encode() for k in keys]
        parts += [a.encode() for a in args]
        return pack(*parts)


class ScriptPipe(_ScriptClient):
    """One connection per event loop, shared by every request of the process (a server or a
    Sentinel-managed master)."""

    def __init__(self, url: str | RedisTarget, script: str, *, timeout: float = 2.0) -> None:
        target = parse_redis_url(url) if isinstance(url, str) else url
        if target.mode == "cluster":
            raise ValueError("a Redis Cluster URL needs ClusterScriptPipe (script_pipe() picks it)")
        super().__init__(target, script, timeout)
        self._link = _Link(self._open_master, timeout)

    @property
    def _writer(self) -> asyncio.StreamWriter | None:
        return self._link.writer

    async def _master_address(self) -> tuple[str, int]:
        """Ask the sentinels, in order, where the service's master is now."""
        t = self._target
        problems: list[str] = []
        for host, port in t.hosts:
            setup = self._auth(t.sentinel_username, t.sentinel_password)
            setup.append(pack(b"SENTINEL", b"get-master-addr-by-name", t.service.encode()))
            try:
                _, writer, _, replies = await _open(host, port, tls=self._tls, limit_s=self._timeout, setup=setup)
            except (OSError, TimeoutError, RedisScriptError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            writer.close()
            answer = replies[-1]
            if answer:
                return answer[0].decode(), int(answer[1])
            problems.append(f"{host}:{port}: no master named {t.service!r}")
        raise ConnectionError(f"no sentinel gave the master of {t.service!r}: {'; '.join(problems)}")

    async def _open_master(self) -> Opened:
        t = self._target
        host, port = t.hosts[0] if t.mode == "standalone" else await self._master_address()
        setup = self._setup()
        if t.mode == "sentinel":
            setup.append(pack(b"ROLE"))  # a failover may be under way: only a master will do
        reader, writer, parser, replies = await _open(host, port, tls=self._tls, limit_s=self._timeout, setup=setup)
        if t.mode == "sentinel" and replies[-1][0] != b"master":
            writer.close()
            raise ConnectionError(f"{host}:{port}, given by the sentinels as master, is a {replies[-1][0].decode()}")
        return reader, writer, parser

    async def evalsha(self, keys: Sequence[str], args: Sequence[str]) -> Any:
        command = self._command(keys, args)
        reply = await self._link.call(command)
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("NOSCRIPT"):
                await self._link.call(pack(b"SCRIPT", b"LOAD", self._script))
                reply = await self._link.call(command)
            elif str(reply).startswith("READONLY"):
                # The master we hold became a replica (failover): ask the sentinels again.
                self._link.drop()
                reply = await self._link.call(command)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisScriptError(str(reply))
        return reply


class ClusterScriptPipe(_ScriptClient):
    """Redis Cluster: every call goes to the node owning its keys' slot, pipelined per node.

    All keys of one call must share a slot (the quota keys carry the tenant's hash tag).
    """

    def __init__(self, url: str | RedisTarget, script: str, *, timeout: float = 2.0) -> None:
        target = parse_redis_url(url) if isinstance(url, str) else url
        if target.mode != "cluster":
            raise ValueError("ClusterScriptPipe needs a redis+cluster:// URL")
        super().__init__(target, script, timeout)
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._links: dict[tuple[str, int], _Link] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._stale = True

    def _link(self, address: tuple[str, int]) -> _Link:
        link = self._links.get(address)
        if link is None:
            host, port = address

            async def opener() -> Opened:
                reader, writer, parser, _ = await _open(
                    host, port, tls=self._tls, limit_s=self._timeout, setup=self._setup()
                )
                return reader, writer, parser

            link = self._links[address] = _Link(opener, self._timeout)
        return link

    async def _slots_load(self) -> None:
        """The slot map from CLUSTER SLOTS of the first node that answers (known nodes, then seeds)."""
        seeds = list(dict.fromkeys([*self._links, *self._target.hosts]))
        problems: list[str] = []
        t = self._target
        for host, port in seeds:
            setup = [*self._auth(t.username, t.password), pack(b"CLUSTER", b"SLOTS")]
            try:
                _, writer, _, replies = await _open(host, port, tls=self._tls, limit_s=self._timeout, setup=setup)
            except (OSError, TimeoutError, RedisScriptError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            writer.close()
            slots: list[tuple[str, int] | None] = [None] * SLOTS
            for start, end, primary, *_replicas in replies[-1]:
                node_host = primary[0].decode() if primary[0] else host  # "" means the node asked
                address = (node_host, int(primary[1]))
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = address
            self._slots, self._stale = slots, False
            return
        raise ConnectionError(f"no Redis Cluster node gave the slot map: {'; '.join(problems)}")

    async def _refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._slots_load())
        await asyncio.shield(self._refreshing)

    async def _node_call(self, link: _Link, command: bytes, *, asking: bool) -> Any:
        if not asking:
            return await link.call(command)
        await link.ensure()
        ask, reply = link.submit(pack(b"ASKING")), link.submit(command)  # same write, in order
        await asyncio.wait_for(ask, self._timeout)
        return await asyncio.wait_for(reply, self._timeout)

    async def evalsha(self, keys: Sequence[str], args: Sequence[str]) -> Any:
        command = self._command(keys, args)
        slot = key_slot(keys[0].encode()) if keys else 0
        if self._stale or self._slots[slot] is None:
            await self._refresh()
        address = self._slots[slot]
        asking = False
        for _ in range(MAX_REDIRECTS):
            if address is None:
                raise ConnectionError(f"no Redis Cluster node serves slot {slot}")
            link = self._link(address)
            try:
                reply = await self._node_call(link, command, asking=asking)
            except (OSError, TimeoutError):
                self._stale = True  # a node is gone: ask for the map again next time
                raise
            asking = False
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            message = str(reply)
            if message.startswith(("MOVED ", "ASK ")):
                kind, _, where = message.split(" ")
                host, _, port = where.rpartition(":")
                address = (host or address[0], int(port))
                if kind == "MOVED":
                    self._slots[slot] = address  # right now; the whole map on the next call
                    self._stale = True
                else:
                    asking = True
                continue
            if message.startswith("NOSCRIPT"):
                await link.call(pack(b"SCRIPT", b"LOAD", self._script))
                continue
            raise RedisScriptError(message)
        raise RedisScriptError(f"too many Redis Cluster redirections for slot {slot}")


def script_pipe(url: str, script: str, *, timeout: float = 2.0) -> ScriptPipe | ClusterScriptPipe:
    """The pipe for a REDIS_URL: ClusterScriptPipe for a Cluster, else ScriptPipe."""
    target = parse_redis_url(url)
    if target.mode == "cluster":
        return ClusterScriptPipe(target, script, timeout=timeout)
    return ScriptPipe(target, script, timeout=timeout)
