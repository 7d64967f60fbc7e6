"""The ASGI entry point: the gateway's lean lane for /v1, Django's full stack for the rest."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from gateway.asgi import application

__all__ = ["application"]
