"""A real Prometheus (Debian's `prometheus`) scrapes both planes and evaluates the rules and dashboards.

promtool checks syntax and the rule unit tests use synthetic series; this catches what only shows at
run time: an exposition Prometheus cannot parse, a rule that errors on real series (for example a
many-to-many match), a dashboard query the server rejects.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from tests.platform import helpers
from tests.platform.conftest import METRICS_TOKEN
from tests.support.inference_node import InferenceNode, free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed"),
    pytest.mark.django_db,  # the control plane's /metrics reads the database
]


@pytest.fixture(scope="module")
def control_plane_target(control_plane_metrics: str) -> Iterator[str]:
    """Serves the control plane's real /metrics page (taken through Django) for Prometheus to scrape."""
    page = control_plane_metrics.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # As the real /metrics does with MMORCH_METRICS_TOKEN set: Prometheus must send it.
            if self.headers.get("Authorization") != f"Bearer {METRICS_TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def prometheus(
    control_plane_target: str,
    live_node: InferenceNode,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((helpers.PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(path) for path in helpers.RULE_FILES]
    token_file = workdir / "metrics_token"
    token_file.write_text(METRICS_TOKEN)
    targets = {"mmorch-control-plane": control_plane_target, "mmorch-inference": f"127.0.0.1:{live_node.port}"}
    config["scrape_configs"] = [
        {
            **job,
            "static_configs": [{"targets": [targets[job["job_name"]]]}],
            "authorization": {**job["authorization"], "credentials_file": str(token_file)},
        }
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _settled(base):
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not scrape both targets in time"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def _settled(base: str) -> bool:
    """Both targets scraped three times (rate() has samples) and every rule evaluated once."""
    try:
        scrapes = _get(f"{base}/api/v1/query?query=count_over_time(up%5B1m%5D)")["data"]["result"]
        groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
    except OSError:
        return False
    evaluated = all(r["lastEvaluation"] != "0001-01-01T00:00:00Z" for g in groups for r in g["rules"])
    return len(scrapes) == 2 and all(float(r["value"][1]) >= 3 for r in scrapes) and bool(groups) and evaluated


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_both_planes_are_scraped(prometheus: str) -> None:
    up = {r["metric"]["job"]: r["value"][1] for r in _query(prometheus, "up")}
    assert up == {"mmorch-control-plane": "1", "mmorch-inference": "1"}


def test_real_series_carry_the_labels_the_dashboards_use(prometheus: str) -> None:
    result = _query(prometheus, 'sum by (tenant, job) (mmorch_inference_completion_tokens_total{tenant="7"})')
    assert result and float(result[0]["value"][1]) > 0
    assert result[0]["metric"]["job"] == "mmorch-inference"
    assert _query(prometheus, 'mmorch_http_requests_total{route="healthz", job="mmorch-control-plane"}')


def test_every_rule_evaluates_without_error(prometheus: str) -> None:
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(helpers.alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["lastEvaluation"] != "0001-01-01T00:00:00Z", rule["name"]
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert not firing, f"healthy planes fire {firing}"


def test_every_dashboard_query_runs(prometheus: str) -> None:
    ran = 0
    for dashboard in helpers.dashboards().values():
        variables = [v["name"] for v in dashboard["templating"]["list"]]
        for expr in helpers.dashboard_queries(dashboard):
            _query(prometheus, helpers.grafana_to_promql(expr, variables))
            ran += 1
    assert ran > 30
