"""Celery tasks of the gateway (thin: they call services)."""

from __future__ import annotations

from celery import shared_task

from gateway import services


@shared_task(name="gateway.tasks.nodes_probe", ignore_result=True)
def nodes_probe() -> dict[str, str]:
    return services.nodes_probe()
