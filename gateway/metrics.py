"""The gateway's own Prometheus metrics (HTTP counts and latencies come from core.observability)."""

from prometheus_client import Counter

QUOTA_REJECTIONS = Counter(
    "mmorch_gateway_quota_rejections_total",
    "Requests on /v1 refused by quotas (429): tenant id, error code (reason) and the limit that refused them",
    ["tenant", "reason", "limit"],
)

NODE_BREAKER_OPENS = Counter(
    "mmorch_gateway_node_breaker_opens_total",
    "Times this process took a node out of rotation: node name, and why (unreachable or server_errors)",
    ["node", "cause"],
)
TENANT_THROTTLED = Counter(
    "mmorch_gateway_tenant_throttled_total",
    "Requests on /v1 refused (429) because the tenant's recent requests kept failing at the nodes",
    ["tenant"],
)
