"""`python manage.py rollups_rebuild --start YYYY-MM-DD --end YYYY-MM-DD`: recompute rollups from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services.rollups import usage_rollups_rebuild


def _day(value: str, name: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise CommandError(f"--{name} must look like YYYY-MM-DD") from exc


class Command(BaseCommand):
    help = "Recompute the hourly and daily usage rollups of whole days [start, end) from the ledger."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
        parser.add_argument("--end", required=True, help="day after the last, YYYY-MM-DD (UTC)")
        parser.add_argument("--tenant-id", type=int, default=None, help="only this tenant")

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = _day(options["start"], "start"), _day(options["end"], "end")
        if end <= start:
            raise CommandError("--end must be after --start")
        written = usage_rollups_rebuild(start=start, end=end, tenant_id=options["tenant_id"])
        self.stdout.write(f"rollup rows written: {written}")
