"""`python -m bench.report [--quick] [--only NAME ...]`: every benchmark, one self-contained HTML page.

Each benchmark runs as a subprocess through its own command line with `--json PATH`, so the report
depends only on that JSON and not on the benchmark's code. The registry below says how to run each
one (short settings; shorter with --quick), how to read its JSON into figures, and its target. A
benchmark that fails (exit status, missing or unreadable JSON) is shown as failed with the tail of
its output, the others still run, and the report exits non-zero. Charts are matplotlib PNGs embedded
as base64: the page needs no network (no CDN, no external URL).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "var" / "bench" / "report.html"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure, its target and its peer in the same run."""

    name: str
    value: float
    unit: str
    target: str = ""  # as people read it: "≤ 50 µs", "≥ 4x one at a time"
    met: bool | None = None  # None: recorded, no target
    peer: str = ""  # what it is compared with in the same run
    bars: dict[str, float] = field(default_factory=dict)  # the figure first, then its peers: the chart
    target_line: float | None = None  # drawn on the chart, in the bars' unit


Reader = Callable[[dict[str, Any]], list[Figure]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    command: tuple[str, ...]  # after the Python interpreter; `--json PATH` is appended
    quick: tuple[str, ...]
    read: Reader
    target: str
    timeout_s: int = 1800


@dataclass(slots=True)
class Run:
    benchmark: Benchmark
    command: list[str]
    seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    figures: list[Figure] = field(default_factory=list)
    error: str = ""  # why it failed; empty when it worked

    @property
    def failed(self) -> bool:
        return bool(self.error)


# --- readers: benchmark JSON -> figures --------------------------------------------------------


def read_key_auth(data: dict[str, Any]) -> list[Figure]:
    results = data["results"]
    main, local = results["PostgreSQL + Redis"], results["PostgreSQL, in-process version (no Redis)"]
    warm = float(main["warm"]["p50_us"])
    return [
        Figure(
            "warm p50, PostgreSQL + Redis",
            warm,
            "µs",
            target="≤ 50 µs",
            met=warm <= 50,
            peer=f"in-process version: {local['warm']['p50_us']:.1f} µs",
            bars={"Redis": warm, "in-process": float(local["warm"]["p50_us"])},
            target_line=50,
        ),
        Figure(
            "warm p99, PostgreSQL + Redis",
            float(main["warm"]["p99_us"]),
            "µs",
            peer=f"in-process version: {local['warm']['p99_us']:.1f} µs",
            bars={"Redis": float(main["warm"]["p99_us"]), "in-process": float(local["warm"]["p99_us"])},
        ),
        Figure(
            "cold p50 (one PostgreSQL query)",
            float(main["cold"]["p50_us"]) / 1000,
            "ms",
            peer=f"in-process version: {local['cold']['p50_us'] / 1000:.2f} ms",
            bars={"Redis": float(main["cold"]["p50_us"]) / 1000, "in-process": float(local["cold"]["p50_us"]) / 1000},
        ),
    ]


def _batching_figure(name: str, results: dict[str, dict[str, float]]) -> Figure:
    level = max(results, key=int)
    top = results[level]
    vs_one, vs_static = top["continuous"] / top["one_at_a_time"], top["continuous"] / top["static"]
    return Figure(
        f"continuous batching, {name}, {level} concurrent",
        top["continuous"],
        "tok/s",
        peer=f"one at a time {top['one_at_a_time']:.1f} tok/s ({vs_one:.2f}x), "
        f"HF static batch {top['static']:.1f} tok/s ({vs_static:.2f}x)",
        bars={"continuous": top["continuous"], "one at a time": top["one_at_a_time"], "static": top["static"]},
    )


def read_inference(data: dict[str, Any]) -> list[Figure]:
    batching = data["batching"]
    # Per model since the 135M model joined the demo one; older JSON holds the demo's levels only.
    models = batching if "demo" in batching else {"demo": batching}
    batching = models["demo"]
    top = batching[max(batching, key=int)]
    level = max(batching, key=int)
    vs_one, vs_static = top["continuous"] / top["one_at_a_time"], top["continuous"] / top["static"]
    noisy = data["noisy_neighbour"]
    solo, fcfs, fair = noisy["B alone"], noisy["B with A, FCFS"], noisy["B with A, fair scheduler"]
    shares = data["weighted_shares"]
    weights = {name: int(name.lstrip("w")) for name in shares}  # tenants are named by weight: w1, w2, w3
    total = sum(weights.values())
    worst = max(abs(shares[n] - weights[n] / total) / (weights[n] / total) for n in shares)
    return [
        Figure(
            f"continuous batching, {level} concurrent",
            top["continuous"],
            "tok/s",
            target="≥ 4x one at a time, ≥ 0.7x static batch",
            met=vs_one >= 4 and vs_static >= 0.7,
            peer=f"one at a time {top['one_at_a_time']:.0f} tok/s ({vs_one:.2f}x), "
            f"HF static batch {top['static']:.0f} tok/s ({vs_static:.2f}x)",
            bars={"continuous": top["continuous"], "one at a time": top["one_at_a_time"], "static": top["static"]},
        ),
        Figure(
            "noisy neighbour: B's p95 time to first token, fair scheduler",
            fair["ttft_p95"],
            "ms",
            target="≤ 3x solo, ≥ 5x better than FCFS",
            met=fair["ttft_p95"] <= 3 * solo["ttft_p95"] and fcfs["ttft_p95"] >= 5 * fair["ttft_p95"],
            peer=f"alone {solo['ttft_p95']:.1f} ms, FCFS {fcfs['ttft_p95']:.1f} ms",
            bars={"fair": fair["ttft_p95"], "alone": solo["ttft_p95"], "FCFS": fcfs["ttft_p95"]},
            target_line=3 * solo["ttft_p95"],
        ),
        Figure(
            "weighted shares 1:2:3, worst relative error",
            worst * 100,
            "%",
            target="within 5 %",
            met=worst <= 0.05,
            peer="shares " + ", ".join(f"{n} {shares[n]:.3f}" for n in sorted(shares)),
            bars={n: shares[n] * 100 for n in sorted(shares)},
        ),
        *(_batching_figure(name, results) for name, results in models.items() if name != "demo"),
        *(read_embeddings(data["embeddings"]) if "embeddings" in data else []),
    ]


def read_embeddings(best: dict[str, float]) -> list[Figure]:
    vs_direct = best["engine_64"] / best["direct_64"]
    vs_one = best["concurrent"] / best["one_at_a_time"]
    return [
        Figure(
            "embeddings, batch 64 (all-MiniLM-L6-v2)",
            best["engine_64"],
            "inputs/s",
            target="≥ 0.9x transformers directly",
            met=vs_direct >= 0.9,
            peer=f"transformers directly {best['direct_64']:.0f} inputs/s ({vs_direct:.2f}x); batch 1: "
            f"{best['engine_1']:.0f} vs {best['direct_1']:.0f} inputs/s",
            bars={"engine": best["engine_64"], "transformers": best["direct_64"]},
        ),
        Figure(
            "embeddings, 64 concurrent single-input callers",
            best["concurrent"],
            "inputs/s",
            target="≥ 5x one at a time",
            met=vs_one >= 5,
            peer=f"one at a time {best['one_at_a_time']:.0f} inputs/s ({vs_one:.2f}x), "
            f"{best['forward_passes_64_callers']:.0f} forward passes",
            bars={"64 concurrent": best["concurrent"], "one at a time": best["one_at_a_time"]},
        ),
    ]


def read_gateway_overhead(data: dict[str, Any]) -> list[Figure]:
    rows = {(r["name"], r["connections"]): r for r in data["results"]}
    direct = rows[("direct", 1)]
    figures = []
    gateways = sorted(name for name, connections in rows if name.startswith("gateway") and connections == 1)
    for name in gateways:
        row = rows[(name, 1)]
        added50, added99 = row["p50_ms"] - direct["p50_ms"], row["p99_ms"] - direct["p99_ms"]
        figures.append(
            Figure(
                f"{name}: added p50 / p99 at 1 connection",
                added50,
                "ms",
                target="≤ 2 ms / ≤ 10 ms",
                met=added50 <= 2 and added99 <= 10,
                peer=f"direct p50 {direct['p50_ms']:.2f} ms; added p99 {added99:.2f} ms",
                bars={"gateway p50": row["p50_ms"], "direct p50": direct["p50_ms"]},
                target_line=direct["p50_ms"] + 2,
            )
        )
        busy, bare = rows.get((name, 32)), rows.get((name.replace("gateway", "bare-django"), 32))
        if busy is not None:
            ratio = busy["rps"] / bare["rps"] if bare else None
            figures.append(
                Figure(
                    f"{name}: requests/s at 32 connections",
                    busy["rps"],
                    "req/s",
                    target="≥ 1,000 req/s and ≥ 0.8x pass-through",
                    met=busy["rps"] >= 1000 and (ratio is None or ratio >= 0.8),
                    peer=f"bare Django pass-through {bare['rps']:.0f} req/s ({ratio:.2f}x)" if bare else "",
                    bars={"gateway": busy["rps"], **({"bare Django": bare["rps"]} if bare else {})},
                    target_line=1000,
                )
            )
    return figures


def read_ledger(data: dict[str, Any]) -> list[Figure]:
    ingestion = data["ingestion"]
    figures = []
    for run in ingestion if isinstance(ingestion, list) else [ingestion]:
        rate = float(run["end_to_end_events_per_s"])
        nodes = run.get("nodes", 1)
        figures.append(
            Figure(
                f"ledger ingestion, journal → ledger, {nodes} node(s) at once",
                rate,
                "events/s",
                target="≥ 10,000 events/s",
                met=rate >= 10_000,
                peer=f"database only {run['db_only_events_per_s']:.0f} events/s; rounds {run.get('rounds', [])}",
                bars={"end to end": rate, "database only": float(run["db_only_events_per_s"])},
                target_line=10_000,
            )
        )
    return figures


def read_billing(data: dict[str, Any]) -> list[Figure]:
    billing = data["billing"]
    return [
        Figure(
            f"billing_run over {billing['tenants']} tenants, {billing['ledger_rows']} rows",
            float(billing["billing_run_s"]),
            "s",
            peer=f"rerun (no-op) {billing['rerun_s']} s; peak RSS {billing['peak_rss_mib']} MiB",
            bars={"billing run": float(billing["billing_run_s"]), "rerun": float(billing["rerun_s"])},
        ),
    ]


# --- the registry ------------------------------------------------------------------------------

REGISTRY: tuple[Benchmark, ...] = (
    Benchmark(
        "key_auth",
        ("-m", "bench.key_auth", "--keys", "100", "--rounds", "2", "--warm-calls", "50"),
        ("-m", "bench.key_auth", "--keys", "20", "--rounds", "1", "--warm-calls", "20"),
        read_key_auth,
        "warm p50 ≤ 50 µs",
    ),
    Benchmark(
        "inference",
        ("-m", "bench.inference", "--no-write"),
        ("-m", "bench.inference", "--quick"),
        read_inference,
        "≥ 4x one at a time; B ≤ 3x solo; shares within 5 %",
    ),
    Benchmark(
        "gateway_overhead",
        ("-m", "bench.gateway_overhead", "--duration", "5", "--workers", "1", "2", "--output", "var/bench/gateway.md"),
        ("-m", "bench.gateway_overhead", "--duration", "2", "--workers", "1", "--keys", "1000", "--cold-keys", "200",
         "--output", "var/bench/gateway.md"),
        read_gateway_overhead,
        "added p50 ≤ 2 ms, p99 ≤ 10 ms; ≥ 1,000 req/s",
    ),
    Benchmark(
        "ledger",
        ("-m", "bench.ledger", "--events", "20000", "--rounds", "1", "--tenants", "200", "--nodes", "1", "4",
         "--no-write"),
        ("-m", "bench.ledger", "--events", "5000", "--rounds", "1", "--tenants", "20", "--nodes", "1", "4",
         "--no-write"),
        read_ledger,
        "≥ 10,000 events/s",
    ),
    Benchmark(
        "billing",
        ("-m", "bench.billing", "--tenants", "1000", "--rows", "200000", "--no-write"),
        ("-m", "bench.billing", "--tenants", "100", "--rows", "20000", "--no-write"),
        read_billing,
        "recorded (target at 50,000 tenants x 10M rows: < 5 min)",
    ),
)  # fmt: skip


# --- running -----------------------------------------------------------------------------------


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def benchmark_run(benchmark: Benchmark, *, quick: bool, workdir: Path, python: str = sys.executable) -> Run:
    """Run one benchmark; never raises for the benchmark's own failure (the Run says it failed)."""
    out = workdir / f"{benchmark.name}.json"
    out.unlink(missing_ok=True)
    command = [python, *(benchmark.quick if quick else benchmark.command), "--json", str(out)]
    run = Run(benchmark, command, load_before=os.getloadavg())
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=benchmark.timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        run.error = f"timed out after {benchmark.timeout_s} s\n{_tail(str(exc.stdout or ''))}"
    else:
        if done.returncode != 0:
            run.error = f"exit status {done.returncode}\n{_tail(done.stdout + done.stderr)}"
        else:
            run.error = _read_figures(run, out)
    run.seconds = time.monotonic() - started
    run.load_after = os.getloadavg()
    return run


def _read_figures(run: Run, path: Path) -> str:
    try:
        data = json.loads(path.read_text())
        run.figures = run.benchmark.read(data)
    except FileNotFoundError:
        return f"no JSON written at {path}"
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        return f"unreadable JSON ({type(exc).__name__}: {exc})"
    return "" if run.figures else "the JSON held no figures"


# --- the page ----------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def chart_png(figure: Figure) -> str:
    """A small bar chart of the figure and its peers, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.2), dpi=96)
    labels, values = list(figure.bars), list(figure.bars.values())
    colours = ["#2f6fb0"] + ["#9aa9b8"] * (len(values) - 1)
    ax.barh(labels, values, color=colours)
    if figure.target_line is not None:
        ax.axvline(figure.target_line, color="#c0392b", linestyle="--", linewidth=1, label="target")
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    ax.invert_yaxis()
    ax.set_xlabel(figure.unit, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d2733}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}th,td{border-bottom:1px solid #d8dee4;
padding:.35rem .5rem;text-align:left;vertical-align:top}code,pre{font-size:12px;background:#f3f5f7}
pre{padding:.5rem;overflow-x:auto;white-space:pre-wrap}.met{color:#1e7a3c}.missed{color:#b03a2e}
.failed{color:#b03a2e;font-weight:600}.figure{display:flex;gap:1rem;align-items:center;margin:.5rem 0}
"""


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def report_html(runs: Sequence[Run], *, machine: dict[str, str], command: str, quick: bool) -> str:
    e = html.escape
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    failed = [r for r in runs if r.failed]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mm-orch benchmarks {e(now)}</title><style>{_STYLE}</style></head><body>",
        "<h1>mm-orch benchmark report</h1>",
        f"<p>{e(now)}, {'quick' if quick else 'short'} settings. Command: <code>{e(command)}</code>. "
        f"{len(runs) - len(failed)} of {len(runs)} benchmarks ran"
        + (f"; <span class='failed'>failed: {e(', '.join(r.benchmark.name for r in failed))}</span>" if failed else "")
        + ".</p>",
        "<h2>Machine</h2><table>",
        *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in machine.items()),
        "</table>",
        "<p>Figures from a shared or busy machine move by tens of percent; the ratios to the peer measured "
        "in the same run are what the targets are about.</p>",
        "<h2>Summary</h2><table><thead><tr><th>benchmark</th><th>figure</th><th>value</th><th>target</th>"
        "<th>peer in the same run</th></tr></thead><tbody>",
    ]
    for run in runs:
        if run.failed:
            parts.append(
                f"<tr><td>{e(run.benchmark.name)}</td><td colspan='4' class='failed'>failed: "
                f"{e(run.error.splitlines()[0])}</td></tr>"
            )
        for f in run.figures:
            verdict = (
                ""
                if f.met is None
                else (" <span class='met'>met</span>" if f.met else " <span class='missed'>missed</span>")
            )
            parts.append(
                f"<tr><td>{e(run.benchmark.name)}</td><td>{e(f.name)}</td><td>{e(_fmt(f.value))} {e(f.unit)}</td>"
                f"<td>{e(f.target or 'recorded')}{verdict}</td><td>{e(f.peer)}</td></tr>"
            )
    parts.append("</tbody></table>")
    for run in runs:
        parts.append(f"<h2 id='{e(run.benchmark.name)}'>{e(run.benchmark.name)}</h2>")
        parts.append(
            f"<p>Target: {e(run.benchmark.target)}. Ran {run.seconds:.0f} s; load average before "
            f"{' '.join(f'{x:.2f}' for x in run.load_before)}, after {' '.join(f'{x:.2f}' for x in run.load_after)}."
            f"</p><p>Command: <code>{e(shlex.join(['.venv/bin/python', *run.command[1:]]))}</code></p>"
        )
        if run.failed:
            parts.append(f"<p class='failed'>Failed.</p><pre>{e(run.error)}</pre>")
        for f in run.figures:
            image = f"<img alt='{e(f.name)}' src='data:image/png;base64,{chart_png(f)}'>" if f.bars else ""
            parts.append(
                f"<div class='figure'>{image}<div><strong>{e(f.name)}</strong>: {e(_fmt(f.value))} {e(f.unit)}"
                f"<br>target: {e(f.target or 'recorded')}<br>peer: {e(f.peer or '-')}</div></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the shortest settings (under five minutes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[b.name for b in REGISTRY])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    chosen = [b for b in REGISTRY if not args.only or b.name in args.only]
    runs = []
    for benchmark in chosen:
        print(f"== {benchmark.name}", flush=True)
        run = benchmark_run(benchmark, quick=args.quick, workdir=args.output.parent)
        print(f"   {'FAILED: ' + run.error.splitlines()[0] if run.failed else 'ok'} ({run.seconds:.0f} s)", flush=True)
        runs.append(run)
    command = shlex.join([".venv/bin/python", "-m", "bench.report", *(argv if argv is not None else sys.argv[1:])])
    args.output.write_text(report_html(runs, machine=machine_info(), command=command, quick=args.quick))
    print(f"wrote {args.output}", flush=True)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
