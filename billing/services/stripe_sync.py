"""Pushing issued invoices to Stripe and applying its webhooks.

Every write to Stripe carries an idempotency key derived from our own ids, so a retried task
(or the library's own network retries) never creates a second customer, item or invoice.
"""

from __future__ import annotations

import logging
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, Invoice, InvoiceKind, InvoiceStatus, LineType, StripeEvent
from billing.services.invoices import (
    invoice_mark_paid,
    invoice_mark_uncollectible,
    invoice_payment_failed,
    invoice_void,
)
from core.audit import Actor
from core.errors import ServiceError, ValidationFailed
from tenants.models import Tenant

logger = logging.getLogger(__name__)
STRIPE_ACTOR = Actor(label="stripe")


class StripeDisabled(Exception):
    """Stripe is not configured (no STRIPE_API_KEY)."""


def stripe_client() -> stripe.StripeClient:
    if not settings.STRIPE_API_KEY:
        raise StripeDisabled("STRIPE_API_KEY is not set")
    base = settings.STRIPE_API_BASE or None
    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        base_addresses={"api": base} if base else None,
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )


def idempotency_key(*parts: object) -> str:
    return "mmorch-" + "-".join(str(p) for p in parts)


def stripe_customer_ensure(*, tenant: Tenant, client: stripe.StripeClient | None = None) -> str:
    """The tenant's Stripe customer id, created once."""
    account, _ = BillingAccount.objects.get_or_create(tenant=tenant)
    if account.stripe_customer_id:
        return account.stripe_customer_id
    client = client or stripe_client()
    customer = client.v1.customers.create(
        params={  # type: ignore[arg-type]
            "name": tenant.name,
            "email": tenant.billing_email or None,  # type: ignore[typeddict-item]
            "metadata": {"mmorch_tenant_id": str(tenant.pk), "mmorch_tenant_slug": tenant.slug},
        },
        options={"idempotency_key": idempotency_key("customer", tenant.pk)},
    )
    BillingAccount.objects.filter(pk=account.pk).update(stripe_customer_id=customer.id, updated_at=timezone.now())
    return str(customer.id)


def invoice_stripe_push(*, invoice_id: int) -> str:
    """Creates the Stripe invoice with one item per line and finalizes it; returns its Stripe id.

    Safe to call again after any failure: each step is keyed by our invoice and line ids.
    """
    invoice = Invoice.objects.select_related("tenant").get(pk=invoice_id)
    if invoice.kind != InvoiceKind.INVOICE or invoice.status == InvoiceStatus.DRAFT:
        raise ValidationFailed("Only issued invoices go to Stripe.", code="invoice_not_issued")
    client = stripe_client()
    customer_id = stripe_customer_ensure(tenant=invoice.tenant, client=client)
    currency = invoice.currency.lower()
    metadata = {"mmorch_invoice_id": str(invoice.pk), "mmorch_invoice_number": invoice.number or ""}
    remote = client.v1.invoices.create(
        params={
            "customer": customer_id,
            "currency": currency,
            "collection_method": "send_invoice",
            "days_until_due": settings.BILLING_NET_DAYS,
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "description": f"{invoice.number} ({invoice.period_start:%Y-%m})",
            "metadata": metadata,
        },
        options={"idempotency_key": idempotency_key("invoice", invoice.pk)},
    )
    stripe_id = str(remote.id)
    if invoice.stripe_invoice_id != stripe_id:
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_id)
    for line in invoice.lines.all():
        params: dict[str, Any] = {
            "customer": customer_id,
            "invoice": stripe_id,
            "currency": currency,
            "description": line.description,
            "metadata": {"mmorch_invoice_line_id": str(line.pk)},
        }
        if line.line_type == LineType.USAGE:
            # Our rounded line amount in minor units; the exact price stays in the description.
            params["quantity"] = 1
            params["unit_amount_decimal"] = str(line.amount_minor)
            params["description"] = (f"{line.description}: {line.units:,} tokens at {line.unit_price_per_1m} per 1M")[
                :500
            ]
        elif line.amount_minor >= 0:
            params["quantity"] = 1
            params["unit_amount_decimal"] = str(line.amount_minor)
        else:
            params["amount"] = line.amount_minor  # discounts are negative amounts
        client.v1.invoice_items.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key("invoice", invoice.pk, "line", line.pk)},
        )
    client.v1.invoices.finalize_invoice(
        stripe_id,
        params={"auto_advance": True},
        options={"idempotency_key": idempotency_key("invoice", invoice.pk, "finalize")},
    )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_synced_at=timezone.now())
    return stripe_id


def _invoice_for_event(obj: dict[str, Any]) -> Invoice | None:
    metadata = obj.get("metadata") or {}
    raw_id = str(metadata.get("mmorch_invoice_id") or "")
    if raw_id.isdigit():
        found = Invoice.objects.filter(pk=int(raw_id)).first()
        if found is not None:
            return found
    stripe_id = obj.get("id")
    if isinstance(stripe_id, str) and stripe_id:
        return Invoice.objects.filter(stripe_invoice_id=stripe_id).first()
    return None


def stripe_webhook_handle(*, payload: bytes, signature: str) -> str:
    """Verifies and applies one webhook delivery; returns what was done.

    Raises `stripe.SignatureVerificationError` for a missing, wrong or stale signature and
    ValueError for a body that is not an event.
    """
    event = stripe.Webhook.construct_event(
        payload, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_S
    )
    data: dict[str, Any] = event.to_dict()
    event_id = str(data.get("id") or "")
    event_type = str(data.get("type") or "")
    if not event_id:
        raise ValueError("event without an id")
    with transaction.atomic():
        _, created = StripeEvent.objects.get_or_create(event_id=event_id, defaults={"event_type": event_type})
        if not created:
            return "duplicate"
        if not event_type.startswith("invoice."):
            return "ignored"
        obj = (data.get("data") or {}).get("object")
        if not isinstance(obj, dict):
            raise ValueError("event without a data object")
        invoice = _invoice_for_event(obj)
        if invoice is None:
            logger.warning("stripe event %s (%s) names no known invoice", event_id, event_type)
            return "unknown_invoice"
        handlers = {
            "invoice.paid": (invoice_mark_paid, "paid"),
            "invoice.payment_failed": (invoice_payment_failed, "payment_failed"),
            "invoice.marked_uncollectible": (invoice_mark_uncollectible, "uncollectible"),
            "invoice.voided": (invoice_void, "void"),
        }
        if event_type not in handlers:
            return "ignored"
        handler, outcome = handlers[event_type]
        try:
            handler(invoice=invoice, actor=STRIPE_ACTOR)
        except ServiceError as exc:
            # e.g. paid after staff voided it: recorded and logged, not retried by Stripe forever.
            logger.warning(
                "stripe event %s (%s) refused for invoice %s: %s", event_id, event_type, invoice.pk, exc.message
            )
            return f"refused:{exc.code}"
        return outcome
    return "ignored"
