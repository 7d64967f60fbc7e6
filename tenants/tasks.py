"""Celery tasks of the tenants app (thin: they call services)."""

from __future__ import annotations

from celery import shared_task

from tenants.keyuse import key_marks_flush as _flush


@shared_task(name="tenants.tasks.key_marks_flush", ignore_result=True)
def key_marks_flush() -> int:
    """Moves the keys' last-use marks collected in Redis into the database."""
    return _flush()
