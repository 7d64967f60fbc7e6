"""Writes to the model and node registry. Every mutation by a person is audited.

Each write drops this process's routing snapshot once committed; other gateway processes
pick the change up within GATEWAY_REGISTRY_REFRESH_S.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import Actor
from core.errors import Conflict, ValidationFailed
from core.validation import full_clean_or_raise
from gateway.models import (
    GrantSource,
    InferenceNode,
    Model,
    ModelGrant,
    ModelVersion,
    ModelVersionStatus,
    NodeState,
)
from gateway.registry import registry
from tenants.audit import audit_record
from tenants.models import Tenant
from wire.client import probe_ready

logger = logging.getLogger(__name__)


def _invalidate() -> None:
    transaction.on_commit(registry.invalidate)


def _model_state(model: Model) -> dict[str, Any]:
    return {"name": model.name, "description": model.description, "owned_by": model.owned_by}


def _version_state(version: ModelVersion) -> dict[str, Any]:
    return {
        "model": version.model.name,
        "version": version.version,
        "engine": version.engine,
        "artifact_uri": version.artifact_uri,
        "parameters": version.parameters,
        "status": version.status,
        "traffic_weight": version.traffic_weight,
    }


def _node_state(node: InferenceNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "base_url": node.base_url,
        "state": node.state,
        "versions": sorted(v.label for v in node.versions.select_related("model")),
    }


# --- models ---------------------------------------------------------------------------------------
@transaction.atomic
def model_create(*, name: str, actor: Actor, description: str = "", owned_by: str = "mm-orch") -> Model:
    model = Model(name=name, description=description, owned_by=owned_by or "mm-orch")
    full_clean_or_raise(model)
    if Model.objects.filter(name=name).exists():
        raise Conflict(f"A model named {name!r} already exists.", param="name", code="already_exists")
    model.save()
    audit_record(
        actor=actor,
        tenant=None,
        action="model.create",
        target_type="model",
        target_id=model.pk,
        after=_model_state(model),
    )
    _invalidate()
    return model


@transaction.atomic
def model_update(*, model: Model, actor: Actor, **fields: Any) -> Model:
    allowed = {"description", "owned_by"}
    for name in fields:
        if name not in allowed:
            raise ValidationFailed(f"{name!r} cannot be changed.", param=name, code="unknown_field")
    before = _model_state(model)
    for name, value in fields.items():
        setattr(model, name, value)
    full_clean_or_raise(model)
    model.save()
    audit_record(
        actor=actor,
        tenant=None,
        action="model.update",
        target_type="model",
        target_id=model.pk,
        before=before,
        after=_model_state(model),
    )
    _invalidate()
    return model


@transaction.atomic
def model_delete(*, model: Model, actor: Actor) -> None:
    before = _model_state(model)
    pk = model.pk
    model.delete()
    audit_record(actor=actor, tenant=None, action="model.delete", target_type="model", target_id=pk, before=before)
    _invalidate()


# --- versions -------------------------------------------------------------------------------------
def _check_version_fields(status: str | None, traffic_weight: Any, parameters: Any) -> None:
    if status is not None and status not in ModelVersionStatus.values:
        raise ValidationFailed(
            f"status must be one of {', '.join(ModelVersionStatus.values)}.", param="status", code="invalid_choice"
        )
    if traffic_weight is not None and (
        isinstance(traffic_weight, bool) or not isinstance(traffic_weight, int) or traffic_weight < 0
    ):
        raise ValidationFailed("traffic_weight is a whole number >= 0.", param="traffic_weight")
    if parameters is not None and not isinstance(parameters, dict):
        raise ValidationFailed("parameters must be a JSON object.", param="parameters")


@transaction.atomic
def model_version_create(
    *,
    model: Model,
    version: str,
    actor: Actor,
    engine: str = "torch",
    artifact_uri: str = "",
    parameters: Mapping[str, Any] | None = None,
    status: str = ModelVersionStatus.DRAFT,
    traffic_weight: int = 100,
) -> ModelVersion:
    _check_version_fields(status, traffic_weight, dict(parameters or {}))
    row = ModelVersion(
        model=model,
        version=version,
        engine=engine,
        artifact_uri=artifact_uri,
        parameters=dict(parameters or {}),
        status=status,
        traffic_weight=traffic_weight,
    )
    full_clean_or_raise(row, exclude=["model"])
    if ModelVersion.objects.filter(model=model, version=version).exists():
        raise Conflict(f"{model.name} already has a version {version!r}.", param="version", code="already_exists")
    row.save()
    audit_record(
        actor=actor,
        tenant=None,
        action="model_version.create",
        target_type="model_version",
        target_id=row.pk,
        after=_version_state(row),
    )
    _invalidate()
    return row


@transaction.atomic
def model_version_update(*, version: ModelVersion, actor: Actor, **fields: Any) -> ModelVersion:
    """Change status (draft → active → retired), traffic weight, parameters, artifact or engine."""
    allowed = {"status", "traffic_weight", "parameters", "artifact_uri", "engine"}
    for name in fields:
        if name not in allowed:
            raise ValidationFailed(f"{name!r} cannot be changed.", param=name, code="unknown_field")
    _check_version_fields(fields.get("status"), fields.get("traffic_weight"), fields.get("parameters"))
    before = _version_state(version)
    for name, value in fields.items():
        setattr(version, name, value)
    full_clean_or_raise(version, exclude=["model"])
    version.save()
    after = _version_state(version)
    if after != before:
        audit_record(
            actor=actor,
            tenant=None,
            action="model_version.update",
            target_type="model_version",
            target_id=version.pk,
            before=before,
            after=after,
        )
    _invalidate()
    return version


@transaction.atomic
def model_traffic_set(*, model: Model, weights: Mapping[str, int], actor: Actor) -> list[ModelVersion]:
    """Set the traffic split of a model's versions in one step, e.g. {"v1": 90, "v2": 10}."""
    versions = {v.version: v for v in ModelVersion.objects.select_for_update().filter(model=model)}
    for name, weight in weights.items():
        if name not in versions:
            raise ValidationFailed(f"{model.name} has no version {name!r}.", param="weights", code="unknown_version")
        _check_version_fields(None, weight, None)
    changed = []
    for name, weight in weights.items():
        row = versions[name]
        if row.traffic_weight != weight:
            row.traffic_weight = weight
            row.save(update_fields=["traffic_weight"])
            changed.append(row)
    before = {name: versions[name].traffic_weight for name in versions}
    audit_record(
        actor=actor,
        tenant=None,
        action="model.traffic_set",
        target_type="model",
        target_id=model.pk,
        after={"weights": dict(weights)},
        before={"weights": before},
    )
    _invalidate()
    return list(versions.values())


# --- grants ---------------------------------------------------------------------------------------
def _check_source(source: str) -> None:
    if source not in GrantSource.values:
        raise ValidationFailed("source must be 'plan' or 'grant'.", param="source", code="invalid_choice")


@transaction.atomic
def model_grant_create(*, tenant: Tenant, model: Model, actor: Actor, source: str = GrantSource.GRANT) -> ModelGrant:
    _check_source(source)
    grant, created = ModelGrant.objects.get_or_create(tenant=tenant, model=model, source=source)
    if created:
        audit_record(
            actor=actor,
            tenant=tenant,
            action="model_grant.create",
            target_type="model_grant",
            target_id=grant.pk,
            after={"model": model.name, "source": source},
        )
        _invalidate()
    return grant


@transaction.atomic
def model_grant_delete(*, tenant: Tenant, model: Model, actor: Actor, source: str = GrantSource.GRANT) -> None:
    _check_source(source)
    deleted, _ = ModelGrant.objects.filter(tenant=tenant, model=model, source=source).delete()
    if deleted:
        audit_record(
            actor=actor,
            tenant=tenant,
            action="model_grant.delete",
            target_type="model_grant",
            target_id=model.pk,
            before={"model": model.name, "source": source},
        )
        _invalidate()


@transaction.atomic
def model_grants_sync(*, tenant: Tenant, model_names: Iterable[str], source: str, actor: Actor) -> list[ModelGrant]:
    """Make the tenant's grants of `source` exactly `model_names` (billing: on plan subscribe)."""
    _check_source(source)
    wanted = set(model_names)
    found = {m.name: m for m in Model.objects.filter(name__in=wanted)}
    missing = sorted(wanted - set(found))
    if missing:
        raise ValidationFailed(f"Unknown model: {missing[0]}.", param="model_names", code="unknown_model")
    current = {g.model.name: g for g in ModelGrant.objects.select_related("model").filter(tenant=tenant, source=source)}
    added = sorted(wanted - set(current))
    removed = sorted(set(current) - wanted)
    if removed:
        ModelGrant.objects.filter(tenant=tenant, source=source, model__name__in=removed).delete()
    for name in added:
        ModelGrant.objects.create(tenant=tenant, model=found[name], source=source)
    if added or removed:
        audit_record(
            actor=actor,
            tenant=tenant,
            action="model_grant.sync",
            target_type="tenant",
            target_id=tenant.pk,
            before={"source": source, "models": sorted(current)},
            after={"source": source, "models": sorted(wanted)},
        )
        _invalidate()
    return list(ModelGrant.objects.select_related("model").filter(tenant=tenant, source=source))


# --- nodes ----------------------------------------------------------------------------------------
def _check_state(state: str) -> None:
    if state not in NodeState.values:
        raise ValidationFailed(f"state must be one of {', '.join(NodeState.values)}.", param="state")


@transaction.atomic
def node_register(
    *,
    name: str,
    base_url: str,
    actor: Actor,
    versions: Iterable[ModelVersion] = (),
    state: str = NodeState.DOWN,
) -> InferenceNode:
    """Create the node, or update the one with this name (idempotent: set-up scripts rerun it).

    A new node starts down unless told otherwise; the health probe brings it up.
    """
    _check_state(state)
    node = InferenceNode.objects.select_for_update().filter(name=name).first()
    created = node is None
    before = None if node is None else _node_state(node)
    if node is None:
        node = InferenceNode(name=name, base_url=base_url, state=state)
    else:
        node.base_url = base_url
        if node.state != state:
            node.state, node.state_changed_at = state, timezone.now()
    full_clean_or_raise(node)
    try:
        node.save()
    except IntegrityError:
        raise Conflict(f"A node named {name!r} already exists.", param="name", code="already_exists") from None
    node.versions.set(list(versions))
    after = _node_state(node)
    if after != before:
        audit_record(
            actor=actor,
            tenant=None,
            action="node.register" if created else "node.update",
            target_type="inference_node",
            target_id=node.pk,
            before=before,
            after=after,
        )
    _invalidate()
    return node


@transaction.atomic
def node_update(
    *,
    node: InferenceNode,
    actor: Actor,
    base_url: str | None = None,
    versions: Iterable[ModelVersion] | None = None,
    state: str | None = None,
) -> InferenceNode:
    """Staff edits; `state="draining"` takes the node out of routing until set back."""
    before = _node_state(node)
    if base_url is not None:
        node.base_url = base_url
    if state is not None:
        _check_state(state)
        if node.state != state:
            node.state, node.state_changed_at = state, timezone.now()
    full_clean_or_raise(node)
    node.save()
    if versions is not None:
        node.versions.set(list(versions))
    after = _node_state(node)
    if after != before:
        audit_record(
            actor=actor,
            tenant=None,
            action="node.update",
            target_type="inference_node",
            target_id=node.pk,
            before=before,
            after=after,
        )
    _invalidate()
    return node


@transaction.atomic
def node_delete(*, node: InferenceNode, actor: Actor) -> None:
    before = _node_state(node)
    pk = node.pk
    node.delete()
    audit_record(
        actor=actor, tenant=None, action="node.delete", target_type="inference_node", target_id=pk, before=before
    )
    _invalidate()


def node_health_record(*, node: InferenceNode, ready: bool, error: str = "") -> InferenceNode:
    """The probe's verdict. A draining node keeps its state; only its heartbeat moves."""
    now = timezone.now()
    fields: dict[str, Any] = {}
    if ready:
        fields["last_heartbeat_at"] = now
        fields["last_error"] = ""
    else:
        fields["last_error"] = (error or "not ready")[:500]
    if node.state != NodeState.DRAINING:
        state = NodeState.UP if ready else NodeState.DOWN
        if state != node.state:
            fields["state"], fields["state_changed_at"] = state, now
            logger.warning("gateway: node %s is now %s", node.name, state)
    InferenceNode.objects.filter(pk=node.pk).update(**fields)
    for name, value in fields.items():
        setattr(node, name, value)
    if "state" in fields:
        registry.invalidate()
    return node


def nodes_probe() -> dict[str, str]:
    """Probe every node's /ready (in parallel) and record the result; returns name → state."""
    nodes = list(InferenceNode.objects.all())
    if not nodes:
        return {}
    timeout = settings.GATEWAY_NODE_PROBE_TIMEOUT_S
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        results = list(pool.map(lambda n: probe_ready(n.base_url, timeout), nodes))
    return {
        node.name: node_health_record(node=node, ready=ok, error="" if ok else "/ready did not answer 200").state
        for node, ok in zip(nodes, results, strict=True)
    }
