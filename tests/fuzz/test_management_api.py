"""Schema-driven fuzzing of the management API (`/api/schema/`) with schemathesis.

Every operation is called with requests generated from its schema; the run fails on a 5xx, on a
response that does not match what the schema declares (status code, content type, body) and on a
schema-valid request the API refuses (400). Bounded and derandomized so CI is reproducible.

schemathesis's pytest plugin does not run on our pytest, so the operations are driven by hand:
the Django WSGI app runs in-process, on the test's own database connection, and each case runs
in a savepoint that is rolled back, so one case (a revoked key, a suspended tenant) cannot change
what the next one sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.audit import SYSTEM
from gateway import services as gateway_services
from tenants import services as tenant_services
from tenants.permissions import ALL_SCOPES, Role
from tests import factories
from tests.fuzz import FUZZ

pytestmark = pytest.mark.django_db

SLUG = "fuzz"
EXAMPLES = 12
STAFF_EXAMPLES = 8
CSRF = "fuzzcsrfsecret0123456789abcdefgh"  # 32 characters: an unmasked CSRF secret
INFERENCE_SCOPES = frozenset({"inference", "models:read"})
ADMIN_SCOPES = frozenset(ALL_SCOPES) - {"inference"}
STAFF_ONLY = frozenset(
    {
        "tenants_create",
        "tenants_suspend",
        "tenants_reactivate",
        "tenants_close",
        "invoices_mark_paid",
        "limits_replace",
        "limits_update",
        "platform_invoices_export_csv",
        "platform_invoice_lines_export_csv",
    }
)
STAFF_PREFIXES = ("/api/v1/models/", "/api/v1/nodes/")
# Operations whose 400s depend on state no schema can state: the token is a credential the
# service checks (and a new user's password is checked by Django's password validators).
STATEFUL_INPUT = frozenset({"invitations_accept"})


@dataclass
class Seed:
    """Real objects, so that a share of the cases name things that exist (happy paths)."""

    ids: dict[str, str] = field(default_factory=dict)
    owner_key: str = ""
    staff_headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def app(db: Any) -> Iterator[Any]:
    # The app shares the test's connection and transaction: do not let it close them per request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def seed(app: Any) -> Seed:
    tenant, users = factories.tenant_with_members(SLUG)
    _, owner_raw = factories.admin_key(tenant, users[Role.OWNER])
    victim, _ = factories.inference_key(tenant, users[Role.DEVELOPER], name="fuzz victim")
    invitation, _ = tenant_services.invitation_create(
        tenant=tenant, email="invitee@fuzz.example.com", role=Role.VIEWER, actor=SYSTEM, send=False
    )
    model = gateway_services.model_create(name="fuzz-model", actor=SYSTEM)
    gateway_services.model_version_create(model=model, version="v1", actor=SYSTEM)
    gateway_services.node_register(name="fuzz-node", base_url="http://fuzz-node.example.com:8000", actor=SYSTEM)
    member = tenant.memberships.get(user=users[Role.VIEWER])
    staff = factories.staff_user()
    client = factories.session_client(staff)
    session = client.cookies["sessionid"].value
    return Seed(
        ids={
            "key_id": str(victim.pk),
            "member_id": str(member.pk),
            "invitation_id": str(invitation.pk),
            "version": "v1",
        },
        owner_key=owner_raw,
        staff_headers={"Cookie": f"sessionid={session}; csrftoken={CSRF}", "X-CSRFToken": CSRF},
    )


def _fix_up(case: Any, seed: Seed, real: bool) -> None:
    """Tenant slug always; real ids for a share of the cases; cross-field bounds the schema cannot say."""
    params = case.path_parameters or {}
    if "slug" in params:
        params["slug"] = SLUG
    if real:
        for name in params:
            if name in seed.ids:
                params[name] = seed.ids[name]
        if "name" in params:
            params["name"] = "fuzz-node" if case.path.startswith("/api/v1/nodes/") else "fuzz-model"
    query = case.query
    if query and case.operation.definition.raw.get("operationId", "").startswith("usage_list") and "start" in query:
        # At most 366 day buckets between start and end, and start before end (or now).
        now = int(time.time())
        query["start"] = str(now - 3 * 86_400)
        if "end" in query:
            query["end"] = str(now - 86_400)
    body = case.body if isinstance(case.body, dict) else None
    if body is not None and case.path.startswith("/api/v1/tenants/{slug}/keys/"):
        if body.get("expires_at") is not None:
            # A key's expiry must be in the future (relative to now, which no schema knows).
            body["expires_at"] = datetime.fromtimestamp(time.time() + 30 * 86_400, tz=UTC).isoformat()
        if isinstance(body.get("scopes"), list):
            # Which scopes a key may carry depends on its kind (a discriminated union we do not declare).
            allowed = ADMIN_SCOPES if body.get("kind") == "admin" else INFERENCE_SCOPES
            scopes = [scope for scope in body["scopes"] if scope in allowed]
            if scopes:
                body["scopes"] = scopes
            else:
                body.pop("scopes")
    if query and "created_after" in query and "created_before" in query:
        # created_before must be later than created_after.
        query.pop("created_before")


def _fuzz(
    app: Any, seed: Seed, headers: dict[str, str], select: Callable[[str, str], bool], examples: int
) -> list[str]:
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        op_id = operation.definition.raw.get("operationId", "")
        if not select(op_id, operation.path):
            continue

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(FUZZ, max_examples=examples)
        def run(case: Any, real: bool) -> None:
            _fix_up(case, seed, real)
            stateful = case.operation.definition.raw.get("operationId") in STATEFUL_INPUT
            excluded = [positive_data_acceptance] if stateful else []
            cache.clear()
            with transaction.atomic():
                try:
                    case.call_and_validate(headers=headers, excluded_checks=excluded)
                finally:
                    transaction.set_rollback(True)

        try:
            run()
        except BaseException as exc:
            failures.append(f"{operation.method.upper()} {operation.path} ({op_id}):\n{exc}")
    return failures


def _report(failures: list[str]) -> str:
    return f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)


def test_every_operation_with_an_owner_admin_key(app: Any, seed: Seed) -> None:
    failures = _fuzz(app, seed, {"Authorization": f"Bearer {seed.owner_key}"}, lambda op_id, path: True, EXAMPLES)
    assert not failures, _report(failures)


def test_staff_operations_with_a_staff_session(app: Any, seed: Seed) -> None:
    def staff_only(op_id: str, path: str) -> bool:
        return op_id in STAFF_ONLY or path.startswith(STAFF_PREFIXES)

    failures = _fuzz(app, seed, seed.staff_headers, staff_only, STAFF_EXAMPLES)
    assert not failures, _report(failures)
