"""Structured logs for every process of both planes (structlog over the standard `logging` module).

`MMORCH_LOG_FORMAT=json` writes one JSON object per line (the container images' default);
`console` writes readable `key=value` lines (the default elsewhere). Whatever logs through the
standard library (Django, Celery, uvicorn's access log, our `logging.getLogger(...)` calls) goes
through the same formatter, and every line carries the context a request or task bound with
`log_bind` (request id, tenant, key id, model, node; a Celery task's id and its arguments).

Both planes use this module, so it imports neither.
"""

from __future__ import annotations

import logging
import logging.config
import os
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor

LOG_FORMAT_ENV = "MMORCH_LOG_FORMAT"
LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
DEFAULT_LOG_FORMAT: LogFormat = "console"

# What a request binds; bound as None first so every line of a request has every key.
REQUEST_FIELDS = ("request_id", "tenant", "key_id", "model", "node")

_warned_bad_format = False


def log_format_from(environ: Mapping[str, str] | None = None) -> tuple[LogFormat, str]:
    """The configured format and a warning ("" when none): a bad value falls back to console."""
    env = os.environ if environ is None else environ
    raw = env.get("MMORCH_LOG_FORMAT", "").strip().lower()
    if not raw:
        return DEFAULT_LOG_FORMAT, ""
    if raw in LOG_FORMATS:
        return raw, ""  # type: ignore[return-value]
    return DEFAULT_LOG_FORMAT, (
        f"{LOG_FORMAT_ENV}={raw!r} is not one of {', '.join(LOG_FORMATS)}; logging as {DEFAULT_LOG_FORMAT}"
    )


def _uvicorn_access_fields(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """uvicorn's access line as fields: client, method, path, HTTP version, status."""
    args = event_dict.pop("positional_args", None)  # the formatter passes them on (pass_foreign_args)
    event_dict.pop("color_message", None)  # uvicorn's coloured copy of the message
    record = event_dict.get("_record")
    if record is not None and record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        event_dict.update(client=args[0], method=args[1], path=args[2], http_version=args[3], status=args[4])
    return event_dict


def _shared_processors(service: str) -> list[Processor]:
    def add_service(logger: Any, method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        _uvicorn_access_fields,
    ]


def formatter(fmt: LogFormat, service: str) -> structlog.stdlib.ProcessorFormatter:
    """The `logging.Formatter` every handler of the process uses."""
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        tail: list[Processor] = [structlog.processors.format_exc_info]
    else:
        # Plain tracebacks: the fancy one prints local variables, and a local may hold a secret.
        renderer = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        tail = []
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(service),
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )


def formatter_from_env(service: str = "mmorch") -> structlog.stdlib.ProcessorFormatter:
    """A dictConfig factory (`"()": "wire.logs.formatter_from_env"`): the format from the environment."""
    return formatter(log_format_from()[0], service)


def logging_config(*, service: str, level: str = "INFO", environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` mapping (Django's LOGGING setting, the node's start-up)."""
    fmt, _ = log_format_from(environ)
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mmorch": {"()": formatter, "fmt": fmt, "service": service}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "mmorch", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # uvicorn and Celery install their own handlers; ours take over and the lines propagate.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "celery": {"handlers": [], "propagate": True},
            "django.request": {"level": "ERROR"},
            # The span exporter's own retries and errors: tracing warns once, by itself.
            "opentelemetry.exporter": {"level": "CRITICAL"},
            "opentelemetry.sdk._shared_internal": {"level": "CRITICAL"},
        },
    }


def logging_setup(*, service: str, level: str = "INFO", environ: Mapping[str, str] | None = None) -> None:
    """Configure this process's logging (processes that have no Django settings to do it)."""
    logging.config.dictConfig(logging_config(service=service, level=level, environ=environ))
    logging.captureWarnings(True)  # Python's warnings become lines in the same format
    warn_bad_format(environ)


def warn_bad_format(environ: Mapping[str, str] | None = None) -> None:
    """Warn once per process when MMORCH_LOG_FORMAT holds something else than a known format."""
    global _warned_bad_format
    _, warning = log_format_from(environ)
    if warning and not _warned_bad_format:
        _warned_bad_format = True
        logging.getLogger("mmorch.logs").warning(warning)


def log_bind(**fields: Any) -> None:
    """Add fields to every line this task (request, Celery task) logs from now on."""
    structlog.contextvars.bind_contextvars(**fields)


def log_request_start(request_id: str) -> None:
    """A fresh request context: its id, and the request fields empty until known."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**{**dict.fromkeys(REQUEST_FIELDS), "request_id": request_id})


def log_clear() -> None:
    structlog.contextvars.clear_contextvars()
