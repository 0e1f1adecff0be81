#!/usr/bin/env bash
# A local Prefect stack for this repository: server on 127.0.0.1 with SQLite under .prefect/,
# the process work pool, the `gpu` concurrency limit, the deployments of prefect.yaml, a worker.
#
#   scripts/prefect-local.sh up      # server + setup + deploy + worker (each step below)
#   scripts/prefect-local.sh server  # start the server (pid file .prefect/server.pid), wait healthy
#   scripts/prefect-local.sh setup   # work pool + gpu concurrency limit (idempotent)
#   scripts/prefect-local.sh deploy  # prefect deploy --all (from the repo root)
#   scripts/prefect-local.sh worker  # start a process worker (pid file .prefect/worker.pid)
#   scripts/prefect-local.sh down    # stop the worker, then the server, by their pids
#   scripts/prefect-local.sh env     # print the exports that point `prefect` at this server
#
# Settings (environment): PREFECT_PORT (4200), CAPTIONING_WORK_POOL (captioning-gpu),
# CAPTIONING_GPU_SLOTS (1: GPU stages at once), PREFECT_WORKER_QUERY_SECONDS (5).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PREFECT_PORT:-4200}"
POOL="${CAPTIONING_WORK_POOL:-captioning-gpu}"
GPU_SLOTS="${CAPTIONING_GPU_SLOTS:-1}"
STATE="$REPO/.prefect"

export PREFECT_HOME="$STATE"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export PREFECT_CLI_PROMPT=false
export DVC_NO_ANALYTICS=1
export MLFLOW_DISABLE_TELEMETRY=true
# Workers pick up a run within seconds instead of the default 10 s.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-5}"
export PREFECT_WORKER_PREFETCH_SECONDS="${PREFECT_WORKER_PREFETCH_SECONDS:-5}"
export PREFECT_RUNNER_POLL_FREQUENCY="${PREFECT_RUNNER_POLL_FREQUENCY:-5}"
# Flow runs and their stages import this checkout's library (the code dvc.yaml hashes).
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$STATE/logs"
cd "$REPO"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

healthy() {
    python - "$PREFECT_API_URL/health" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
    sys.exit(0 if response.read().strip() == b"true" else 1)
EOF
}

# Start "$@" in its own session (process group = its pid), logging to $2.log, pid in $1.pid.
spawn() {
    local name="$1"; shift
    if alive "$STATE/$name.pid"; then
        echo "$name already running (pid $(cat "$STATE/$name.pid"))"; return 0
    fi
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE/$name.pid"
    echo "$name started (pid $!, log $STATE/logs/$name.log)"
}

# Stop a process group by the pid in its pid file: SIGINT, SIGINT again after 3 s (a process
# worker ignores the first), SIGTERM after 10 s more, SIGKILL if it is still there after 10 s.
stop() {
    local name="$1" pidfile="$STATE/$1.pid" pid signal wait
    if ! alive "$pidfile"; then
        echo "$name not running"; rm -f "$pidfile"; return 0
    fi
    pid="$(cat "$pidfile")"
    for step in INT:6 INT:20 TERM:20 KILL:0; do
        signal="${step%%:*}" wait="${step##*:}"
        kill "-$signal" -- "-$pid" 2>/dev/null || true
        for _ in $(seq 0 "$wait"); do
            kill -0 -- "-$pid" 2>/dev/null || break 2
            sleep 0.5
        done
    done
    rm -f "$pidfile"
    echo "$name stopped (pid $pid)"
}

server() {
    spawn server prefect server start --host 127.0.0.1 --port "$PORT"
    for _ in $(seq 1 120); do
        if healthy; then echo "server healthy at $PREFECT_API_URL"; return 0; fi
        alive "$STATE/server.pid" || break
        sleep 0.5
    done
    echo "server did not become healthy; see $STATE/logs/server.log" >&2
    tail -n 20 "$STATE/logs/server.log" >&2
    return 1
}

setup() {
    if prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
        echo "work pool $POOL exists"
    else
        prefect work-pool create "$POOL" --type process
    fi
    # One flow run at a time per pool: DVC locks the workspace, and a run writes params.yaml.
    prefect work-pool set-concurrency-limit "$POOL" 1
    # Tasks tagged `gpu` (features, train, evaluate) share this many slots across all runs.
    prefect concurrency-limit create gpu "$GPU_SLOTS"
}

deploy() {
    # Deployments record this directory as the runs' working directory (Prefect's default
    # pull step for local code), so run from the repo root.
    prefect --no-prompt deploy --all
}

worker() {
    spawn worker prefect worker start --pool "$POOL" --type process
}

case "${1:-}" in
    server) server ;;
    setup) setup ;;
    deploy) deploy ;;
    worker) worker ;;
    up) server && setup && deploy && worker ;;
    down) stop worker; stop server ;;
    env) echo "export PREFECT_HOME=$PREFECT_HOME PREFECT_API_URL=$PREFECT_API_URL" \
        "PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1" ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
