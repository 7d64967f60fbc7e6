"""The per-process routing snapshot: models, versions, healthy nodes and grants.

The request path never touches the database: it reads an immutable snapshot that is reloaded
in the background every GATEWAY_REGISTRY_REFRESH_S seconds (the first request of a process
waits for the first load). Services that change the registry drop the local snapshot at once;
other processes see the change within the refresh interval.

In-flight counts and short "this node just failed" marks are per process too: they steer the
next requests away from busy or broken nodes before the health probe catches up.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

from gateway.breaker import Breakers, TenantThrottle
from gateway.conf import conf
from gateway.metrics import NODE_BREAKER_OPENS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: int
    name: str
    base_url: str


@dataclass(frozen=True, slots=True)
class VersionRoute:
    id: int
    label: str  # "<model>@<version>", for people and logs
    version: str  # what the node is asked for (x-mmorch-model-version) and journals
    weight: int
    node_ids: tuple[int, ...]  # nodes that are up and serve this version
    artifact: str = ""  # where the version's files are (a local directory lets the gateway count tokens)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    owned_by: str
    created: int
    versions: tuple[VersionRoute, ...]  # active, weight > 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: dict[str, ModelRoute]
    nodes: dict[int, NodeInfo]
    grants: dict[int, frozenset[str]]  # tenant id → model names (plan or grant)
    loaded_at: float = field(default_factory=time.monotonic)

    def tenant_models(self, tenant_id: int) -> frozenset[str]:
        return self.grants.get(tenant_id, frozenset())


def snapshot_load() -> Snapshot:
    """Read the registry (four queries). Runs in a worker thread, never on the event loop."""
    # Worker threads live outside the request cycle: drop broken or expired connections here
    # (never inside a transaction someone else opened).
    if connection.in_atomic_block:
        return _snapshot_read()
    close_old_connections()
    try:
        return _snapshot_read()
    finally:
        close_old_connections()


def _snapshot_read() -> Snapshot:
    from gateway.models import InferenceNode, Model, ModelGrant, ModelVersion, ModelVersionStatus, NodeState

    nodes: dict[int, NodeInfo] = {}
    version_nodes: dict[int, list[int]] = {}
    for node in InferenceNode.objects.filter(state=NodeState.UP).prefetch_related("versions"):
        nodes[node.id] = NodeInfo(node.id, node.name, node.base_url)
        for version in node.versions.all():
            version_nodes.setdefault(version.id, []).append(node.id)
    versions: dict[int, list[VersionRoute]] = {}
    active = ModelVersion.objects.filter(status=ModelVersionStatus.ACTIVE, traffic_weight__gt=0).select_related("model")
    for version in active:
        versions.setdefault(version.model_id, []).append(
            VersionRoute(
                version.id,
                version.label,
                version.version,
                version.traffic_weight,
                tuple(version_nodes.get(version.id, ())),
                version.artifact_uri,
            )
        )
    models = {
        m.name: ModelRoute(m.name, m.owned_by, int(m.created_at.timestamp()), tuple(versions.get(m.id, ())))
        for m in Model.objects.all()
    }
    grants: dict[int, set[str]] = {}
    for tenant_id, name in ModelGrant.objects.values_list("tenant_id", "model__name"):
        grants.setdefault(tenant_id, set()).add(name)
    return Snapshot(models, nodes, {t: frozenset(n) for t, n in grants.items()})


class Registry:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._first_load: asyncio.Lock | None = None
        self._refresh_failing = False
        self.in_flight: dict[int, int] = {}
        self.breakers = Breakers()
        self.tenant_throttle = TenantThrottle()
        self._rng = random.Random()

    # --- snapshot -------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            return await self._load_now()
        if time.monotonic() - snap.loaded_at > conf().registry_refresh_s and (
            self._refreshing is None or self._refreshing.done()
        ):
            # Serve the current snapshot; the next request sees the fresh one.
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return snap

    async def snapshot_fresh(self) -> Snapshot:
        """A snapshot no older than the refresh interval, waiting for a load if needed.

        For answers that refuse (unknown model, no grant): a change made a moment ago must not
        be refused by a process that has been idle.
        """
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.loaded_at <= conf().registry_refresh_s:
            return snap
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        await asyncio.shield(self._refreshing)
        return self._snapshot or await self._load_now()

    async def _load_now(self) -> Snapshot:
        snap = await sync_to_async(snapshot_load, thread_sensitive=False)()
        self._snapshot = snap
        return snap

    async def _refresh(self) -> None:
        try:
            await self._load_now()
        except Exception:  # keep serving the last good snapshot; log once per outage
            if not self._refresh_failing:
                logger.exception("gateway: registry refresh failed; serving the last snapshot")
            self._refresh_failing = True
        else:
            if self._refresh_failing:
                logger.warning("gateway: registry refresh works again")
            self._refresh_failing = False

    def invalidate(self) -> None:
        self._snapshot = None

    def snapshot_set(self, snap: Snapshot | None) -> None:
        self._snapshot = snap

    # --- routing --------------------------------------------------------------------------
    def node_failed(self, node_id: int, name: str = "") -> None:
        """Unreachable or timed out: out of rotation for the cooldown, then one trial request."""
        self.breakers.trip(node_id, conf().node_fail_cooldown_s)
        NODE_BREAKER_OPENS.labels(name or str(node_id), "unreachable").inc()

    def node_server_error(self, node_id: int, request_key: str, name: str = "") -> None:
        """A 5xx to one request: counts towards the breaker, never opens it alone."""
        c = conf()
        opened = self.breakers.server_error(
            node_id, request_key, threshold=c.node_breaker_failures, cooldown_s=c.node_fail_cooldown_s
        )
        if opened:
            logger.warning(
                "gateway: node %s answered 5xx to %d requests in a row; out of rotation",
                name or node_id,
                c.node_breaker_failures,
            )
            NODE_BREAKER_OPENS.labels(name or str(node_id), "server_errors").inc()

    def node_answered(self, node_id: int) -> None:
        self.breakers.success(node_id)

    def _usable(self, node_id: int, exclude: Iterable[int], now: float) -> bool:
        return node_id not in exclude and self.breakers.usable(node_id)

    def pick(
        self, snap: Snapshot, model: ModelRoute, exclude: frozenset[int] = frozenset()
    ) -> tuple[VersionRoute, NodeInfo] | None:
        """A version by traffic weight (among those with a usable node), then its least busy node."""
        now = time.monotonic()
        candidates: list[tuple[VersionRoute, list[int]]] = []
        for version in model.versions:
            usable = [n for n in version.node_ids if n in snap.nodes and self._usable(n, exclude, now)]
            if usable:
                candidates.append((version, usable))
        if not candidates:
            # Nodes that failed moments ago are better than nothing (the probe may lag).
            for version in model.versions:
                usable = [n for n in version.node_ids if n in snap.nodes and n not in exclude]
                if usable:
                    candidates.append((version, usable))
            if not candidates:
                return None
        version, node_ids = self._by_weight(candidates)
        fewest = min(self.in_flight.get(n, 0) for n in node_ids)
        least = [n for n in node_ids if self.in_flight.get(n, 0) == fewest]
        node_id = least[0] if len(least) == 1 else self._rng.choice(least)
        self.breakers.attempt(node_id)
        return version, snap.nodes[node_id]

    def _by_weight(self, candidates: list[tuple[VersionRoute, list[int]]]) -> tuple[VersionRoute, list[int]]:
        if len(candidates) == 1:
            return candidates[0]
        cumulative: list[int] = []
        total = 0
        for version, _ in candidates:
            total += version.weight
            cumulative.append(total)
        return candidates[bisect.bisect_right(cumulative, self._rng.random() * total)]

    def acquire(self, node_id: int) -> None:
        self.in_flight[node_id] = self.in_flight.get(node_id, 0) + 1

    def release(self, node_id: int) -> None:
        self.in_flight[node_id] = max(0, self.in_flight.get(node_id, 0) - 1)


registry = Registry()
