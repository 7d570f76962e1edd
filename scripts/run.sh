#!/usr/bin/env bash
# Set up Firework on this machine and start the control plane (`make run`).
#
# Embedded defaults, nothing else to install or start: SQLite and generated
# secrets in var/, node configs published to a directory (var/objectstore), and
# Celery running tasks without a broker, in the web process. gunicorn serves the
# web with the shipped settings. Any variable already set in the environment
# (DATABASE_URL, FIREWORK_STORE, ...) wins over these defaults; with
# CELERY_BROKER_URL set (filesystem://localhost/ needs nothing installed: its
# queue is the directory var/broker) a Celery worker starts alongside and takes
# the runs, so none happens inside a web request.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PORT="${PORT:-8000}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.firework-server-installed"
DEV_STAMP="$VENV/.installed-dev"  # `make test` installed the dev extra, a superset
VAR_DIR="${FIREWORK_VAR_DIR:-var}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
up_to_date() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
# Install again only when pyproject.toml changed since the last install.
if ! up_to_date "$STAMP" && ! up_to_date "$DEV_STAMP"; then
    echo "==> installing Firework with the server extra"
    "$VENV/bin/python" -m pip install --quiet -e '.[server]'
    touch "$STAMP"
fi
py="$VENV/bin/python"

export FIREWORK_STORE="${FIREWORK_STORE:-local}"
export FIREWORK_STORE_DIR="${FIREWORK_STORE_DIR:-$PWD/var/objectstore}"
export CELERY_BROKER_URL="${CELERY_BROKER_URL:-memory://}"
export DATABASE_CONN_MAX_AGE="${DATABASE_CONN_MAX_AGE:-60}"

echo "==> migrating the database"
"$py" manage.py migrate --noinput
echo "==> ensuring the operator account"
"$py" manage.py ensure_operator

if [ "$CELERY_BROKER_URL" != "memory://" ]; then  # memory://: no broker
    mkdir -p "$VAR_DIR"
    worker_log="$VAR_DIR/worker.log"
    echo "==> starting a Celery worker (log: $worker_log)"
    "$VENV/bin/celery" -A firework_site worker --pool solo --loglevel INFO \
        --without-gossip --without-mingle --hostname "firework-run@%h" \
        >>"$worker_log" 2>&1 &
    worker=$!
    # Ctrl-C reaches gunicorn (the foreground job), not a background job: stop
    # the worker when this script ends, however it ends.
    trap 'kill "$worker" 2>/dev/null; wait "$worker" 2>/dev/null || true' EXIT
fi

echo "==> enriching the example repository (examples/enricher-input)"
"$py" manage.py setup_example --wait 60

user="${FIREWORK_ADMIN_USER:-admin}"
if [ -n "${FIREWORK_ADMIN_PASSWORD:-}${FIREWORK_ADMIN_PASSWORD_FILE:-}" ]; then
    password_hint="the password from FIREWORK_ADMIN_PASSWORD"
elif [ -f "$VAR_DIR/admin-password" ]; then
    password_hint="the password in $VAR_DIR/admin-password"
else
    password_hint="the password you set for that account"
fi
cat <<INFO

Firework dashboard: http://127.0.0.1:$PORT/
Log in as '$user' with $password_hint.
Stop with Ctrl-C.

INFO

"$VENV/bin/gunicorn" -c python:firework_site.gunicorn_conf firework_site.wsgi \
    --bind "127.0.0.1:$PORT" --access-logfile -
