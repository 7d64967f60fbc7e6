"""Management API of billing: invoices, finance exports, usage; plus the Stripe webhook."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors
from billing.api.usage_params import TAG_PREFIX, usage_attribution
from billing.exports import INVOICE_COLUMNS, LINE_COLUMNS, csv_stream, invoice_pdf, invoice_row, line_row
from billing.models import Bucket, Invoice, InvoiceStatus, UsageRollup
from billing.money import format_minor
from billing.services.invoices import invoice_mark_paid
from billing.services.rollups import day_floor, hour_floor
from billing.services.stripe_sync import stripe_webhook_handle
from billing.usage_attribution import AttributionQuery
from core.api.errors import error_response
from core.api.serializers import page_serializer
from core.api.views import StaffAPIView
from core.errors import ValidationFailed
from tenants.api.base import TenantScopedAPIView

logger = logging.getLogger(__name__)
MAX_BUCKETS = {Bucket.HOUR.value: 24 * 31, Bucket.DAY.value: 366}
MAX_FILTER_VALUES = 100  # per list filter of the usage API: keeps the IN (...) list small
MODEL_NAME_MAX = UsageRollup._meta.get_field("model_name").max_length or 200
MAX_KEY_ID = 9_223_372_036_854_775_807  # the rollup's key_id is a BigIntegerField


class _IgnoreAccept(BaseContentNegotiation):
    """Downloads answer in their own format whatever the Accept header says."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


def _money(minor: int, currency: str) -> str:
    return format_minor(minor, currency)


class InvoiceOutputSerializer(serializers.Serializer[Invoice]):
    id = serializers.IntegerField()
    number = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    issued_at = serializers.DateTimeField()
    due_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    credits = serializers.SerializerMethodField()
    subtotal = serializers.SerializerMethodField()
    discount = serializers.SerializerMethodField()
    tax = serializers.SerializerMethodField()
    total = serializers.SerializerMethodField()
    total_minor = serializers.IntegerField()

    def get_credits(self, obj: Invoice) -> str | None:
        return obj.credits.number if obj.credits_id and obj.credits else None

    def get_subtotal(self, obj: Invoice) -> str:
        return _money(obj.subtotal_minor, obj.currency)

    def get_discount(self, obj: Invoice) -> str:
        return _money(obj.discount_minor, obj.currency)

    def get_tax(self, obj: Invoice) -> str:
        return _money(obj.tax_minor, obj.currency)

    def get_total(self, obj: Invoice) -> str:
        return _money(obj.total_minor, obj.currency)


class InvoiceListApi(TenantScopedAPIView):
    required_scopes = {"GET": "billing:read"}

    class InvoiceListFilterSerializer(serializers.Serializer[Any]):
        status = serializers.ChoiceField(
            choices=[s.value for s in InvoiceStatus if s != InvoiceStatus.DRAFT], required=False
        )

    @extend_schema(
        operation_id="invoices_list",
        parameters=[InvoiceListFilterSerializer],
        responses=page_serializer("InvoicePage", InvoiceOutputSerializer),
    )
    def get(self, request: Request, slug: str) -> Response:
        filters = self.InvoiceListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = selectors.invoice_list(tenant=self.tenant, status=filters.validated_data.get("status"))
        return self.paginated(request, qs.select_related("credits"), InvoiceOutputSerializer)


class InvoiceDetailApi(TenantScopedAPIView):
    required_scopes = {"GET": "billing:read"}

    class InvoiceDetailOutputSerializer(InvoiceOutputSerializer):
        class InvoiceLineOutputSerializer(serializers.Serializer[Any]):
            position = serializers.IntegerField()
            line_type = serializers.CharField()
            description = serializers.CharField()
            model = serializers.CharField(source="model_name")
            version = serializers.CharField(source="model_version")
            token_kind = serializers.CharField()
            units = serializers.IntegerField()
            unit_price_per_1m = serializers.DecimalField(max_digits=18, decimal_places=6, allow_null=True)
            amount_minor = serializers.IntegerField()
            usage_start = serializers.DateTimeField(allow_null=True)
            usage_end = serializers.DateTimeField(allow_null=True)

        lines = serializers.SerializerMethodField()

        def get_lines(self, obj: Invoice) -> list[dict[str, Any]]:
            return self.InvoiceLineOutputSerializer(selectors.invoice_lines(obj), many=True).data  # type: ignore[return-value]

    @extend_schema(operation_id="invoices_retrieve", responses=InvoiceDetailOutputSerializer)
    def get(self, request: Request, slug: str, invoice: str) -> Response:
        found = selectors.invoice_get_in_tenant(invoice, self.tenant)
        return Response(self.InvoiceDetailOutputSerializer(found).data)


class InvoiceMarkPaidApi(TenantScopedAPIView):
    """Platform staff record a payment received outside Stripe."""

    required_scopes = {"POST": "billing:write"}

    @extend_schema(operation_id="invoices_mark_paid", request=None, responses=InvoiceOutputSerializer)
    def post(self, request: Request, slug: str, invoice: str) -> Response:
        if not self.is_staff:
            raise exceptions.PermissionDenied("Only platform staff mark invoices paid.")
        found = selectors.invoice_get_in_tenant(invoice, self.tenant)
        updated = invoice_mark_paid(invoice=found, actor=self.actor)
        return Response(InvoiceOutputSerializer(updated).data)


class _CsvApi(TenantScopedAPIView):
    required_scopes = {"GET": "billing:read"}
    content_negotiation_class = _IgnoreAccept


def _csv_response(filename: str, chunks: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class InvoiceCsvApi(_CsvApi):
    @extend_schema(operation_id="invoices_export_csv", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, slug: str) -> StreamingHttpResponse:
        rows = (invoice_row(i) for i in selectors.invoice_list(tenant=self.tenant).iterator(chunk_size=2000))
        return _csv_response(f"{self.tenant.slug}-invoices.csv", csv_stream(INVOICE_COLUMNS, rows))


class InvoiceLineCsvApi(_CsvApi):
    @extend_schema(operation_id="invoice_lines_export_csv", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, slug: str) -> StreamingHttpResponse:
        rows = (line_row(line) for line in selectors.invoice_lines_for_export(tenant=self.tenant))
        return _csv_response(f"{self.tenant.slug}-invoice-lines.csv", csv_stream(LINE_COLUMNS, rows))


class InvoicePdfApi(_CsvApi):
    @extend_schema(operation_id="invoices_pdf", responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, slug: str, invoice: str) -> HttpResponse:
        found = selectors.invoice_get_in_tenant(invoice, self.tenant)
        response = HttpResponse(invoice_pdf(found, selectors.invoice_lines(found)), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{found.number}.pdf"'
        return response


class PlatformInvoiceCsvApi(StaffAPIView):
    content_negotiation_class = _IgnoreAccept

    @extend_schema(operation_id="platform_invoices_export_csv", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request) -> StreamingHttpResponse:
        rows = (invoice_row(i) for i in selectors.invoice_list(tenant=None).iterator(chunk_size=2000))
        return _csv_response("invoices.csv", csv_stream(INVOICE_COLUMNS, rows))


class PlatformInvoiceLineCsvApi(StaffAPIView):
    content_negotiation_class = _IgnoreAccept

    @extend_schema(operation_id="platform_invoice_lines_export_csv", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request) -> StreamingHttpResponse:
        rows = (line_row(line) for line in selectors.invoice_lines_for_export(tenant=None))
        return _csv_response("invoice-lines.csv", csv_stream(LINE_COLUMNS, rows))


# --- usage -----------------------------------------------------------------------------------
def _parse_time(raw: str, param: str) -> datetime:
    value = raw.strip()
    if value.lstrip("-").isdigit():
        seconds = int(value)
        if not 0 <= seconds <= 253_402_300_799:
            raise ValidationFailed(f"{param} is out of range.", param=param, code="invalid_time")
        return datetime.fromtimestamp(seconds, tz=UTC)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            f"{param} must be unix seconds or an ISO-8601 date or time.", param=param, code="invalid_time"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _list_param(params: QueryDict, *names: str) -> list[str] | None:
    """Values of a list filter, repeated and/or comma-separated under any of its names; None when absent."""
    if not any(name in params for name in names):
        return None
    values: list[str] = []
    for name in names:
        for raw in params.getlist(name):
            values.extend(item.strip() for item in raw.split(","))
    return values


def _models_param(params: QueryDict) -> list[str] | None:
    values = _list_param(params, "models")
    if values is None:
        return None
    if not values or any(not v for v in values):
        raise ValidationFailed("models must list model names, comma-separated.", param="models", code="invalid_models")
    if len(values) > MAX_FILTER_VALUES:
        raise ValidationFailed(
            f"At most {MAX_FILTER_VALUES} models per request.", param="models", code="too_many_values"
        )
    too_long = next((v for v in values if len(v) > MODEL_NAME_MAX), None)
    if too_long is not None:
        raise ValidationFailed(
            f"A model name has at most {MODEL_NAME_MAX} characters.", param="models", code="invalid_models"
        )
    return list(dict.fromkeys(values))


def _key_ids_param(params: QueryDict) -> list[int] | None:
    # OpenAI calls it api_key_ids; key_ids matches group_by=key.
    values = _list_param(params, "key_ids", "api_key_ids")
    if values is None:
        return None
    # Length first: int() of thousands of digits is slow and Python refuses it (a 500, not a 400).
    if not values or any(
        not (v.isascii() and v.isdigit() and len(v) <= 19) or not 0 < int(v) <= MAX_KEY_ID for v in values
    ):
        raise ValidationFailed(
            "key_ids must list API key ids (positive integers), comma-separated.",
            param="key_ids",
            code="invalid_key_ids",
        )
    if len(values) > MAX_FILTER_VALUES:
        raise ValidationFailed(
            f"At most {MAX_FILTER_VALUES} key ids per request.", param="key_ids", code="too_many_values"
        )
    return list(dict.fromkeys(int(v) for v in values))


# Unix seconds, or an ISO-8601 date (days 1-28: valid in every month) with an optional UTC time.
TIME_PATTERN = (
    r"^([0-9]{1,11}|[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?Z?)?)$"
)
KNOWN_USAGE_PARAMS = frozenset(
    {
        "start",
        "end",
        "start_time",
        "end_time",
        "bucket",
        "bucket_width",
        "group_by",
        "models",
        "key_ids",
        "api_key_ids",
        "users",
    }
)


USAGE_PARAMETERS = [
    OpenApiParameter(
        "start",
        str,
        required=True,
        pattern=TIME_PATTERN,
        description="unix seconds or ISO-8601 (UTC); with `end`, at most 366 days or 744 hours",
    ),
    OpenApiParameter("end", str, pattern=TIME_PATTERN, description="unix seconds or ISO-8601; default now"),
    OpenApiParameter("bucket", str, enum=["hour", "day"], description="bucket width; default day"),
    OpenApiParameter(
        "group_by",
        str,
        pattern=r"^(model|key|user|metadata\.[A-Za-z0-9_-]{1,64})(,(model|key|user|metadata\.[A-Za-z0-9_-]{1,64})){0,3}$",
        description="model, key, user (the end user) and/or metadata.<key>, comma-separated",
    ),
    OpenApiParameter(
        "models",
        {"type": "string", "pattern": r"^[^,\s\x00]+(,[^,\s\x00]+)*$", "maxLength": MODEL_NAME_MAX},
        description="only these model names, comma-separated or repeated",
    ),
    OpenApiParameter(
        "key_ids",
        str,
        pattern=r"^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17}){0,99}$",
        description="only these API key ids, comma-separated or repeated (alias api_key_ids)",
    ),
    OpenApiParameter(
        "users",
        {"type": "string", "pattern": r"^[^,\x00]{1,256}(,[^,\x00]{1,256}){0,99}$"},
        description="only these end users (`user` or `safety_identifier` of the request), comma-separated; "
        "filter by a metadata tag with `metadata.<key>=<value>`",
    ),
]


def _usage_result(r: selectors.UsageResult, currency: str, attribution: AttributionQuery) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": "organization.usage.completions.result",
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "num_model_requests": r.requests,
        "model": r.model,
        "api_key_id": None if r.api_key_id is None else str(r.api_key_id),
        "cost": {"value": str(r.cost.quantize(Decimal("0.000001"))), "currency": currency},
    }
    # The grouped attribution only, so the shape without it stays OpenAI's.
    if attribution.group_user:
        result["user"] = r.user
    if attribution.group_tags:
        result["metadata"] = r.tags or {}
    return result


class UsageApi(TenantScopedAPIView):
    """Usage in buckets, shaped like OpenAI's organization usage API (from rollups)."""

    required_scopes = {"GET": "usage:read"}

    @extend_schema(operation_id="usage_list", parameters=USAGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, slug: str) -> Response:
        params = request.query_params
        unknown = sorted(p for p in set(params) - KNOWN_USAGE_PARAMS if not p.startswith(TAG_PREFIX))
        if unknown:
            raise ValidationFailed(f"Unknown parameter {unknown[0]!r}.", param=unknown[0], code="unknown_parameter")
        bucket = params.get("bucket") or params.get("bucket_width") or "day"
        bucket = {"1h": "hour", "1d": "day"}.get(bucket, bucket)
        if bucket not in MAX_BUCKETS:
            raise ValidationFailed("bucket must be hour or day.", param="bucket", code="invalid_bucket")
        group_by, attribution = usage_attribution(params)
        start_raw = params.get("start") or params.get("start_time")
        if not start_raw:
            raise ValidationFailed("start is required.", param="start", code="missing_parameter")
        start = _parse_time(start_raw, "start")
        end_raw = params.get("end") or params.get("end_time")
        end = _parse_time(end_raw, "end") if end_raw else timezone.now()
        if end <= start:
            raise ValidationFailed("end must be after start.", param="end", code="invalid_range")
        step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
        first = hour_floor(start) if bucket == "hour" else day_floor(start)
        last = hour_floor(end) if bucket == "hour" else day_floor(end)
        if last < end:
            last += step
        count = int((last - first) / step)
        if count > MAX_BUCKETS[bucket]:
            raise ValidationFailed(
                f"At most {MAX_BUCKETS[bucket]} {bucket} buckets per request; narrow start and end.",
                param="end",
                code="range_too_large",
            )
        models = _models_param(params)
        key_ids = _key_ids_param(params)
        plan = selectors.tenant_plan_get(self.tenant)
        currency = (plan.plan.currency if plan.plan else "usd").lower()
        buckets = selectors.usage_buckets(
            tenant=self.tenant,
            start=first,
            end=last,
            bucket=bucket,
            group_by=group_by,
            model=models,
            key=key_ids,
            attribution=attribution,
        )
        data = [
            {
                "object": "bucket",
                "start_time": int(b.start.timestamp()),
                "end_time": int(b.end.timestamp()),
                "results": [_usage_result(r, currency, attribution) for r in b.results],
            }
            for b in buckets
        ]
        return Response({"object": "page", "data": data, "has_more": False, "next_page": None})


class UsageAliasApi(UsageApi):
    """`/usage/`: the same as `/usage`, for clients that add the slash; its own operationId."""

    @extend_schema(operation_id="usage_list_slash", parameters=USAGE_PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, slug: str) -> Response:
        return super().get(request, slug)


# --- Stripe webhook --------------------------------------------------------------------------
@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    from django.conf import settings

    if not settings.STRIPE_WEBHOOK_SECRET:
        return error_response("Stripe webhooks are not configured.", status_code=404, code="not_found")
    signature = request.headers.get("Stripe-Signature", "")
    if not signature:
        return error_response("Missing Stripe-Signature header.", status_code=400, code="signature_missing")
    try:
        outcome = stripe_webhook_handle(payload=request.body, signature=signature)
    except stripe.SignatureVerificationError:
        return error_response("Invalid or stale Stripe-Signature.", status_code=400, code="signature_invalid")
    except (ValueError, KeyError, TypeError):
        return error_response("The body is not a Stripe event.", status_code=400, code="invalid_event")
    return JsonResponse({"received": True, "result": outcome})
