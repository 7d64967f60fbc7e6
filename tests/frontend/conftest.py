"""Dashboard tests: fast password hashing, no sign-in lockout unless a test turns it on, and a
small world of two tenants with one user per role, keys, an invitation, usage and an invoice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from billing.models import Invoice, Plan
from billing.services.invoices import billing_run
from gateway import services as gateway_services
from gateway.models import Model, ModelVersionStatus
from tenants import services
from tenants.models import APIKey, Invitation, Tenant, User
from tenants.permissions import Role
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

SYSTEM = factories.SYSTEM
PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture(autouse=True)
def _dashboard_settings(settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_ENABLED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_ENABLED = False
    services.key_cache_reset()
    yield
    services.key_cache_reset()


@dataclass
class World:
    acme: Tenant
    globex: Tenant
    users: dict[Role, User]
    outsider: User  # the owner of globex: a member elsewhere, not of acme
    staff: User
    keys: dict[Role, tuple[APIKey, str]] = field(default_factory=dict)
    invitation: Invitation | None = None
    model: Model | None = None
    plan: Plan | None = None
    invoice: Invoice | None = None

    def user(self, who: str) -> User | None:
        if who == "anonymous":
            return None
        if who == "staff":
            return self.staff
        if who == "outsider":
            return self.outsider
        return self.users[Role(who)]


def last_month_start(now: datetime | None = None) -> datetime:
    first = (now or timezone.now()).astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def this_month_moment() -> datetime:
    """A moment a little in the past that is still in this month (also just after midnight on the 1st)."""
    now = timezone.now()
    return max(now - timedelta(hours=1), now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


# The dashboard speaks of "this month" and "the last 30 days", so its tests run on a frozen clock:
# by default the middle of a month; a test that needs a calendar edge parametrizes `clock`.
MID_MONTH = datetime(2026, 3, 17, 14, 30, tzinfo=UTC)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Iterator[datetime]:
    moment: datetime = getattr(request, "param", MID_MONTH)
    with time_machine.travel(moment, tick=False):
        yield moment


@pytest.fixture
def world(db: None, clock: datetime) -> World:
    acme, users = factories.tenant_with_members("acme", password=PASSWORD)
    globex, globex_users = factories.tenant_with_members("globex", roles=[Role.OWNER], password=PASSWORD)
    staff = factories.staff_user("staff@example.com", password=PASSWORD)
    w = World(acme=acme, globex=globex, users=users, outsider=globex_users[Role.OWNER], staff=staff)
    model = gateway_services.model_create(name="demo-llama", actor=SYSTEM, description="A tiny demo model")
    gateway_services.model_version_create(
        model=model, version="v1", actor=SYSTEM, status=ModelVersionStatus.ACTIVE, traffic_weight=100
    )
    gateway_services.model_grant_create(tenant=acme, model=model, actor=SYSTEM)
    w.model = model
    # Each role that may write keys owns one; the owner's key stands in for the others.
    for role in (Role.OWNER, Role.ADMIN, Role.DEVELOPER):
        w.keys[role] = factories.inference_key(acme, users[role], name=f"{role.value} key")
    w.invitation, _ = services.invitation_create(
        tenant=acme, email="invitee@example.com", role=Role.VIEWER, actor=SYSTEM, send=False
    )
    priced = plan_with_price(name="Starter", base_fee="10.00", input_per_1m="1.0", output_per_1m="2.0")
    subscribe_directly(acme, priced.plan)
    w.plan = priced.plan
    start = last_month_start()
    owner_key = w.keys[Role.OWNER][0]
    ledger_add(
        [
            journal_record(acme, key=owner_key.pk, prompt=1000, completion=500, at=start + timedelta(days=2)),
            journal_record(acme, key=owner_key.pk, prompt=300, completion=200, at=this_month_moment()),
        ]
    )
    billing_run(period=start.strftime("%Y-%m"))
    w.invoice = Invoice.objects.get(tenant=acme)
    return w


def client_for(user: User | None, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client
