"""Spend anomaly alerts: today's spend against the trailing daily average, by email and webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import time_machine
from django.core import mail

from billing.models import AlertKind, UsageAlert
from billing.services.anomalies import spend_jump_check
from billing.tasks import spend_jump_check_task
from tenants.models import Tenant
from tenants.permissions import Role
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
PER_REQUEST = Decimal("0.03")  # 30 tokens at 1000 per 1M


class Receiver:
    """A real HTTP endpoint that records what is posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                assert self.headers["Content-Type"] == "application/json"
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    r = Receiver()
    settings.BILLING_ALERT_WEBHOOK_URL = r.url
    settings.BILLING_SPEND_JUMP_FACTOR = 3.0
    settings.BILLING_SPEND_JUMP_DAYS = 7
    settings.BILLING_SPEND_JUMP_MIN = Decimal("0.01")
    yield r
    r.server.shutdown()
    r.server.server_close()


def spend(tenant: Tenant, at: datetime, requests: int) -> None:
    ledger_add([journal_record(tenant, at=at) for _ in range(requests)])


def priced_tenant(slug: str) -> Tenant:
    tenant, _ = factories.tenant_with_members(slug, roles=[Role.OWNER, Role.FINANCE])
    subscribe_directly(tenant, plan_with_price(input_per_1m="1000", output_per_1m="1000").plan)
    return tenant


# Month and year edges: the trailing week lies in the previous month (and year).
@pytest.mark.parametrize("now", [datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2027, 1, 1, 0, 30, tzinfo=UTC)])
def test_a_jump_over_a_month_edge_is_mailed_and_posted_once(receiver: Receiver, now: datetime) -> None:
    tenant = priced_tenant(f"jumpy-{now.year}")
    steady = priced_tenant(f"steady-{now.year}")
    with time_machine.travel(now - timedelta(days=8), tick=False):
        for day in range(1, 8):  # one request a day in the previous seven days
            spend(tenant, now - timedelta(days=day), 1)
            spend(steady, now - timedelta(days=day), 1)
        spend(tenant, now - timedelta(days=8), 50)  # outside the window: ignored
    with time_machine.travel(now, tick=False):
        spend(tenant, now - timedelta(minutes=20), 4)  # 0.12 > 3 x 0.03
        spend(steady, now - timedelta(minutes=20), 3)  # 0.09: exactly 3x is not above it
        sent = spend_jump_check()
        assert [a.tenant_id for a in sent] == [tenant.pk]
        alert = sent[0]
        day = now.date().isoformat()
        assert (alert.kind, alert.period, alert.threshold) == (AlertKind.SPEND_JUMP, day, 300)
        assert alert.usage_value == 4 * PER_REQUEST and alert.limit_value == 3 * PER_REQUEST
        assert len(mail.outbox) == 1
        message = mail.outbox[0]
        assert sorted(message.to) == sorted(alert.recipients) and len(message.to) == 2  # owner and finance
        assert f"spend on {day} is 4.0x its daily average" in message.subject
        assert receiver.bodies == [
            {
                "type": "spend_jump",
                "tenant": tenant.slug,
                "day": day,
                "spend": "0.12",
                "trailing_daily_average": "0.03",
                "trailing_days": 7,
                "factor": "3.0",
                "ratio": "4.0",
                "currency": "USD",
            }
        ]
        # The hourly task runs again: nothing new is sent the same day.
        assert spend_jump_check_task() == 0
    assert len(mail.outbox) == 1 and len(receiver.bodies) == 1
    # The next day is judged afresh, against a window that now holds the jump.
    with time_machine.travel(now + timedelta(days=1), tick=False):
        spend(tenant, now + timedelta(days=1) - timedelta(minutes=1), 2)
        assert spend_jump_check() == []


def test_no_history_or_below_the_minimum_is_not_an_anomaly(receiver: Receiver, settings: Any) -> None:
    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    newcomer = priced_tenant("newcomer")
    with time_machine.travel(now, tick=False):
        spend(newcomer, now - timedelta(hours=1), 100)  # no spend before today: no average to jump from
        assert spend_jump_check() == []
        settings.BILLING_SPEND_JUMP_MIN = Decimal("100")
        spend(newcomer, now - timedelta(days=2), 1)
        assert spend_jump_check() == []  # a jump, but under the minimum worth an alert
    assert mail.outbox == [] and receiver.bodies == []


def test_a_dead_webhook_still_records_and_mails(receiver: Receiver, settings: Any, caplog: Any) -> None:
    now = datetime(2026, 6, 3, 9, tzinfo=UTC)
    tenant = priced_tenant("hooked")
    settings.BILLING_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/unreachable"
    with time_machine.travel(now, tick=False):
        spend(tenant, now - timedelta(days=1), 1)
        spend(tenant, now - timedelta(minutes=5), 30)
        assert len(spend_jump_check()) == 1
    assert UsageAlert.objects.filter(tenant=tenant, kind=AlertKind.SPEND_JUMP).count() == 1
    assert len(mail.outbox) == 1
    assert "spend jump webhook for tenant hooked failed" in caplog.text
