"""The Celery app: workers and beat share the Django settings (CELERY_* names)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("mmorch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Task lines carry the task's id and arguments; Celery keeps Django's logging (core/logging.py).
import core.logging  # noqa: E402,F401


@signals.worker_init.connect
def _worker_tracing(**_: object) -> None:
    # Before the pool forks: the span processor's thread is restarted in each child.
    from core.tracing import celery_tracing

    celery_tracing("mmorch-worker")


@signals.beat_init.connect
def _beat_tracing(**_: object) -> None:
    from core.tracing import celery_tracing

    celery_tracing("mmorch-beat")
