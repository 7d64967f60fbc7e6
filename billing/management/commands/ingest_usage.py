"""`python manage.py ingest_usage`: pull every node's usage journal into the ledger now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.services.ingestion import usage_ingest_all


class Command(BaseCommand):
    help = "Pull every inference node's usage journal into the ledger (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        result = usage_ingest_all()
        self.stdout.write(
            f"nodes={result.nodes} pages={result.pages} fetched={result.fetched} "
            f"inserted={result.inserted} rejected={result.rejected}"
        )
        for node, error in sorted(result.errors.items()):
            self.stderr.write(f"node {node}: {error}")
        if result.errors and result.nodes == 0:
            raise CommandError("no node could be read")
