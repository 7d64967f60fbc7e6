#!/bin/sh
# Entry point of the control-plane image: `web`, `worker`, `beat`, `migrate`, or any manage.py command.
# Extra arguments go to the underlying program (e.g. `web --workers 4`, `worker --concurrency 8`).
set -eu

role="${1:-web}"
[ "$#" -gt 0 ] && shift

if [ "$role" = web ]; then
    # Every uvicorn worker writes its Prometheus samples here and /metrics adds them up; files left
    # by a previous run of this container would be counted again, so start from an empty directory.
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
        rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}"
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    fi
else
    # Only web serves /metrics. Other processes (worker, beat, a command run with `exec` in a web
    # container) keep their samples in memory instead of touching the web's directory.
    unset PROMETHEUS_MULTIPROC_DIR
fi

case "$role" in
    web)
        # --log-config: the supervisor's own lines take MMORCH_LOG_FORMAT too (workers load Django's).
        # X-Forwarded-For is client-controlled: uvicorn takes the client address from it only when
        # the hop that sent it is one of the proxies the audit log trusts too (MMORCH_TRUSTED_PROXIES).
        exec uvicorn config.asgi:application --host 0.0.0.0 --port 8000 \
            --http httptools --loop uvloop \
            --proxy-headers --forwarded-allow-ips "${MMORCH_TRUSTED_PROXIES:-127.0.0.1}" \
            --timeout-graceful-shutdown 30 \
            --log-config config/uvicorn-logging.json "$@"
        ;;
    worker)
        # --quiet: no start-up banner, so every line is a log line (MMORCH_LOG_FORMAT).
        exec celery -A config --quiet worker --loglevel INFO "$@"
        ;;
    beat)
        # The schedule file lives on writable scratch space; the schedule itself is in settings.
        exec celery -A config --quiet beat --loglevel INFO --schedule /tmp/celerybeat-schedule "$@"
        ;;
    migrate)
        exec python manage.py migrate --noinput "$@"
        ;;
    *)
        exec python manage.py "$role" "$@"
        ;;
esac
