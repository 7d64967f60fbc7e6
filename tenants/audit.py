"""The audit log's one write: who (user or key), what, on which target, what changed, from where."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from core.audit import Actor
from tenants.models import AuditEvent, Tenant


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


def audit_record(
    *,
    actor: Actor,
    tenant: Tenant | None,
    action: str,
    target_type: str = "",
    target_id: str | int = "",
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """One audit event: who (user or key), what, on which target, what changed, from where."""
    return AuditEvent.objects.create(
        tenant=tenant,
        actor_user_id=actor.user_id,
        actor_key_id=actor.key_id,
        actor_label=actor.label[:254],
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        before={k: _json_value(v) for k, v in before.items()} if before is not None else None,
        after={k: _json_value(v) for k, v in after.items()} if after is not None else None,
        ip=actor.ip or None,
        request_id=actor.request_id[:128],
    )
