"""`python manage.py billing_run --period YYYY-MM`: close a period and issue its invoices."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services.invoices import billing_run
from core.errors import ServiceError


class Command(BaseCommand):
    help = "Issue one invoice per tenant for a closed month (idempotent: a second run changes nothing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="the month to bill, YYYY-MM (UTC)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = billing_run(period=options["period"])
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"period={result.period} issued={len(result.created)} already_invoiced={result.skipped}")
        for number in result.created:
            self.stdout.write(number)
