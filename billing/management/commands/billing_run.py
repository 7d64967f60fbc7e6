"""`python manage.py billing_run --period YYYY-MM [--tenant SLUG] [--dry-run]`: issue a closed period's invoices."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from billing.money import format_minor
from billing.services.billing_runs import InvoiceDraft, TenantFailure
from billing.services.invoices import billing_run
from core.errors import ServiceError


class _Progress:
    """Tenants done / total on stderr (a bar on a terminal); a dry run lists each invoice on stdout."""

    def __init__(self, command: BaseCommand, *, listing: bool, quiet: bool) -> None:
        self.command = command
        self.listing = listing
        self.quiet = quiet
        self.bar: tqdm[Any] | None = None

    def started(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="tenant", desc="billing", file=sys.stderr, disable=self.quiet or None)

    def batch(self, drafts: list[InvoiceDraft], failed: list[TenantFailure], tenants: int) -> None:
        if self.listing:
            for draft in drafts:
                total = format_minor(draft.totals["total_minor"], draft.currency)
                self.command.stdout.write(
                    f"would issue: {draft.slug} {total} {draft.currency} ({len(draft.lines)} lines"
                    f"{', plan ' + draft.plan_name if draft.plan_name else ''})"
                )
        for failure in failed:
            self.command.stderr.write(f"failed: {failure.slug}: {failure.error}")
        if self.bar is not None:
            self.bar.update(tenants)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Command(BaseCommand):
    help = (
        "Issue one invoice per tenant for a closed month (idempotent: a second run changes nothing). "
        "Tenants that fail are reported and tried again by the next run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="the month to bill, YYYY-MM (UTC)")
        parser.add_argument("--tenant", metavar="SLUG", help="bill only this tenant")
        parser.add_argument("--dry-run", action="store_true", help="print what would be issued; write nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = bool(options["dry_run"])
        progress = _Progress(self, listing=dry_run, quiet=bool(options["no_progress"]))
        try:
            result = billing_run(
                period=options["period"], tenant_slug=options["tenant"], dry_run=dry_run, observer=progress
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        finally:
            progress.close()
        if dry_run:
            self.stdout.write(
                f"dry run: period={result.period} would_issue={result.planned} "
                f"already_invoiced={result.skipped} failed={len(result.failed)} (nothing written)"
            )
        else:
            self.stdout.write(
                f"period={result.period} issued={len(result.created)} already_invoiced={result.skipped} "
                f"failed={len(result.failed)}"
            )
            for number in result.created:
                self.stdout.write(number)
        if result.failed:
            raise CommandError(
                f"{len(result.failed)} tenant(s) could not be invoiced ("
                + ", ".join(f.slug for f in result.failed[:20])
                + (", ..." if len(result.failed) > 20 else "")
                + "); the next run tries them again."
            )
