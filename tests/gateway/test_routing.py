"""Version choice by traffic weight and node choice by load."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from gateway import services
from gateway.models import NodeState
from gateway.registry import ModelRoute, NodeInfo, Registry, Snapshot, VersionRoute, snapshot_load
from tests import factories


def snapshot(versions: list[VersionRoute], nodes: int = 2) -> tuple[Snapshot, ModelRoute]:
    route = ModelRoute("m", "mm-orch", 0, tuple(versions))
    node_map = {i: NodeInfo(i, f"n{i}", f"http://127.0.0.1:{9000 + i}") for i in range(1, nodes + 1)}
    return Snapshot({"m": route}, node_map, {}), route


def test_90_10_split_over_1000_requests() -> None:
    snap, route = snapshot([VersionRoute(1, "m@v1", "v1", 90, (1,)), VersionRoute(2, "m@v2", "v2", 10, (2,))])
    reg = Registry()
    counts = Counter(reg.pick(snap, route)[0].label for _ in range(1000))  # type: ignore[index]
    # Binomial(1000, 0.1): sd = sqrt(1000 * 0.1 * 0.9) ≈ 9.5; 4 sd either side fails about 1 run in 16,000.
    sd = math.sqrt(1000 * 0.1 * 0.9)
    assert abs(counts["m@v2"] - 100) <= 4 * sd, counts
    assert counts["m@v1"] + counts["m@v2"] == 1000


def test_least_busy_node_is_chosen() -> None:
    snap, route = snapshot([VersionRoute(1, "m@v1", "v1", 100, (1, 2, 3))], nodes=3)
    reg = Registry()
    reg.acquire(1)
    reg.acquire(1)
    reg.acquire(2)
    assert {reg.pick(snap, route)[1].id for _ in range(50)} == {3}  # type: ignore[index]
    reg.acquire(3)
    assert {reg.pick(snap, route)[1].id for _ in range(50)} == {2, 3}  # type: ignore[index]


def test_failed_node_is_skipped_and_version_without_nodes_is_not_chosen(settings: Any) -> None:
    settings.GATEWAY_NODE_FAIL_COOLDOWN_S = 60
    snap, route = snapshot([VersionRoute(1, "m@v1", "v1", 50, (1, 2)), VersionRoute(2, "m@v2", "v2", 50, ())])
    reg = Registry()
    reg.node_failed(1)
    picks = {(v.label, n.id) for v, n in (reg.pick(snap, route) for _ in range(50))}  # type: ignore[misc]
    assert picks == {("m@v1", 2)}
    assert reg.pick(snap, route, frozenset({2})) is not None  # a failed node beats nothing
    assert reg.pick(snap, route, frozenset({1, 2})) is None


@pytest.mark.django_db
def test_retired_and_draft_versions_are_never_chosen(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    actor = factories.SYSTEM
    model = services.model_create(name="canary-model", actor=actor)
    stable = services.model_version_create(model=model, version="v1", status="active", traffic_weight=90, actor=actor)
    canary = services.model_version_create(model=model, version="v2", status="active", traffic_weight=10, actor=actor)
    retired = services.model_version_create(
        model=model, version="v0", status="retired", traffic_weight=500, actor=actor
    )
    draft = services.model_version_create(model=model, version="v3", status="draft", traffic_weight=500, actor=actor)
    services.node_register(name="n1", base_url="http://127.0.0.1:9001", versions=[stable, retired, draft], state="up",
                           actor=actor)  # fmt: skip
    services.node_register(name="n2", base_url="http://127.0.0.1:9002", versions=[canary], state="up", actor=actor)
    services.node_register(name="n3", base_url="http://127.0.0.1:9003", versions=[stable], state=NodeState.DOWN,
                           actor=actor)  # fmt: skip
    snap = snapshot_load()
    route = snap.models["canary-model"]
    assert {v.label for v in route.versions} == {"canary-model@v1", "canary-model@v2"}
    reg = Registry()
    counts = Counter()
    nodes = Counter()
    for _ in range(1000):
        version, node = reg.pick(snap, route)  # type: ignore[misc]
        counts[version.label] += 1
        nodes[node.name] += 1
    assert set(counts) == {"canary-model@v1", "canary-model@v2"}
    assert abs(counts["canary-model@v2"] - 100) <= 4 * math.sqrt(1000 * 0.1 * 0.9)
    assert "n3" not in nodes  # down nodes take nothing
    # Retiring the canary moves all traffic to v1.
    services.model_version_update(version=canary, status="retired", actor=actor)
    snap = snapshot_load()
    assert {reg.pick(snap, snap.models["canary-model"])[0].label for _ in range(100)} == {"canary-model@v1"}  # type: ignore[index]
