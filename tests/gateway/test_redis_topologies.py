"""Redis over TLS, through Sentinel and as a Cluster, against real servers started here on free
loopback ports: the quota script (RedisQuota), the key cache, Django's cache and the Celery broker
follow one REDIS_URL; URLs nothing can use stop the settings from loading."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.redis_url import RedisUrlError, celery_broker, parse_redis_url
from gateway import quota
from gateway.quota import QuotaSubject
from gateway.redis_pipe import ClusterScriptPipe, key_slot
from tenants.keycache import KeyCache
from tenants.types import EffectiveLimits

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server/redis-cli (Debian redis-server, redis-tools) are not installed",
)
ROOT = Path(__file__).resolve().parents[2]
START_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, limit_s: float = START_S) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Servers:
    """redis-server processes, each stopped (terminate, then kill) at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, conf: str | None = None) -> Path:
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        command = ["redis-server"]
        if conf is not None:
            (workdir / "redis.conf").write_text(conf)
            command.append(str(workdir / "redis.conf"))
        command += ["--dir", str(workdir), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", *args]
        log = (workdir / "log").open("wb")
        self.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        return workdir

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    group = Servers(tmp_path_factory.mktemp("redis"))
    yield group
    group.stop()


def subjects(tenant_id: int, rpm: int) -> list[QuotaSubject]:
    """A key (id = 1000 + tenant) and its tenant, the key limited to `rpm` requests a minute."""
    key_limits = EffectiveLimits(requests_per_minute=rpm)
    return [QuotaSubject(f"key:{1000 + tenant_id}", key_limits), QuotaSubject(f"tenant:{tenant_id}", EffectiveLimits())]


async def assert_quota_semantics(backend: quota.RedisQuota, tenant_id: int) -> None:
    """Two admitted, the third refused; settling refunds a request; the month baseline applies."""
    s = subjects(tenant_id, rpm=2)
    first = await backend.admit(s, tokens=5)
    assert first.admitted and first.remaining_requests == 1
    assert (await backend.admit(s, tokens=5)).admitted
    refused = await backend.admit(s, tokens=5)
    assert not refused.admitted and refused.code == "rate_limit_exceeded" and refused.reason == "requests"
    await backend.settle(first, used_tokens=3, refund_request=True)
    assert (await backend.admit(s, tokens=5)).admitted
    limited = [QuotaSubject(f"key:{1000 + tenant_id}", EffectiveLimits(monthly_token_budget=100)), s[1]]
    backend.baseline_set(f"key:{1000 + tenant_id}", quota.period_now(), 100, quota.Decimal(0), tenant_id=tenant_id)
    over = await backend.admit(limited, tokens=1)
    assert not over.admitted and over.code == "insufficient_quota"


# --- URL parsing ----------------------------------------------------------------------------


def test_url_forms_parse_to_their_topology() -> None:
    plain = parse_redis_url("redis://:pw@cache:6380/3")
    assert (plain.mode, plain.hosts, plain.db, plain.password, plain.tls) == (
        "standalone",
        (("cache", 6380),),
        3,
        "pw",
        None,
    )
    tls = parse_redis_url("rediss://h/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem")
    assert tls.tls is not None and tls.tls.cert_reqs == "optional" and tls.tls.ca_certs == "/ca.pem"
    assert tls.tls.check_hostname  # redis-py's default
    assert not parse_redis_url("rediss://h?ssl_cert_reqs=none").tls.check_hostname  # type: ignore[union-attr]
    sentinel = parse_redis_url("redis+sentinel://u:pw@s1,s2:26380/mymaster/2?sentinel_password=sp")
    assert sentinel.mode == "sentinel" and sentinel.hosts == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.username, sentinel.sentinel_password) == ("mymaster", 2, "u", "sp")
    cluster = parse_redis_url("rediss+cluster://n1:7000,[::1]:7001/")
    assert cluster.mode == "cluster" and cluster.hosts == (("n1", 7000), ("::1", 7001)) and cluster.tls is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+foo://h/0", "unsupported Redis URL scheme"),
        ("unix:///tmp/redis.sock", "unsupported Redis URL scheme"),
        ("redis://a,b/0", "names one server"),
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis://h/0?ssl_cert_reqs=none", "only apply to TLS"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "none, optional or required"),
        ("redis://h/x", "must be a number"),
    ],
)
def test_bad_urls_are_refused_with_what_works(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        parse_redis_url(url)


def test_celery_broker_forms() -> None:
    assert celery_broker("redis://h:6379/1") == ("redis://h:6379/1", {})
    url, options = celery_broker("rediss://h:6380/1")
    assert "ssl_cert_reqs=required" in url and options == {}  # kombu would otherwise check nothing
    url, options = celery_broker("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2")
    assert url == "sentinel://:pw@s1:26379/2;sentinel://:pw@s2:26379/2"
    assert options == {"master_name": "mymaster"}
    with pytest.raises(RedisUrlError, match="Celery cannot use a Redis Cluster"):
        celery_broker("redis+cluster://n1:7000/")


def test_key_slot_matches_redis_py() -> None:
    from redis.crc import key_slot as redis_py_slot

    for key in [b"", b"plain", b"mmorch:q:{t7}:key:1007:rpm", b"{}x", b"a{b}c{d}", b"{t123}"]:
        assert key_slot(key) == redis_py_slot(key)


def test_one_call_s_keys_share_the_tenant_s_slot() -> None:
    keys = quota._keys(subjects(42, rpm=1), "2026-01")
    assert len(keys) == 10 and all("{t42}" in k for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    with pytest.raises(ValueError, match="tenant"):
        quota._keys([QuotaSubject("key:1", EffectiveLimits())], "2026-01")


# --- settings load --------------------------------------------------------------------------


def settings_load(**env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.CELERY_BROKER_URL); print(s.CELERY_BROKER_TRANSPORT_OPTIONS); print(s.CACHES)"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    for name in ("CELERY_BROKER_URL", "CACHE_REDIS_URL"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "redis+foo://h/0"}, "REDIS_URL: unsupported Redis URL scheme 'redis+foo://'"),
        ({"REDIS_URL": "redis+cluster://n1:7000/"}, "Django's cache cannot use a Redis Cluster"),
        (
            {"REDIS_URL": "redis+cluster://n1:7000/", "CACHE_REDIS_URL": "redis://127.0.0.1:6379/4"},
            "Celery cannot use a Redis Cluster as its broker: set CELERY_BROKER_URL",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:6379/4", "CELERY_BROKER_URL": "redis+cluster://n1:7000/"},
            "Celery cannot use a Redis Cluster",
        ),
    ],
)
def test_unusable_urls_stop_the_settings_load(env: dict[str, str], message: str) -> None:
    result = settings_load(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr[-2000:]


def test_settings_derive_the_cache_and_broker_from_one_url() -> None:
    result = settings_load(REDIS_URL="redis+sentinel://127.0.0.1:26379/mymaster/4")
    assert result.returncode == 0, result.stderr[-2000:]
    broker, options, caches = result.stdout.strip().splitlines()
    assert broker == "sentinel://127.0.0.1:26379/4" and "'master_name': 'mymaster'" in options
    assert "core.redis_url.SentinelPool" in caches
    cluster = settings_load(
        REDIS_URL="redis+cluster://n1:7000/",
        CACHE_REDIS_URL="redis://127.0.0.1:6379/4",
        CELERY_BROKER_URL="filesystem://",
    )
    assert cluster.returncode == 0, cluster.stderr[-2000:]


# --- TLS ------------------------------------------------------------------------------------


def _ca(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem_write(path: Path, key: Any, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


@pytest.fixture(scope="module")
def tls_redis(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A TLS-only Redis with a server certificate for 127.0.0.1 from a throwaway CA; also a wrong CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs = tmp_path_factory.mktemp("certs")
    ca_key, ca_cert = _ca("mm-orch test CA")
    _, other_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _pem_write(certs / "ca", None, ca_cert)
    _pem_write(certs / "other", None, other_cert)
    _pem_write(certs / "server", key, cert)
    port = free_port()
    servers.start(
        "tls",
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no",
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    wait_until(lambda: bool(redis.Redis.from_url(url, socket_timeout=1).ping()), "the TLS Redis")
    return {"url": url, "wrong_ca": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs / 'other.crt'}"}


async def test_quota_over_tls(tls_redis: dict[str, str]) -> None:
    backend = quota.RedisQuota(tls_redis["url"])
    backend.reset()
    await assert_quota_semantics(backend, tenant_id=1)
    backend.reset()


async def test_tls_with_a_wrong_ca_is_refused_clearly(tls_redis: dict[str, str]) -> None:
    backend = quota.RedisQuota(tls_redis["wrong_ca"])
    with pytest.raises(OSError, match="certificate verify failed"):
        await backend.admit(subjects(1, rpm=5), tokens=1)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        backend.reset()


def test_key_cache_django_cache_and_celery_over_tls(tls_redis: dict[str, str]) -> None:
    from django.core.cache.backends.redis import RedisCache
    from kombu import Connection

    cache = KeyCache(tls_redis["url"], check_interval=0)
    before = cache.current_version()
    cache.bump()
    assert cache.current_version() == before + 1
    django_cache = RedisCache(tls_redis["url"], {})
    django_cache.set("topology-check", {"tls": True})
    assert django_cache.get("topology-check") == {"tls": True}
    broker, options = celery_broker(tls_redis["url"])
    with Connection(broker, transport_options=options, connect_timeout=2) as conn:
        assert conn.default_channel.client.ping()


# --- Sentinel -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_setup(servers: Servers) -> dict[str, Any]:
    """A master, a replica in sync, and one sentinel watching them (quorum 1)."""
    master, replica, sentinel = free_port(), free_port(), free_port()
    servers.start("master", "--port", str(master))
    wait_until(lambda: bool(redis.Redis(port=master, socket_timeout=1).ping()), "the master")
    servers.start("replica", "--port", str(replica), "--replicaof", "127.0.0.1", str(master))
    wait_until(
        lambda: redis.Redis(port=replica, socket_timeout=1).info("replication")["master_link_status"] == "up",
        "the replica's sync",
    )
    conf = (
        f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 1\n"
        "sentinel down-after-milliseconds mymaster 2000\nsentinel failover-timeout mymaster 10000\n"
    )
    servers.start("sentinel", "--sentinel", conf=conf)
    sentinel_client = redis.Redis(port=sentinel, socket_timeout=1, decode_responses=True)
    wait_until(
        lambda: bool(sentinel_client.execute_command("SENTINEL", "REPLICAS", "mymaster")),
        "the sentinel to see the replica",
    )
    return {
        "url": f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/0",
        "sentinel": sentinel_client,
        "master": master,
        "replica": replica,
    }


async def test_quota_key_cache_and_django_cache_through_sentinel(sentinel_setup: dict[str, Any]) -> None:
    from django.core.cache.backends.redis import RedisCache

    url = sentinel_setup["url"]
    backend = quota.RedisQuota(url)
    backend.reset()
    await assert_quota_semantics(backend, tenant_id=2)
    backend.reset()
    cache = KeyCache(url, check_interval=0)
    before = cache.current_version()
    cache.bump()
    assert cache.current_version() == before + 1
    django_cache = RedisCache(url, {"OPTIONS": {"pool_class": "core.redis_url.SentinelPool"}})
    django_cache.set("topology-check", "sentinel")
    assert django_cache.get("topology-check") == "sentinel"
    assert redis.Redis(port=sentinel_setup["master"]).get(":1:topology-check") is not None  # on the master


def test_celery_broker_through_sentinel(sentinel_setup: dict[str, Any]) -> None:
    from kombu import Connection

    broker, options = celery_broker(sentinel_setup["url"])
    with Connection(broker, transport_options=options, connect_timeout=2) as conn:
        assert conn.default_channel.client.ping()


async def test_quota_follows_a_sentinel_failover(sentinel_setup: dict[str, Any]) -> None:
    """After a failover the pipe's next connection goes to the new master (it asks the sentinels)."""
    backend = quota.RedisQuota(sentinel_setup["url"])
    s = subjects(3, rpm=100)
    assert (await backend.admit(s, tokens=1)).admitted
    sentinel = sentinel_setup["sentinel"]
    # The sentinel promotes only a replica it has lately heard from: ask until it accepts (bounded).
    wait_until(lambda: failover_started(sentinel), "the sentinel to accept the failover", limit_s=30)
    wait_until(
        lambda: (
            int(sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")[1])
            == sentinel_setup["replica"]
        ),
        "the failover",
        limit_s=30,
    )
    decision = None
    deadline = time.monotonic() + 20
    while decision is None and time.monotonic() < deadline:
        try:  # the old master may drop the connection or still be turning into a replica
            decision = await backend.admit(s, tokens=1)
        except (ConnectionError, OSError, quota_error()):
            await asyncio.sleep(0.2)
    assert decision is not None and decision.admitted
    assert redis.Redis(port=sentinel_setup["replica"]).info("replication")["role"] == "master"
    backend.reset()


def failover_started(sentinel: redis.Redis) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster"))
    except redis.ResponseError as exc:
        if "NOGOODSLAVE" in str(exc):
            return False
        raise


def quota_error() -> type[Exception]:
    from gateway.redis_pipe import RedisScriptError

    return RedisScriptError


# --- Cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(servers: Servers) -> dict[str, Any]:
    """Three masters built into a cluster by `redis-cli --cluster create`."""
    ports = [free_port() for _ in range(3)]
    for i, port in enumerate(ports):
        servers.start(
            f"cluster{i}",
            "--port", str(port), "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
        )  # fmt: skip
    for port in ports:
        wait_until(lambda p=port: bool(redis.Redis(port=p, socket_timeout=1).ping()), "a cluster node")  # type: ignore[misc]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for port in ports:
        wait_until(
            lambda p=port: redis.Redis(port=p, socket_timeout=1).cluster("info")["cluster_state"] == "ok",  # type: ignore[misc]
            "the cluster state",
            limit_s=30,
        )
    url = f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/"
    return {"url": url, "ports": ports}


def _owner(cluster: dict[str, Any], slot: int) -> int:
    for start, end, primary, *_ in redis.Redis(port=cluster["ports"][0]).execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    raise AssertionError(f"no node serves slot {slot}")


async def test_quota_on_a_cluster_spreads_tenants_over_every_node(cluster: dict[str, Any]) -> None:
    backend = quota.RedisQuota(cluster["url"])
    assert isinstance(backend._pipe, ClusterScriptPipe)
    backend.reset()
    tenants = list(range(100, 130))
    owners = {_owner(cluster, key_slot(quota._keys(subjects(t, 2), "x")[0].encode())) for t in tenants}
    assert owners == set(cluster["ports"])  # the tenants' keys land on all three nodes
    for tenant_id in tenants:
        await assert_quota_semantics(backend, tenant_id)
    # Many tenants at once: pipelined per node, each reply to its own call.
    decisions = await asyncio.gather(*(backend.admit(subjects(t + 100, 1), tokens=1) for t in tenants))
    assert all(d.admitted for d in decisions)
    refused = await asyncio.gather(*(backend.admit(subjects(t + 100, 1), tokens=1) for t in tenants))
    assert not any(d.admitted for d in refused)
    backend.reset()


async def test_cluster_pipe_follows_moved(cluster: dict[str, Any]) -> None:
    """A deliberately stale slot map, then a slot really moved to another node: MOVED is followed."""
    backend = quota.RedisQuota(cluster["url"])
    backend.reset()
    pipe = backend._pipe
    assert isinstance(pipe, ClusterScriptPipe)
    s = subjects(7, rpm=3)
    assert (await backend.admit(s, tokens=1)).admitted
    pipe._slots = [("127.0.0.1", cluster["ports"][0])] * len(pipe._slots)  # everything "on" node 0
    for tenant_id in range(200, 215):
        assert (await backend.admit(subjects(tenant_id, 5), tokens=1)).admitted
    assert len({address for address in pipe._slots}) == 3  # the map was learnt again

    # Move tenant 7's slot (and its counters) to another node.
    slot = key_slot(quota._keys(s, "x")[0].encode())
    source = _owner(cluster, slot)
    target = next(p for p in cluster["ports"] if p != source)
    src, dst = redis.Redis(port=source), redis.Redis(port=target)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID").decode(), dst.execute_command("CLUSTER", "MYID").decode()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for port in cluster["ports"]:
        redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    assert pipe._slots[slot] == ("127.0.0.1", source)  # the pipe still believes the old owner
    assert (await backend.admit(s, tokens=1)).admitted  # 2 of 3, counted on the new owner
    assert pipe._slots[slot] == ("127.0.0.1", target)
    assert (await backend.admit(s, tokens=1)).admitted  # 3 of 3
    refused = await backend.admit(s, tokens=1)
    assert not refused.admitted and refused.reason == "requests"  # the counters moved with the slot
    backend.reset()


def test_key_cache_and_readiness_on_a_cluster(cluster: dict[str, Any]) -> None:
    from django.test import override_settings

    from core.observability import _check_redis

    cache = KeyCache(cluster["url"], check_interval=0)
    before = cache.current_version()
    cache.bump()
    assert cache.current_version() == before + 1
    with override_settings(REDIS_URL=cluster["url"]):
        assert _check_redis() == (True, "ok")
