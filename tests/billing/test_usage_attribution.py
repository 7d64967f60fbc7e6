"""The usage API grouped and filtered by end user (`user` / `safety_identifier`) and metadata tags,
from the ledger; other tenants' usage, roles without usage:read and malformed filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import UsageRecord
from tenants.models import AuditEvent
from tenants.permissions import Role
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
JAN = datetime(2026, 1, 1, tzinfo=UTC)
URL = "/api/v1/tenants/acme-attr/usage"
RANGE = "start=2026-01-01&end=2026-01-04"


def _record(
    tenant: Any, day: int, prompt: int, *, user: str = "", tags: dict[str, str] | None = None
) -> dict[str, Any]:
    at = JAN + timedelta(days=day, hours=3)
    return {**journal_record(tenant, prompt=prompt, completion=10, at=at), "end_user": user, "metadata": tags or {}}


@pytest.fixture
def world() -> dict[str, Any]:
    acme, users = factories.tenant_with_members("acme-attr")
    globex, globex_users = factories.tenant_with_members("globex-attr", roles=[Role.OWNER])
    priced = plan_with_price(input_per_1m="1.000000", output_per_1m="2.000000")
    subscribe_directly(acme, priced.plan)
    subscribe_directly(globex, priced.plan)
    ledger_add(
        [
            _record(acme, 0, 100, user="alice", tags={"team": "search", "env": "prod"}),
            _record(acme, 0, 200, user="bob", tags={"team": "search"}),
            _record(acme, 1, 400, user="alice", tags={"team": "ads"}),
            _record(acme, 2, 800),  # no attribution
            # Another tenant with the same user and tag: never counted for acme.
            _record(globex, 0, 10_000, user="alice", tags={"team": "search"}),
        ]
    )
    return {"acme": acme, "users": users, "globex_owner": globex_users[Role.OWNER]}


def _results(client: Any, query: str) -> list[dict[str, Any]]:
    response = client.get(f"{URL}?{RANGE}&{query}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["data"]) == 3  # every day bucket, filtered or not
    return [r for b in body["data"] for r in b["results"]]


def _totals(results: list[dict[str, Any]], field: str) -> dict[Any, int]:
    totals: dict[Any, int] = {}
    for r in results:
        name = r[field] if field != "team" else r["metadata"]["team"]
        totals[name] = totals.get(name, 0) + r["input_tokens"]
    return totals


def test_group_by_user_sums_the_ledger_per_end_user(world: dict[str, Any]) -> None:
    client = factories.session_client(world["users"][Role.VIEWER])
    results = _results(client, "group_by=user")
    assert _totals(results, "user") == {"alice": 500, "bob": 200, "": 800}
    alice = [r for r in results if r["user"] == "alice"]
    assert sum(r["num_model_requests"] for r in alice) == 2
    # Cost is the ledger's: (prompt * 1 + completion * 2) per 1M tokens.
    expected = sum(
        (r.cost for r in UsageRecord.objects.filter(tenant=world["acme"], end_user="alice")), start=Decimal(0)
    )
    assert sum(Decimal(r["cost"]["value"]) for r in alice) == expected.quantize(Decimal("0.000001"))
    # Grouped by model and user together; unattributed shape stays OpenAI's without the flag.
    both = _results(client, "group_by=model,user")
    assert {(r["model"], r["user"]) for r in both} == {
        ("demo-llama", "alice"),
        ("demo-llama", "bob"),
        ("demo-llama", ""),
    }
    assert all("user" not in r for r in _results(client, "group_by=model"))


def test_metadata_filter_and_grouping(world: dict[str, Any]) -> None:
    client = factories.session_client(world["users"][Role.FINANCE])
    search = _results(client, "metadata.team=search&group_by=user")
    assert _totals(search, "user") == {"alice": 100, "bob": 200}
    assert _results(client, "metadata.team=search&metadata.env=prod") and _totals(
        _results(client, "metadata.team=search&metadata.env=prod&group_by=user"), "user"
    ) == {"alice": 100}
    assert _results(client, "metadata.team=nobody") == []
    by_team = _results(client, "group_by=metadata.team")
    assert _totals(by_team, "team") == {"search": 300, "ads": 400, None: 800}
    assert _totals(_results(client, "users=alice,bob&group_by=user"), "user") == {"alice": 500, "bob": 200}
    assert _totals(_results(client, "users=alice&metadata.team=ads&group_by=user"), "user") == {"alice": 400}
    # One query for the buckets whatever the filters (plus the request's own reads).
    with CaptureQueriesContext(connection) as plain:
        _results(client, "group_by=user")
    with CaptureQueriesContext(connection) as filtered:
        _results(client, "group_by=user,metadata.team&metadata.env=prod&users=alice")
    assert len(filtered.captured_queries) == len(plain.captured_queries)


def test_other_tenants_and_roles(world: dict[str, Any]) -> None:
    # A member of another tenant: 404, as if acme did not exist.
    outsider = factories.session_client(world["globex_owner"])
    assert outsider.get(f"{URL}?{RANGE}&group_by=user").status_code == 404
    # An admin key without usage:read: 403; an inference key: 401.
    _, narrow = factories.admin_key(world["acme"], scopes=["keys:read"])
    assert factories.key_client(narrow).get(f"{URL}?{RANGE}&metadata.team=search").status_code == 403
    _, inference = factories.inference_key(world["acme"])
    assert factories.key_client(inference).get(f"{URL}?{RANGE}&group_by=user").status_code == 401
    _, reader = factories.admin_key(world["acme"], scopes=["usage:read"])
    results = _results(factories.key_client(reader), "metadata.team=search&group_by=user")
    assert sum(r["input_tokens"] for r in results) == 300  # never globex's 10 000


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("group_by=metadata.", "group_by"),
        ("group_by=metadata." + "k" * 65, "group_by"),
        ("group_by=users", "group_by"),
        ("group_by=" + ",".join(f"metadata.k{i}" for i in range(17)), "group_by"),
        ("metadata.=search", "metadata."),
        ("metadata." + "k" * 65 + "=x", "metadata." + "k" * 65),
        ("metadata.team=" + "v" * 513, "metadata.team"),
        ("metadata.team=a&metadata.team=b", "metadata.team"),
        ("&".join(f"metadata.k{i}=v" for i in range(17)), "metadata"),
        ("users=", "users"),
        ("users=alice,,bob", "users"),
        ("users=" + "u" * 257, "users"),
        ("users=" + ",".join(f"u{i}" for i in range(101)), "users"),
        ("metadata_team=search", "metadata_team"),
    ],
)
def test_malformed_attribution_filters_are_400(world: dict[str, Any], query: str, param: str) -> None:
    client = factories.session_client(world["users"][Role.OWNER])
    events = AuditEvent.objects.count()
    response = client.get(f"{URL}?{RANGE}&{query}")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert AuditEvent.objects.count() == events
