"""The project's settings with the benchmark's routes (the gateway and bare pass-throughs)."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.gateway_overhead.urls"
ALLOWED_HOSTS = ["*"]
# /lean/... is served by the gateway's lean lane too, to show the floor of that lane.
GATEWAY_LEAN_PATH_PREFIXES = ["/v1/", "/lean/"]
