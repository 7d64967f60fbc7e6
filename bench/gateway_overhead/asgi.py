import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.gateway_overhead.settings")

from gateway.asgi import application  # noqa: F401
