#!/usr/bin/env bash
# A loopback-only Ray head on this machine that behaves like a real cluster (token authentication on), for
# `ray job submit` and for our jobs' --address. Usage (docs/cluster.md):
#
#   bash scripts/local_cluster.sh start     # start the head in the background; prints how to reach it
#   eval "$(bash scripts/local_cluster.sh env)"   # this shell's Ray CLI and jobs then send the token
#   bash scripts/local_cluster.sh status    # running or not, addresses, token file
#   bash scripts/local_cluster.sh stop      # stop the head and every process it started
#
# Settings (environment):
#   DCM_RAY_PORT (6379), DCM_RAY_DASHBOARD_PORT (8265), DCM_RAY_CLIENT_PORT (10001), DCM_RAY_AGENT_PORT (52365):
#       the head's fixed ports, all bound to 127.0.0.1 (every other Ray port is random, also on 127.0.0.1)
#   DCM_RAY_NUM_CPUS    logical CPUs of the head (default: Ray counts the cores)
#   DCM_CLUSTER_DIR     state folder: pid, log, Ray's temp dir (default ${TMPDIR:-/tmp}/dcm-cluster-$(id -u))
#   RAY_AUTH_TOKEN_PATH the token file (default ~/.ray/auth_token, where Ray's CLI looks); made with mode 0600
#                       when missing
#   VENV                the virtualenv whose python runs submitted jobs (default .venv)
# Variables already in the environment at `start` (AWS_*, HF_*) reach every Ray process: that is how a cluster's
# workers get storage credentials without them passing through a job's runtime_env.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PORT=${DCM_RAY_PORT:-6379}
DASHBOARD_PORT=${DCM_RAY_DASHBOARD_PORT:-8265}
CLIENT_PORT=${DCM_RAY_CLIENT_PORT:-10001}
AGENT_PORT=${DCM_RAY_AGENT_PORT:-52365}
STATE=${DCM_CLUSTER_DIR:-${TMPDIR:-/tmp}/dcm-cluster-$(id -u)}
TOKEN=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
VENV=${VENV:-$ROOT/.venv}
PIDFILE=$STATE/head.pid
LOG=$STATE/head.log
# Seconds to wait for the dashboard to answer after start, and for the head to exit after stop.
START_TIMEOUT_S=90
STOP_TIMEOUT_S=30

# The job API answers an authenticated request: the head is up and the token is the one it requires.
ready() {
  "$VENV/bin/python" - "$DASHBOARD_PORT" "$TOKEN" >/dev/null 2>&1 <<'PY'
import sys, urllib.request
port, token = sys.argv[1], open(sys.argv[2]).read().strip()
request = urllib.request.Request(f"http://127.0.0.1:{port}/api/version", headers={"Authorization": f"Bearer {token}"})
urllib.request.urlopen(request, timeout=2)
PY
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

exports() {
  # What a shell needs for the Ray CLI and our jobs to authenticate and to stay on loopback.
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$(printf %q "$TOKEN")"
  echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
}

make_token() {
  [ -s "$TOKEN" ] && return
  mkdir -p "$(dirname "$TOKEN")"
  # Only this user may read the token: it lets its holder run code on the cluster.
  (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN")
  echo "local_cluster: new token in $TOKEN (mode 0600)"
}

start() {
  if running; then
    echo "local_cluster: already running (pid $(cat "$PIDFILE")); see: bash scripts/local_cluster.sh status"
    return 0
  fi
  [ -x "$VENV/bin/ray" ] || { echo "local_cluster: $VENV/bin/ray not found; run bash scripts/setup.sh" >&2; exit 2; }
  # The state folder sits in a shared /tmp: it must be ours and private, or a planted symlink could redirect writes.
  if [ -L "$STATE" ] || { [ -e "$STATE" ] && [ ! -O "$STATE" ]; }; then
    echo "local_cluster: $STATE exists but is not a folder of this user; set DCM_CLUSTER_DIR elsewhere" >&2
    exit 2
  fi
  mkdir -p -m 700 "$STATE"
  make_token
  local cpus=()
  [ -n "${DCM_RAY_NUM_CPUS:-}" ] && cpus=(--num-cpus "$DCM_RAY_NUM_CPUS")
  # --block keeps one process that owns the whole node: stopping it (by its pid) stops what it started, and
  # setsid makes it the leader of a new session, so stop finds any straggler by that session id, never by name.
  PATH="$VENV/bin:$PATH" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    RAY_USAGE_STATS_ENABLED=0 setsid "$VENV/bin/ray" start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 --port "$PORT" --include-dashboard true --dashboard-host 127.0.0.1 \
    --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$CLIENT_PORT" \
    --dashboard-agent-listen-port "$AGENT_PORT" --temp-dir "$STATE/ray" "${cpus[@]}" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until ready; do
    if ! running || [ $SECONDS -ge $deadline ]; then
      echo "local_cluster: the head did not come up; its log ($LOG) ends with:" >&2
      tail -n 20 "$LOG" >&2
      stop >/dev/null
      exit 1
    fi
    sleep 1
  done
  echo "local_cluster: Ray head on 127.0.0.1 (pid $(cat "$PIDFILE")), token authentication on"
  echo "  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python jobs/..."
  echo "  python jobs/batch_generate.py --address 127.0.0.1:$PORT ..."
  echo "  first, in this shell: eval \"\$(bash scripts/local_cluster.sh env)\""
}

# Live processes of the session the head leads (setsid at start): the head and everything it started, however
# they regrouped themselves. Stopping by these ids reaches this cluster only, never another Ray on the machine.
session_pids() {
  ps -eo pid=,sid=,stat= | awk -v sid="$1" '$2 == sid && $3 !~ /^Z/ {print $1}'
}

wait_gone() {  # wait_gone SECONDS PID...: until none of the pids is alive, or the time is up
  local deadline=$((SECONDS + $1))
  shift
  while [ $SECONDS -lt $deadline ]; do
    local alive=0 p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.5
  done
  return 1
}

stop() {
  if ! [ -f "$PIDFILE" ]; then
    echo "local_cluster: not running"
    return 0
  fi
  local pid signal pids
  pid=$(cat "$PIDFILE")
  # The head first (it shuts its node down in order), then whatever of its session is left: TERM, then KILL.
  kill -TERM "$pid" 2>/dev/null && wait_gone "$STOP_TIMEOUT_S" "$pid" || true
  for signal in TERM KILL; do
    pids=$(session_pids "$pid")
    [ -z "$pids" ] && break
    kill "-$signal" $pids 2>/dev/null || true  # $pids unquoted: one argument per pid
    wait_gone "$STOP_TIMEOUT_S" $pids || true
  done
  rm -f "$PIDFILE"
  echo "local_cluster: stopped"
}

status() {
  if running; then
    echo "local_cluster: running (pid $(cat "$PIDFILE")); GCS 127.0.0.1:$PORT, dashboard and job API" \
      "http://127.0.0.1:$DASHBOARD_PORT; token $TOKEN"
  else
    echo "local_cluster: not running"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) exports ;;
  *) echo "usage: bash scripts/local_cluster.sh start|stop|status|env" >&2; exit 2 ;;
esac
