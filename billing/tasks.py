"""Celery tasks: thin wrappers that load ids and call a service."""

from __future__ import annotations

from datetime import timedelta

import stripe
from celery import shared_task
from django.utils import timezone

from billing.money import month_start, period_label
from billing.services.anomalies import spend_jump_check
from billing.services.ingestion import usage_ingest_all
from billing.services.invoices import billing_run
from billing.services.stripe_sync import invoice_stripe_push


@shared_task(name="billing.tasks.usage_ingest_task", ignore_result=True)
def usage_ingest_task() -> int:
    return usage_ingest_all().inserted


@shared_task(name="billing.tasks.spend_jump_check_task", ignore_result=True)
def spend_jump_check_task() -> int:
    return len(spend_jump_check())


@shared_task(name="billing.tasks.billing_run_previous_month_task", ignore_result=True)
def billing_run_previous_month_task() -> int:
    # Pull the last usage of the month first, then close it.
    usage_ingest_all()
    previous = month_start(month_start(timezone.now()) - timedelta(days=1))
    return len(billing_run(period=period_label(previous)).created)


@shared_task(
    name="billing.tasks.invoice_stripe_push_task",
    ignore_result=True,
    autoretry_for=(stripe.StripeError,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def invoice_stripe_push_task(invoice_id: int) -> str:
    return invoice_stripe_push(invoice_id=invoice_id)
