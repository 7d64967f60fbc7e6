"""The gateway's own Prometheus metrics (HTTP counts and latencies come from core.observability)."""

from prometheus_client import Counter

QUOTA_REJECTIONS = Counter(
    "mmorch_gateway_quota_rejections_total",
    "Requests on /v1 refused by quotas (429): tenant id, error code (reason) and the limit that refused them",
    ["tenant", "reason", "limit"],
)
