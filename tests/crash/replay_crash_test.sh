#!/usr/bin/env bash
# Crash test: replays a dump of unique messages with the real mailrail binary into a sink (a JSONL
# file, or the local test downstream tests/net/downstream.py over HTTP), SIGKILLs it at random
# moments (ROUNDS times, seed logged; early kills land during WAL recovery), restarts until a run
# completes, then checks the invariant over everything:
#   - every message of the dump reached the sink (lost = 0);
#   - every message that reached the sink more than once carries the same LSN in every copy, i.e.
#     duplicates are re-sends of the same WAL record;
#   - http: every record the downstream acknowledged more than once came each time in a batch with
#     the same Idempotency-Key (batch cuts are remembered across restarts), so an idempotent
#     downstream stores it once.
#
#   replay_crash_test.sh MAILRAIL_BIN GEN_DUMP [ROUNDS] [MESSAGES] [jsonl|http]   CRASH_SEED=n to reproduce
set -euo pipefail
bin=$1
gen=$2
rounds=${3:-20}
messages=${4:-4000}
sink_kind=${5:-jsonl}
seed=${CRASH_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
echo "crash test: seed $seed, $rounds rounds, $messages messages, $sink_kind sink"
RANDOM=$seed

work=$(mktemp -d /tmp/mailrail-crash-XXXXXX)
downstream_pid=
cleanup() {
  if [ -n "$downstream_pid" ]; then
    kill "$downstream_pid" 2>/dev/null || true
    wait "$downstream_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
sink="jsonl:$work/sink.jsonl"
if [ "$sink_kind" = http ]; then
  coproc DOWNSTREAM { exec python3 -u "$(dirname "$0")/../net/downstream.py"; }
  downstream_pid=$DOWNSTREAM_PID
  read -r _ port <&"${DOWNSTREAM[0]}"
  sink="http://127.0.0.1:$port"
fi
python3 "$gen" --messages "$messages" --duplicates 0 --seed "$seed" --out "$work/dump.mbox" >/dev/null

run() {  # run [kill-after-ms]
  "$bin" replay "$work/dump.mbox" --sink "$sink" --batch-records 50 --data-dir "$work/data" \
    >>"$work/runs.log" 2>&1 &
  local pid=$!
  if [ -n "${1:-}" ]; then
    # Not synchronisation: the point is to kill at an arbitrary moment of the run.
    sleep "$(printf '0.%03d' "$1")"
    kill -9 "$pid" 2>/dev/null || true
  fi
  local rc=0
  wait "$pid" || rc=$?
  echo "$rc"
}

killed=0
for round in $(seq 1 "$rounds"); do
  delay=$((RANDOM % 700))
  rc=$(run "$delay")
  [ "$rc" = 137 ] && killed=$((killed + 1))
  echo "round $round: kill after ${delay} ms -> exit $rc"
done
# Finish: restart until a run exits by itself (bounded).
for attempt in 1 2 3; do
  rc=$(run)
  echo "final run $attempt: exit $rc"
  [ "$rc" = 0 ] && break
done
[ "$rc" = 0 ] || { echo "FAIL: the final run did not complete"; tail -20 "$work/runs.log"; exit 1; }

if [ "$sink_kind" = http ]; then
  python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$port/_control/received', timeout=30).read().decode())" > "$work/received.json"
fi
python3 - "$work/dump.mbox" "$sink_kind" "$work/sink.jsonl" "$work/received.json" "$killed" <<'PY'
import json, re, sys
dump, kind, sink, received, killed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
expected = set(re.findall(rb"^Message-ID: <([^>]+)>", open(dump, "rb").read(), re.M))
seen = {}
lines = 0
if kind == "jsonl":
    for line in open(sink, encoding="utf-8"):
        lines += 1
        r = json.loads(line)
        seen.setdefault(r["message_id"].encode(), set()).add(r["lsn"])
else:
    keys_by_lsn = {}
    for entry in json.load(open(received)):
        if not isinstance(entry["answer"], int) or not 200 <= entry["answer"] < 300:
            continue
        for lsn, mid in zip(entry["lsns"], entry["message_ids"]):
            lines += 1
            seen.setdefault(mid.encode(), set()).add(lsn)
            keys_by_lsn.setdefault(lsn, set()).add(entry["key"])
    rekeyed = {lsn: keys for lsn, keys in keys_by_lsn.items() if len(keys) > 1}
    print(f"crash test: records acknowledged more than once under different Idempotency-Keys: {len(rekeyed)}")
    if rekeyed:
        print("FAIL: a re-sent record came in a batch with a new key", list(rekeyed.items())[:5]); sys.exit(1)
missing = expected - set(seen)
conflicting = {k: v for k, v in seen.items() if len(v) > 1}
dups = lines - len(seen)
print(f"crash test: {killed} runs killed, {len(expected)} messages, {lines} sink lines, "
      f"lost {len(missing)}, re-sent copies {dups} (all with their original LSN: {not conflicting})")
if missing:
    print("FAIL: lost", sorted(missing)[:10]); sys.exit(1)
if conflicting:
    print("FAIL: a message reached the sink under two LSNs", list(conflicting.items())[:5]); sys.exit(1)
if set(seen) - expected:
    print("FAIL: unknown messages in the sink"); sys.exit(1)
PY
