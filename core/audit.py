"""Who did something, for the audit log: the actor, and where a request came from.

Every door (management API, dashboard, Django admin) builds its actor here, so the audit IP
and request id are read one way. `audit_record` itself lives with the audit log model in
`tenants.audit`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs a mutation, for the audit log: a user, a key, or the system."""

    user_id: int | None = None
    key_id: int | None = None
    label: str = "system"
    ip: str | None = None
    request_id: str = ""


SYSTEM = Actor()


@lru_cache(maxsize=8)
def _trusted_networks(spec: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in spec)


def _is_trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(request: Any) -> str | None:
    """The address of the client that sent `request` (a Django or DRF request).

    `X-Forwarded-For` is client-controlled, so it is read only while the hop that appended to it
    is one of `MMORCH_TRUSTED_PROXIES`: walking from the nearest hop outwards, the first address
    that is not a trusted proxy is the client. With no trusted proxies configured, the socket's
    peer (`REMOTE_ADDR`) is the answer.
    """
    meta = request.META
    remote = meta.get("REMOTE_ADDR") or None
    networks = _trusted_networks(tuple(settings.MMORCH_TRUSTED_PROXIES))
    if remote is None or not networks or not _is_trusted(remote, networks):
        return remote
    hops = [h.strip() for h in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote  # a garbled hop: the proxy we trust is the last address we know
    return hops[0] if hops else remote


def request_id_of(request: Any) -> str:
    """The id the request-id middleware gave this request ("" outside a request)."""
    inner = getattr(request, "_request", request)  # DRF wraps the Django request
    return str(getattr(inner, "request_id", "") or "")


def actor_for(request: Any, *, user_id: int | None = None, key_id: int | None = None, label: str) -> Actor:
    """The actor of a person or key acting through `request`."""
    return Actor(user_id=user_id, key_id=key_id, label=label, ip=client_ip(request), request_id=request_id_of(request))
