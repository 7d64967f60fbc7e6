"""Gateway settings read once, not through Django's lazy settings object on every request
(each `settings.X` is a Python-level attribute hook; a request reads about twenty)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, slots=True)
class GatewayConf:
    max_body_bytes: int
    registry_refresh_s: float
    lease_ttl_ms: int
    upstream_timeout_s: float
    upstream_pool_size: int
    node_fail_cooldown_s: float
    node_breaker_failures: int
    tenant_failures_per_minute: int
    tenant_throttle_s: float
    node_max_queued: int
    prompt_bytes_per_token: float
    default_reserve_tokens: int
    max_n: int
    mark_keys_used: bool
    ledger_baseline_s: float
    signing_secret: str


def _build() -> GatewayConf:
    return GatewayConf(
        max_body_bytes=int(settings.GATEWAY_MAX_BODY_BYTES),
        registry_refresh_s=float(settings.GATEWAY_REGISTRY_REFRESH_S),
        lease_ttl_ms=int(settings.GATEWAY_LEASE_TTL_S * 1000),
        upstream_timeout_s=float(settings.GATEWAY_UPSTREAM_TIMEOUT_S),
        upstream_pool_size=int(settings.GATEWAY_UPSTREAM_POOL_SIZE),
        node_fail_cooldown_s=float(settings.GATEWAY_NODE_FAIL_COOLDOWN_S),
        node_breaker_failures=int(settings.GATEWAY_NODE_BREAKER_FAILURES),
        tenant_failures_per_minute=int(settings.GATEWAY_TENANT_FAILURES_PER_MINUTE),
        tenant_throttle_s=float(settings.GATEWAY_TENANT_THROTTLE_S),
        node_max_queued=int(settings.GATEWAY_NODE_MAX_QUEUED),
        prompt_bytes_per_token=float(settings.GATEWAY_PROMPT_BYTES_PER_TOKEN),
        default_reserve_tokens=int(settings.GATEWAY_DEFAULT_RESERVE_TOKENS),
        max_n=int(settings.GATEWAY_MAX_N),
        mark_keys_used=bool(settings.GATEWAY_MARK_KEYS_USED),
        ledger_baseline_s=float(settings.GATEWAY_LEDGER_BASELINE_S),
        # Nodes accept several secrets while one rotates; the gateway signs with the first.
        signing_secret=settings.INFERENCE_SHARED_SECRET.split(",")[0].strip(),
    )


_conf: GatewayConf | None = None


def conf() -> GatewayConf:
    global _conf
    if _conf is None:
        _conf = _build()
    return _conf


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    global _conf
    if setting.startswith("GATEWAY_") or setting == "INFERENCE_SHARED_SECRET":
        _conf = None
