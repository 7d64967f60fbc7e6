"""Production transport security (HSTS, Secure cookies) and who may read the control plane's /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests-0123456789"

# Runs under MMORCH_ENV=production in its own interpreter: migrates a scratch SQLite database, signs
# in over HTTPS as the proxy reports it (X-Forwarded-Proto) and reports what it saw.
_PRODUCTION_PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.test import Client
call_command("migrate", verbosity=0)
from tests import factories
factories.staff_user("ops@example.com", password="a-long-password-for-ops-42")
client = Client()
https = {"headers": {"X-Forwarded-Proto": "https"}}
page = client.get("/login/", **https)
signed_in = client.post("/login/", {"username": "ops@example.com", "password": "a-long-password-for-ops-42"}, **https)
plain = Client().get("/login/")
session = signed_in.cookies.get(settings.SESSION_COOKIE_NAME)
print(json.dumps({
    "settings": {
        "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE,
        "CSRF_COOKIE_SECURE": settings.CSRF_COOKIE_SECURE,
        "SECURE_HSTS_SECONDS": settings.SECURE_HSTS_SECONDS,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
        "SECURE_PROXY_SSL_HEADER": list(settings.SECURE_PROXY_SSL_HEADER or []),
        "SECURE_REFERRER_POLICY": settings.SECURE_REFERRER_POLICY,
        "SECURE_CROSS_ORIGIN_OPENER_POLICY": settings.SECURE_CROSS_ORIGIN_OPENER_POLICY,
    },
    "page": {"status": page.status_code, "hsts": page.get("Strict-Transport-Security"),
             "referrer": page.get("Referrer-Policy"), "coop": page.get("Cross-Origin-Opener-Policy"),
             "csp": page.get("Content-Security-Policy")},
    "signed_in": {"status": signed_in.status_code, "hsts": signed_in.get("Strict-Transport-Security")},
    "session": None if session is None else {"secure": bool(session["secure"]), "httponly": bool(session["httponly"])},
    "plain_http_hsts": plain.get("Strict-Transport-Security"),
    "metrics_status": Client().get("/metrics").status_code,
}))
"""


def _production(tmp_path: Path, **extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MMORCH_ENV": "production",
            "DJANGO_SECRET_KEY": "k" * 50,
            "INFERENCE_SHARED_SECRET": "s" * 40,
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'production.sqlite3'}",
            "AXES_ENABLED": "false",
            "DJANGO_PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCTION_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_production_sends_hsts_and_secure_cookies_over_https(tmp_path: Path) -> None:
    seen = _production(tmp_path)
    assert seen["settings"] == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_REFERRER_POLICY": "same-origin",
        "SECURE_CROSS_ORIGIN_OPENER_POLICY": "same-origin",
    }
    assert seen["page"]["status"] == 200
    assert seen["page"]["hsts"] == "max-age=31536000"
    assert seen["page"]["referrer"] == "same-origin"
    assert seen["page"]["coop"] == "same-origin"
    assert "default-src 'self'" in seen["page"]["csp"]
    assert seen["signed_in"]["status"] == 302, "the staff user signed in"
    assert seen["signed_in"]["hsts"] == "max-age=31536000"
    assert seen["session"] == {"secure": True, "httponly": True}
    # Plain HTTP (no X-Forwarded-Proto) gets no HSTS; SecurityMiddleware sends it on HTTPS only.
    assert seen["plain_http_hsts"] is None
    # No MMORCH_METRICS_TOKEN in production: /metrics is not on the public listener.
    assert seen["metrics_status"] == 404


def test_production_hsts_follows_the_environment(tmp_path: Path) -> None:
    seen = _production(tmp_path, DJANGO_HSTS_SECONDS="600", DJANGO_HSTS_INCLUDE_SUBDOMAINS="true")
    assert seen["settings"]["SECURE_HSTS_SECONDS"] == 600
    assert seen["page"]["hsts"] == "max-age=600; includeSubDomains"
    (tmp_path / "off").mkdir()
    off = _production(tmp_path / "off", DJANGO_HSTS_SECONDS="0")
    assert off["page"]["hsts"] is None


# --- /metrics ----------------------------------------------------------------------------------------


def test_development_metrics_are_open_without_a_token(db: None, settings: Any) -> None:
    settings.IS_PRODUCTION = False
    settings.MMORCH_METRICS_TOKEN = ""
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert b"mmorch_http_requests_total" in response.content


def test_production_metrics_answer_404_without_a_token(db: None, settings: Any) -> None:
    settings.IS_PRODUCTION = True
    settings.MMORCH_METRICS_TOKEN = ""
    response = Client().get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("production", [False, True])
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", TOKEN]
)
def test_metrics_refuse_a_missing_or_wrong_token(
    db: None, settings: Any, production: bool, authorization: str | None
) -> None:
    settings.IS_PRODUCTION = production
    settings.MMORCH_METRICS_TOKEN = TOKEN
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = Client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": {
            "message": "a valid metrics bearer token is required",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_metrics_token",
        }
    }


@pytest.mark.parametrize("production", [False, True])
def test_metrics_serve_the_right_token(db: None, settings: Any, production: bool) -> None:
    settings.IS_PRODUCTION = production
    settings.MMORCH_METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"mmorch_http_requests_total" in response.content
