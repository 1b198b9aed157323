#!/usr/bin/env bash
# Webhook ingest benchmark: wrk posting ~4 KB raw messages (unique Message-ID each) with 64
# connections to nginx answering a static 202 and to mailrail, alternating (nginx, mailrail,
# nginx, ...) for ROUNDS rounds so both see the same machine load; prints the median round's
# requests/s and latency percentiles side by side, every round, and the ratio of the medians.
#
# usage: bench/webhook/run.sh [-d SECONDS] [-r ROUNDS] [-t WRK_THREADS] [-c CONNECTIONS] \
#          [-w NGINX_WORKERS] -- MAILRAIL_COMMAND...
#   MAILRAIL_COMMAND is started in the background and must serve POST /ingest on the port given by
#   the placeholder {port} in its arguments, e.g.
#     bench/webhook/run.sh -- build/bench/webhook_server {port}          (net layer alone, no WAL)
#     bench/webhook/run.sh -- build/tools/mailrail run --config X --webhook-port {port}  (durable)
#   Both servers are stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=5 rounds=3 threads=2 connections=64 nginx_workers=1
while getopts "d:r:t:c:w:" opt; do
  case $opt in
    d) duration=$OPTARG ;; r) rounds=$OPTARG ;; t) threads=$OPTARG ;; c) connections=$OPTARG ;; w) nginx_workers=$OPTARG ;;
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

run_wrk() {  # output-file url
  wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -s bench/webhook/post_message.lua "$2" > "$1"
}

# --- mailrail --------------------------------------------------------------------------------------
mailrail_port=$(free_port)
cmd=()
for arg in "$@"; do cmd+=("${arg//\{port\}/$mailrail_port}"); done
"${cmd[@]}" > "$work/mailrail.log" 2>&1 &
pids+=($!)
wait_port "$mailrail_port"

for round in $(seq 1 "$rounds"); do
  run_wrk "$work/nginx.$round.txt" "http://127.0.0.1:$nginx_port/ingest"
  run_wrk "$work/mailrail.$round.txt" "http://127.0.0.1:$mailrail_port/ingest"
done

# --- report ------------------------------------------------------------------------------------------
echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: -t$threads -c$connections -d${duration}s, $rounds alternating rounds; nginx worker_processes $nginx_workers"
python3 - "$work" "$rounds" <<'PY'
import re, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return rps, lat, int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else "none"
runs = {name: [parse(f"{work}/{name}.{r}.txt") for r in range(1, rounds + 1)] for name in ("nginx", "mailrail")}
print("rounds (req/s):")
for name, rs in runs.items():
    print(f"  {name:9} " + "  ".join(f"{r[0]:8.0f}" for r in rs))
print(f"{'median':10} {'req/s':>10} {'p50':>9} {'p90':>9} {'p99':>9} {'non-2xx':>8}  socket errors")
medians = {}
for name, rs in runs.items():
    rps, lat, bad, err = sorted(rs, key=lambda r: r[0])[len(rs) // 2]
    medians[name] = rps
    print(f"{name:10} {rps:10.0f} {lat.get('50','-'):>9} {lat.get('90','-'):>9} {lat.get('99','-'):>9} {bad:8d}  {err}")
print(f"ratio mailrail/nginx (medians): {medians['mailrail'] / medians['nginx']:.2f}x")
PY
