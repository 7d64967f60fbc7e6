"""Usage ledger, rollups, plans and prices, subscriptions, invoices and their bookkeeping.

The ledger is decoupled from the model registry on purpose: model name and version are plain
strings and the node is a name, so renaming or removing registry rows never rewrites history.
Money is Decimal; invoices store integer minor units. Times are UTC-aware.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import APIKey, Tenant

# Costs keep every digit: tokens are integers and prices have 6 decimal places per 1M tokens.
COST_DIGITS = 28
COST_PLACES = 12
PRICE_DIGITS = 18
PRICE_PLACES = 6


# Plans' service-level objectives: defaults for a new plan (and for tenants without one), bounds.
SLO_AVAILABILITY_DEFAULT = Decimal("99.500")
SLO_AVAILABILITY_MIN = Decimal("50")
SLO_AVAILABILITY_MAX = Decimal("99.999")
SLO_TTFT_P95_MS_DEFAULT = 2000
SLO_ITL_P95_MS_DEFAULT = 250
SLO_LATENCY_MAX_MS = 600_000


class ImmutableRowError(Exception):
    """A ledger row or an issued invoice was about to change."""


class Outcome(models.TextChoices):
    STOP = "stop"
    LENGTH = "length"
    ABORTED = "aborted"
    ERROR = "error"


class Plan(models.Model):
    name = models.CharField(max_length=100, unique=True)
    currency = models.CharField(max_length=3, default="USD")
    base_fee = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    included_tokens = models.PositiveBigIntegerField(default=0)
    # Limits applied to the tenant on subscribe: names of tenants.models.TenantLimits fields.
    default_limits = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Service-level objectives promised under the plan (billing/slo.py, platform/prometheus/rules).
    slo_availability = models.DecimalField(
        max_digits=6,
        decimal_places=3,
        default=SLO_AVAILABILITY_DEFAULT,
        validators=[MinValueValidator(SLO_AVAILABILITY_MIN), MaxValueValidator(SLO_AVAILABILITY_MAX)],
        help_text="Percent of admitted requests per month that must not fail (outcome error, 5xx).",
    )
    slo_ttft_p95_ms = models.PositiveIntegerField(
        default=SLO_TTFT_P95_MS_DEFAULT,
        validators=[MinValueValidator(1), MaxValueValidator(SLO_LATENCY_MAX_MS)],
        help_text="95% of requests get their first token within this many milliseconds.",
    )
    slo_itl_p95_ms = models.PositiveIntegerField(
        default=SLO_ITL_P95_MS_DEFAULT,
        validators=[MinValueValidator(1), MaxValueValidator(SLO_LATENCY_MAX_MS)],
        help_text="95% of gaps between consecutive tokens are within this many milliseconds.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    """Per-model price under a plan from `effective_from` until the next change."""

    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="prices")
    model_name = models.CharField(max_length=200)
    input_per_1m = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    output_per_1m = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["plan_id", "model_name", "effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "model_name", "effective_from"], name="price_unique_effective"),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id}:{self.model_name}@{self.effective_from.isoformat()}"


class Subscription(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)  # exclusive; None: open-ended
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tenant_id", "starts_at"]
        indexes = [models.Index(fields=["tenant", "starts_at"])]

    def __str__(self) -> str:
        return f"{self.tenant_id}:{self.plan_id}@{self.starts_at:%Y-%m-%d}"


class BillingAccount(models.Model):
    """Per-tenant billing details kept by billing (the tenants app stays unaware of Stripe)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_account")
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"billing account of {self.tenant_id}"


class UsageRecord(models.Model):
    """One row per inference attempt, written once by ingestion and never changed."""

    # The attempt's own id (made by the gateway, unique): what usage is keyed on.
    request_id = models.CharField(max_length=128, unique=True)
    # The client's x-request-id, for finding a request's rows; not unique (clients reuse ids).
    client_request_id = models.CharField(max_length=128, blank=True, default="")
    # Only the composite indexes below: every extra index costs each of millions of inserts.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", db_index=False)
    # No database constraint: keys come and go, the ledger keeps the id it was billed under.
    key = models.ForeignKey(
        APIKey,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=200, blank=True)
    node_name = models.CharField(max_length=200)
    journal_seq = models.BigIntegerField()
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    queue_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    # The price that applied when the request started, copied so history never moves.
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, db_index=False, related_name="+")
    input_price_per_1m = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    output_price_per_1m = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    currency = models.CharField(max_length=3)
    cost = models.DecimalField(max_digits=COST_DIGITS, decimal_places=COST_PLACES)
    ingested_at = models.DateTimeField(default=timezone.now)
    # Attribution the client sent: its end user (`safety_identifier` or `user`) and `metadata` tags.
    end_user = models.CharField(max_length=256, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # The request's W3C trace id ("" when it was not traced) and its share of the engine's busy time.
    trace_id = models.CharField(max_length=32, blank=True, default="")
    engine_ms = models.FloatField(default=0.0)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "started_at"]),
            models.Index(fields=["started_at"]),
            models.Index(fields=["client_request_id"], name="usage_client_request_id"),
            # Spend per end user: only attributed rows, so unattributed traffic pays nothing for it.
            # (On PostgreSQL a GIN index on `metadata` serves the tag filters: migration 0005.)
            models.Index(
                fields=["tenant", "end_user", "started_at"], name="usage_tenant_end_user", condition=~Q(end_user="")
            ),
        ]

    def __str__(self) -> str:
        return self.request_id

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ImmutableRowError("usage records are immutable")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableRowError("usage records are immutable")


class IngestCursor(models.Model):
    """How far each node's journal has been ingested; moves in the same transaction as the inserts."""

    node_name = models.CharField(max_length=200, unique=True)
    after_seq = models.BigIntegerField(default=0)
    records_total = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.node_name}@{self.after_seq}"


class Bucket(models.TextChoices):
    HOUR = "hour"
    DAY = "day"


class UsageRollup(models.Model):
    """Sums of the ledger per tenant, key and model by hour and by day (rebuildable from the ledger)."""

    bucket = models.CharField(max_length=4, choices=Bucket.choices)
    bucket_start = models.DateTimeField()
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    # Plain id, 0 when the request had no key: keeps the unique key usable for upserts.
    key_id = models.BigIntegerField(default=0)
    model_name = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=COST_DIGITS, decimal_places=COST_PLACES, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["bucket", "bucket_start", "tenant", "key_id", "model_name"], name="rollup_unique_bucket"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "bucket", "bucket_start"])]

    def __str__(self) -> str:
        return f"{self.bucket}:{self.bucket_start:%Y-%m-%dT%H}:{self.tenant_id}:{self.key_id}:{self.model_name}"


class InvoiceKind(models.TextChoices):
    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class Invoice(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=16, choices=InvoiceKind.choices, default=InvoiceKind.INVOICE)
    # Set on a credit note: the invoice it corrects.
    credits = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)  # assigned when issued
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()  # exclusive
    subtotal_minor = models.BigIntegerField(default=0)
    discount_minor = models.BigIntegerField(default=0)
    tax_minor = models.BigIntegerField(default=0)
    total_minor = models.BigIntegerField(default=0)
    memo = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=100, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            # One invoice per tenant and period; credit notes are not limited.
            models.UniqueConstraint(
                fields=["tenant", "period_start"],
                condition=models.Q(kind="invoice"),
                name="invoice_unique_tenant_period",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "period_start"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.number or f"draft-{self.pk}"


class LineType(models.TextChoices):
    BASE_FEE = "base_fee"
    USAGE = "usage"
    DISCOUNT = "discount"
    CREDIT = "credit"


class TokenKind(models.TextChoices):
    INPUT = "input"
    OUTPUT = "output"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    line_type = models.CharField(max_length=16, choices=LineType.choices)
    description = models.CharField(max_length=300)
    model_name = models.CharField(max_length=200, blank=True)
    model_version = models.CharField(max_length=200, blank=True)
    token_kind = models.CharField(max_length=8, choices=TokenKind.choices, blank=True)
    units = models.BigIntegerField(default=0)  # tokens for usage lines, 1 otherwise
    unit_price_per_1m = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, null=True)
    # The span of usage this line covers (a price change splits a model's usage into lines).
    usage_start = models.DateTimeField(null=True, blank=True)
    usage_end = models.DateTimeField(null=True, blank=True)
    amount_exact = models.DecimalField(max_digits=COST_DIGITS, decimal_places=COST_PLACES)
    amount_minor = models.BigIntegerField()

    class Meta:
        ordering = ["invoice_id", "position"]
        constraints = [models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_unique_position")]

    def __str__(self) -> str:
        return f"{self.invoice_id}#{self.position}"


class InvoiceSequence(models.Model):
    """The last number given per prefix and year; row-locked while a number is taken (gap-free)."""

    prefix = models.CharField(max_length=16)
    year = models.PositiveIntegerField()
    last_value = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prefix", "year"], name="invoice_sequence_unique")]

    def __str__(self) -> str:
        return f"{self.prefix}-{self.year}:{self.last_value}"


class AlertKind(models.TextChoices):
    TOKENS = "tokens"
    SPEND = "spend"
    SPEND_JUMP = "spend_jump"  # a day's spend above N x the trailing daily average (anomalies.py)


class UsageAlert(models.Model):
    """An alert that was sent: at most one per tenant, period, kind and threshold."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=10)  # YYYY-MM; YYYY-MM-DD for a spend jump (one per day)
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    threshold = models.PositiveSmallIntegerField()  # percent: 80 or 100; a jump's factor x 100
    usage_value = models.DecimalField(max_digits=COST_DIGITS, decimal_places=COST_PLACES)
    limit_value = models.DecimalField(max_digits=COST_DIGITS, decimal_places=COST_PLACES)
    recipients = models.JSONField(default=list)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period", "kind", "threshold"], name="usage_alert_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}:{self.period}:{self.kind}:{self.threshold}"


class StripeEvent(models.Model):
    """Webhook events already handled (Stripe delivers at least once)."""

    event_id = models.CharField(max_length=100, unique=True)
    event_type = models.CharField(max_length=100)
    received_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.event_id


__all__ = [
    "BillingAccount",
    "Bucket",
    "ImmutableRowError",
    "IngestCursor",
    "Invoice",
    "InvoiceKind",
    "InvoiceLine",
    "InvoiceSequence",
    "InvoiceStatus",
    "LineType",
    "Outcome",
    "Plan",
    "Price",
    "StripeEvent",
    "Subscription",
    "TokenKind",
    "UsageAlert",
    "UsageRecord",
    "UsageRollup",
]


class BillingRunOutcome(models.TextChoices):
    SUCCESS = "success"
    PARTIAL = "partial"  # some tenants failed (in `error`); the next run tries them again
    FAILURE = "failure"


class BillingRun(models.Model):
    """One execution of `billing_run`: the history operators read, and what metrics count."""

    period = models.CharField(max_length=7)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=BillingRunOutcome.choices)
    issued = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)  # tenants that could not be invoiced
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.period} {self.outcome} at {self.started_at:%Y-%m-%d %H:%M}"
