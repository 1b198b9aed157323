#!/usr/bin/env bash
# Webhook ingest benchmark: wrk posting ~4 KB raw messages (unique Message-ID each) with 64
# connections to nginx answering a static 202, then to mailrail, in the same run; prints
# requests/s and latency percentiles side by side and the ratio.
#
# usage: bench/webhook/run.sh [-d SECONDS] [-t WRK_THREADS] [-c CONNECTIONS] [-w NGINX_WORKERS] \
#          -- MAILRAIL_COMMAND...
#   MAILRAIL_COMMAND is started in the background and must serve POST /ingest on the port given by
#   the placeholder {port} in its arguments, e.g.
#     bench/webhook/run.sh -- build/bench/webhook_server {port}          (net layer alone, no WAL)
#     bench/webhook/run.sh -- build/tools/mailrail run --config X --webhook-port {port}  (durable)
#   Both servers are stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=10 threads=2 connections=64 nginx_workers=1
while getopts "d:t:c:w:" opt; do
  case $opt in
    d) duration=$OPTARG ;; t) threads=$OPTARG ;; c) connections=$OPTARG ;; w) nginx_workers=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [-d S] [-t T] [-c C] [-w W] -- MAILRAIL_COMMAND... ({port} placeholder)" >&2; exit 2; }

work=$(mktemp -d /tmp/mailrail-webhook-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}

# --- nginx: static 202 on loopback --------------------------------------------------------------
nginx_port=$(free_port)
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $nginx_workers;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  client_max_body_size 32m;
  client_body_buffer_size 64k;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location /ingest {
      default_type application/json;
      return 202 '{"lsns":[0]}';
    }
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
wait_port "$nginx_port"

run_wrk() {  # name url
  wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -s bench/webhook/post_message.lua "$2" > "$work/$1.txt"
}
run_wrk nginx "http://127.0.0.1:$nginx_port/ingest"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

# --- mailrail --------------------------------------------------------------------------------------
mailrail_port=$(free_port)
cmd=()
for arg in "$@"; do cmd+=("${arg//\{port\}/$mailrail_port}"); done
"${cmd[@]}" > "$work/mailrail.log" 2>&1 &
pids+=($!)
wait_port "$mailrail_port"
run_wrk mailrail "http://127.0.0.1:$mailrail_port/ingest"

# --- report ------------------------------------------------------------------------------------------
python3 - "$work/nginx.txt" "$work/mailrail.txt" <<'PY'
import re, sys
def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return rps, lat, int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else "none"
n, m = parse(sys.argv[1]), parse(sys.argv[2])
print(f"{'':10} {'req/s':>10} {'p50':>9} {'p90':>9} {'p99':>9} {'non-2xx':>8}  socket errors")
for name, (rps, lat, bad, err) in (("nginx", n), ("mailrail", m)):
    print(f"{name:10} {rps:10.0f} {lat.get('50','-'):>9} {lat.get('90','-'):>9} {lat.get('99','-'):>9} {bad:8d}  {err}")
print(f"ratio mailrail/nginx: {m[0] / n[0]:.2f}x")
PY
