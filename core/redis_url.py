"""REDIS_URL, parsed in one place: the topology (standalone, Sentinel, Cluster), the servers, TLS.

Forms (TLS: the same with `rediss`):

- `redis://[[user]:password@]host[:6379][/db]`: one server (redis-py's own form);
- `redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]...]/<service>[/<db>]`: the
  master of `<service>`, asked of the sentinels at every (re)connect so a failover is followed;
  the credentials are the master's, `?sentinel_password=` (and `sentinel_username=`) the sentinels';
- `redis+cluster://[[user]:password@]host1[:6379][,host2[:6379]...][/]`: a Redis Cluster (db 0 only),
  the hosts being seeds for the slot map.

TLS query options, redis-py's names: `ssl_cert_reqs=none|optional|required` (default required),
`ssl_ca_certs=PATH`, `ssl_certfile=PATH`, `ssl_keyfile=PATH`, `ssl_check_hostname=true|false`
(default: true unless ssl_cert_reqs=none). Pure: no Django, no I/O, except building clients.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

Mode = Literal["standalone", "sentinel", "cluster"]

SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_PORTS: dict[Mode, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username")


class RedisUrlError(ValueError):
    """A REDIS_URL this platform cannot use; the message says what is wrong and what works."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    cert_reqs: str = "required"
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """The client context for a raw asyncio connection (the quota pipe)."""
        ctx = ssl.create_default_context(cafile=self.ca_certs)
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = CERT_REQS[self.cert_reqs]
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx

    def redis_kwargs(self) -> dict[str, Any]:
        """The same options as redis-py connection keyword arguments."""
        return {
            "ssl": True,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_check_hostname": self.check_hostname,
        }


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a REDIS_URL names."""

    url: str
    mode: Mode
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None
    service: str = ""  # Sentinel: the master's name
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other query options, for redis-py

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for a connection to a data node (master or cluster node)."""
        out: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls is not None:
            out.update(self.tls.redis_kwargs())
        return out

    def sentinel_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.sentinel_username, "password": self.sentinel_password}
        if self.tls is not None:
            out.update(self.tls.redis_kwargs())
        return {k: v for k, v in out.items() if v is not None}

    def redacted(self) -> str:
        """The URL without its passwords, for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "***@" + netloc
        query = urlencode([(k, "***" if "password" in k else v) for k, v in parse_qsl(parts.query)])
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise RedisUrlError(f"bad port {port_text!r} in Redis URL {url!r}") from None
    return host or "127.0.0.1", port


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise RedisUrlError(f"{name} must be true or false, not {value!r}")


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a REDIS_URL; RedisUrlError names what is wrong and the supported forms."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise RedisUrlError(
            f"unsupported Redis URL scheme {scheme + '://' if sep else url!r}: use redis:// or rediss:// "
            "(one server), redis+sentinel:// or rediss+sentinel:// (Sentinel: host1:26379,host2:26379/<service>/<db>), "
            "redis+cluster:// or rediss+cluster:// (Cluster: host1:7000,host2:7001/)"
        )
    mode, tls_on = SCHEMES[scheme]
    parts = urlsplit(url)
    credentials, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = credentials.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    hosts = tuple(_host_port(h, DEFAULT_PORTS[mode], url) for h in (hostlist or "").split(",") if h.strip())
    if not hosts:
        hosts = (("127.0.0.1", DEFAULT_PORTS[mode]),)
    if mode == "standalone" and len(hosts) > 1:
        raise RedisUrlError("a redis:// URL names one server; for several use redis+sentinel:// or redis+cluster://")

    segments = [unquote(s) for s in parts.path.split("/") if s]
    service = ""
    if mode == "sentinel":
        if not segments:
            raise RedisUrlError("a Sentinel URL needs the service name: redis+sentinel://host:26379/<service>[/<db>]")
        service, segments = segments[0], segments[1:]
    if len(segments) > 1:
        raise RedisUrlError(f"unexpected path {parts.path!r} in Redis URL: only a database number goes there")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    db_text = segments[0] if segments else query.pop("db", "0")
    try:
        db = int(db_text or 0)
    except ValueError:
        raise RedisUrlError(f"the Redis database must be a number, not {db_text!r}") from None
    if mode == "cluster" and db != 0:
        raise RedisUrlError("a Redis Cluster has only database 0")

    tls: TlsOptions | None = None
    given_tls = {k: query.pop(k) for k in TLS_OPTIONS if k in query}
    if tls_on:
        reqs = given_tls.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
        if reqs not in CERT_REQS:
            raise RedisUrlError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
        check = given_tls.get("ssl_check_hostname")
        tls = TlsOptions(
            cert_reqs=reqs,
            ca_certs=given_tls.get("ssl_ca_certs") or None,
            certfile=given_tls.get("ssl_certfile") or None,
            keyfile=given_tls.get("ssl_keyfile") or None,
            check_hostname=(reqs != "none") if check is None else _flag(check, "ssl_check_hostname"),
        )
        if tls.check_hostname and reqs == "none":
            raise RedisUrlError("ssl_check_hostname=true needs ssl_cert_reqs=optional or required")
    elif given_tls:
        raise RedisUrlError(f"{', '.join(given_tls)} only apply to TLS: use the rediss scheme ({scheme}s://...)")

    sentinel = {k: query.pop(k) for k in SENTINEL_OPTIONS if k in query}
    if sentinel and mode != "sentinel":
        raise RedisUrlError(f"{', '.join(sentinel)} only apply to redis+sentinel:// URLs")
    return RedisTarget(
        url=url,
        mode=mode,
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        tls=tls,
        service=service,
        sentinel_username=sentinel.get("sentinel_username") or None,
        sentinel_password=sentinel.get("sentinel_password") or None,
        extra=query,
    )


def redis_client(url: str, *, timeout: float) -> Any:
    """A redis-py client for any supported URL: Redis, a Sentinel-managed master, or RedisCluster."""
    import redis

    target = parse_redis_url(url)
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target.mode == "standalone":
        return redis.Redis.from_url(url, **timeouts)
    if target.mode == "sentinel":
        from redis.sentinel import Sentinel

        sentinel = Sentinel(list(target.hosts), sentinel_kwargs={**target.sentinel_kwargs(), **timeouts}, **timeouts)
        return sentinel.master_for(target.service, db=target.db, **target.connection_kwargs(), **timeouts)
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts], **target.connection_kwargs(), **timeouts
    )


class SentinelPool:
    """A connection pool for Django's RedisCache (`OPTIONS["pool_class"]`) that follows Sentinel.

    Django calls `pool_class.from_url(LOCATION, **OPTIONS)`; this answers a redis-py
    SentinelConnectionPool for a redis+sentinel:// URL, which asks the sentinels for the master.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Any:
        from redis.sentinel import Sentinel, SentinelConnectionPool

        target = parse_redis_url(url)
        if target.mode != "sentinel":
            raise RedisUrlError(f"SentinelPool needs a redis+sentinel:// URL, not {target.redacted()}")
        timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
        manager = Sentinel(list(target.hosts), sentinel_kwargs={**target.sentinel_kwargs(), **timeouts})
        return SentinelConnectionPool(target.service, manager, db=target.db, **target.connection_kwargs(), **options)


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """kombu's form of a Redis URL as Celery broker: (broker URL, transport options to add).

    kombu reads rediss:// itself but without `ssl_cert_reqs` it falls back to no certificate
    check, so the same requirement as everywhere else is written into the URL. Sentinel becomes
    kombu's `sentinel://h1:26379;sentinel://h2:26379/<db>` with the `master_name` transport option.
    A Cluster cannot carry a Celery broker (kombu has no Cluster transport): RedisUrlError.
    """
    target = parse_redis_url(url)
    if target.mode == "cluster":
        raise RedisUrlError(
            "Celery cannot use a Redis Cluster as its broker: set CELERY_BROKER_URL to a standalone "
            "(redis:// or rediss://) or Sentinel Redis, or another broker"
        )
    tls_query: dict[str, str] = {}
    if target.tls is not None:
        tls = target.tls
        tls_query = {"ssl_cert_reqs": tls.cert_reqs, "ssl_check_hostname": str(tls.check_hostname).lower()}
        tls_query.update(
            {
                k: v
                for k, v in (
                    ("ssl_ca_certs", tls.ca_certs),
                    ("ssl_certfile", tls.certfile),
                    ("ssl_keyfile", tls.keyfile),
                )
                if v
            }
        )
    if target.mode == "standalone":
        if target.tls is None:
            return url, {}
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        query.update(tls_query)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), "")), {}
    auth = ""
    if target.password is not None or target.username:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    query_text = f"?{urlencode(tls_query)}" if tls_query else ""
    broker = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}{query_text}" for host, port in target.hosts)
    options: dict[str, Any] = {"master_name": target.service}
    sentinel_kwargs = target.sentinel_kwargs()
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return broker, options
