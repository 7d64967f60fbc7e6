"""The control plane's logging: structured lines (wire.logs) from Django, uvicorn and Celery.

Django applies `settings.LOGGING` through `configure` (LOGGING_CONFIG). A Celery worker or beat
keeps that configuration (it does not install its own), and every task's lines carry its id,
its name and the ids it was called with.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from celery import signals

from wire.logs import log_bind, log_clear, warn_bad_format

# Task arguments of these types are ids and names: small, and safe to log.
_LOGGABLE = (int, str)
_MAX_ARG = 200


def configure(config: dict[str, Any]) -> None:
    """LOGGING_CONFIG: apply the configuration, then say once if MMORCH_LOG_FORMAT was malformed."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # Python's warnings become lines in the same format
    warn_bad_format()


def task_fields(task_id: str, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """What a task's lines carry: its id and name, and its id-like arguments."""
    fields: dict[str, Any] = {"task_id": task_id, "task": name}
    if isinstance(args, list | tuple):
        loggable = [a for a in args if isinstance(a, _LOGGABLE) and len(str(a)) <= _MAX_ARG]
        if loggable:
            fields["task_args"] = loggable
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if isinstance(value, _LOGGABLE) and len(str(value)) <= _MAX_ARG and "secret" not in key:
                fields[key] = value
    return fields


@signals.setup_logging.connect
def _celery_keeps_django_logging(**_: Any) -> None:
    """Connected, so Celery leaves the root logger to Django's LOGGING (configured at django.setup)."""


@signals.task_prerun.connect
def _task_started(task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    log_clear()
    log_bind(**task_fields(task_id, getattr(task, "name", ""), args, kwargs))


@signals.task_postrun.connect
def _task_finished(**_: Any) -> None:
    log_clear()
