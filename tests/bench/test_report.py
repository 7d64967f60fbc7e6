"""The benchmark report builder on canned benchmark JSON: parsing, figures, one self-contained page."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.report import REGISTRY, Benchmark, Run, benchmark_run, report_html

KEY_AUTH = {
    "results": {
        "PostgreSQL + Redis": {
            "warm": {"calls": 1000, "p50_us": 0.9, "p99_us": 1.2, "mean_us": 1.0},
            "cold": {"calls": 200, "p50_us": 1150.0, "p99_us": 6600.0, "mean_us": 1500.0},
        },
        "PostgreSQL, in-process version (no Redis)": {
            "warm": {"calls": 1000, "p50_us": 0.8, "p99_us": 1.1, "mean_us": 0.9},
            "cold": {"calls": 200, "p50_us": 1100.0, "p99_us": 6000.0, "mean_us": 1400.0},
        },
    }
}
INFERENCE = {
    "batching": {
        "demo": {
            "1": {"continuous": 500.0, "one_at_a_time": 480.0, "static": 510.0},
            "16": {"continuous": 16000.0, "one_at_a_time": 2000.0, "static": 17600.0},
        },
        "llama-135m": {
            "1": {"continuous": 6.8, "one_at_a_time": 6.5, "static": 8.0},
            "16": {"continuous": 29.7, "one_at_a_time": 7.0, "static": 36.7},
        },
    },
    "noisy_neighbour": {
        "B alone": {"ttft_p50": 3.0, "ttft_p95": 3.5, "e2e_p50": 20.0, "e2e_p95": 25.0},
        "B with A, FCFS": {"ttft_p50": 400.0, "ttft_p95": 551.0, "e2e_p50": 600.0, "e2e_p95": 700.0},
        "B with A, fair scheduler": {"ttft_p50": 6.0, "ttft_p95": 8.3, "e2e_p50": 40.0, "e2e_p95": 50.0},
    },
    "weighted_shares": {"w1": 0.166, "w2": 0.334, "w3": 0.5},
    "embeddings": {
        "engine_1": 30.0,
        "direct_1": 36.0,
        "engine_64": 55.0,
        "direct_64": 54.0,
        "concurrent": 98.0,
        "one_at_a_time": 33.0,
        "forward_passes_64_callers": 1.0,
    },
}
GATEWAY = {
    "results": [
        {"name": "direct", "connections": 1, "p50_ms": 0.5, "p99_ms": 1.0, "rps": 2000.0, "errors": "0"},
        {"name": "direct", "connections": 32, "p50_ms": 5.0, "p99_ms": 9.0, "rps": 6000.0, "errors": "0"},
        {"name": "gateway (1w)", "connections": 1, "p50_ms": 2.45, "p99_ms": 7.2, "rps": 400.0, "errors": "0"},
        {"name": "gateway (1w)", "connections": 32, "p50_ms": 50.0, "p99_ms": 90.0, "rps": 554.0, "errors": "0"},
        {"name": "bare-django (1w)", "connections": 32, "p50_ms": 60.0, "p99_ms": 99.0, "rps": 137.0, "errors": "0"},
    ]
}
LEDGER = {
    "ingestion": [
        {"nodes": 1, "end_to_end_events_per_s": 13201.0, "db_only_events_per_s": 20000.0, "rounds": [10535.0, 13201.0]},
        {"nodes": 4, "end_to_end_events_per_s": 9000.0, "db_only_events_per_s": 15000.0, "rounds": [9000.0]},
    ]
}
BILLING = {
    "billing": {"tenants": 1000, "ledger_rows": 1000000, "billing_run_s": 7.75, "rerun_s": 0.95, "peak_rss_mib": 89.5}
}
WRITES_LEDGER = f"import json, sys\nopen(sys.argv[-1], 'w').write(json.dumps({json.dumps(LEDGER)}))\n"
CANNED = {
    "key_auth": KEY_AUTH,
    "inference": INFERENCE,
    "gateway_overhead": GATEWAY,
    "ledger": LEDGER,
    "billing": BILLING,
}


def test_every_registered_benchmark_reads_its_json_into_figures() -> None:
    assert {b.name for b in REGISTRY} == set(CANNED)
    figures = {b.name: b.read(CANNED[b.name]) for b in REGISTRY}
    key_auth = figures["key_auth"][0]
    assert (key_auth.value, key_auth.unit, key_auth.met) == (0.9, "µs", True)
    assert key_auth.peer == "in-process version: 0.8 µs"
    batching, noisy, shares, big, embed_64, embed_callers = figures["inference"]
    assert embed_64.value == 55.0 and embed_64.met and "(1.02x)" in embed_64.peer
    assert embed_callers.met is False and "(2.97x)" in embed_callers.peer and "1 forward passes" in embed_callers.peer
    assert batching.name == "continuous batching, 16 concurrent" and batching.met  # 8x and 0.91x
    assert big.name == "continuous batching, llama-135m, 16 concurrent" and big.value == 29.7 and big.met is None
    assert "(4.24x)" in big.peer and "(0.81x)" in big.peer
    assert "(8.00x)" in batching.peer and "(0.91x)" in batching.peer
    assert noisy.value == 8.3 and noisy.met and noisy.target_line == pytest.approx(10.5)
    assert shares.value == pytest.approx(0.4) and shares.met  # w1: |0.166 - 1/6| / (1/6)
    added, throughput = figures["gateway_overhead"]
    assert added.value == pytest.approx(1.95) and added.met  # 2.45 - 0.5 ms; p99 6.2 ms
    assert throughput.value == 554.0 and throughput.met is False  # under 1,000 req/s
    assert "(4.04x)" in throughput.peer
    one_node, four_nodes = figures["ledger"]
    assert one_node.met and one_node.name.endswith("1 node(s) at once")
    assert four_nodes.met is False and four_nodes.value == 9000.0
    (billing,) = figures["billing"]
    assert billing.met is None and billing.target == "" and billing.value == 7.75


def _runs() -> list[Run]:
    runs = []
    for benchmark in REGISTRY:
        run = Run(benchmark, ["python", *benchmark.quick, "--json", "x.json"], seconds=12.0)
        if benchmark.name == "ledger":
            run.error = "exit status 1\nTraceback (most recent call last):\n  psycopg.OperationalError: <refused>"
        else:
            run.figures = benchmark.read(CANNED[benchmark.name])
        runs.append(run)
    return runs


def test_the_page_has_every_figure_embedded_and_no_external_url() -> None:
    machine = {"cpu": "Test CPU <fast>", "cores": "2", "load average": "0.10 0.20 0.30"}
    page = report_html(_runs(), machine=machine, command=".venv/bin/python -m bench.report --quick", quick=True)
    assert page.startswith("<!doctype html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    figures = sum(len(b.read(CANNED[b.name])) for b in REGISTRY if b.name != "ledger")
    assert len(images) == figures
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # Self-contained: no link, script or stylesheet from elsewhere.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[a-z0-9]|url\(", text, re.IGNORECASE)
    assert re.findall(r"(?:src|href)=", text) == ["src="] * len(images)
    assert "<script" not in page and "<link" not in page
    assert "Test CPU &lt;fast&gt;" in page and "0.10 0.20 0.30" in page  # escaped, never raw
    assert "failed: ledger" in page and "psycopg.OperationalError: &lt;refused&gt;" in page
    assert "warm p50 ≤ 50 µs" in page and "in-process version: 0.8 µs" in page
    assert "--json x.json" in page  # each benchmark's command


def _fake(tmp_path: Path, name: str, body: str) -> Benchmark:
    script = tmp_path / f"{name}.py"
    script.write_text(body)
    return Benchmark(name, (str(script),), (str(script),), lambda data: report.read_ledger(data), "test")


def test_a_failing_or_silent_benchmark_is_reported_not_raised(tmp_path: Path) -> None:
    writes = WRITES_LEDGER
    ok = benchmark_run(_fake(tmp_path, "ok", writes), quick=True, workdir=tmp_path, python=sys.executable)
    assert not ok.failed and ok.figures[0].value == 13201.0
    crash = benchmark_run(_fake(tmp_path, "crash", "raise SystemExit('no database')\n"), quick=True, workdir=tmp_path)
    assert crash.failed and crash.error.startswith("exit status 1") and "no database" in crash.error
    silent = benchmark_run(_fake(tmp_path, "silent", "pass\n"), quick=True, workdir=tmp_path)
    assert silent.error.startswith("no JSON written")
    garbled = benchmark_run(
        _fake(tmp_path, "garbled", writes.replace("ingestion", "other")), quick=True, workdir=tmp_path
    )
    assert garbled.error.startswith("unreadable JSON (KeyError")


def test_main_writes_the_page_and_exits_nonzero_when_one_failed(tmp_path: Path, monkeypatch: Any) -> None:
    good = _fake(tmp_path, "good", WRITES_LEDGER)
    bad = _fake(tmp_path, "bad", "raise SystemExit(3)\n")
    monkeypatch.setattr(report, "REGISTRY", (good, bad))
    output = tmp_path / "out" / "report.html"
    assert report.main(["--quick", "--output", str(output)]) == 1
    page = output.read_text()
    assert "1 of 2 benchmarks ran" in page and "exit status 3" in page
    monkeypatch.setattr(report, "REGISTRY", (good,))
    assert report.main(["--output", str(output)]) == 0
