"""`core.audit.client_ip`: X-Forwarded-For is believed only from MMORCH_TRUSTED_PROXIES."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import RequestFactory

from core.audit import actor_for, client_ip, request_id_of


def _request(remote: str, forwarded: str | None = None) -> Any:
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_no_trusted_proxies_ignores_the_header(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = []
    assert client_ip(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"
    assert client_ip(_request("10.0.0.5", "198.51.100.1")) == "10.0.0.5"


def test_an_untrusted_peer_is_the_client_whatever_it_forwards(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_behind_a_trusted_proxy_the_nearest_untrusted_hop_wins(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(_request("10.0.0.5", "198.51.100.1")) == "198.51.100.1"
    # Two proxies of ours in a row: both skipped.
    assert client_ip(_request("10.0.0.5", "198.51.100.1, 10.1.2.3")) == "198.51.100.1"


def test_a_spoofed_chain_does_not_move_the_client(settings: Any) -> None:
    """The client wrote the leftmost entries itself; only what our proxy appended counts."""
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.0/8"]
    spoofed = "1.2.3.4, 10.9.9.9, 198.51.100.1"
    assert client_ip(_request("10.0.0.5", spoofed)) == "198.51.100.1"


@pytest.mark.parametrize("garbage", ["not-an-ip", "198.51.100.1, <script>", "999.1.1.1", ",,, ,"])
def test_garbage_in_the_header_falls_back_to_the_peer_or_is_skipped(settings: Any, garbage: str) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.0/8"]
    ip = client_ip(_request("10.0.0.5", garbage))
    assert ip == "10.0.0.5"


def test_an_empty_header_behind_a_trusted_proxy_is_the_proxy(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.5"]
    assert client_ip(_request("10.0.0.5")) == "10.0.0.5"


def test_ipv6_hops(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["fd00::/8"]
    assert client_ip(_request("fd00::1", "2001:db8::7")) == "2001:db8::7"


def test_actor_for_carries_ip_and_request_id(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = []
    request = _request("203.0.113.9")
    request.request_id = "req-123"
    actor = actor_for(request, user_id=7, label="a@example.com")
    assert (actor.user_id, actor.label, actor.ip, actor.request_id) == (7, "a@example.com", "203.0.113.9", "req-123")
    assert request_id_of(_request("203.0.113.9")) == ""
