#!/usr/bin/env bash
# Crash test: replays a dump of unique messages with the real mailrail binary into a JSONL sink,
# SIGKILLs it at random moments (ROUNDS times, seed logged; early kills land during WAL recovery),
# restarts until a run completes, then checks the invariant over everything:
#   - every message of the dump reached the sink (lost = 0);
#   - every message that reached the sink more than once carries the same LSN (the idempotency
#     key of its batch) in every copy, i.e. duplicates are re-sends of the same WAL record.
#
#   replay_crash_test.sh MAILRAIL_BIN GEN_DUMP [ROUNDS] [MESSAGES]      CRASH_SEED=n to reproduce
set -euo pipefail
bin=$1
gen=$2
rounds=${3:-20}
messages=${4:-4000}
seed=${CRASH_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
echo "crash test: seed $seed, $rounds rounds, $messages messages"
RANDOM=$seed

work=$(mktemp -d /tmp/mailrail-crash-XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 "$gen" --messages "$messages" --duplicates 0 --seed "$seed" --out "$work/dump.mbox" >/dev/null

run() {  # run [kill-after-ms]
  "$bin" replay "$work/dump.mbox" --sink "jsonl:$work/sink.jsonl" --data-dir "$work/data" \
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

python3 - "$work/dump.mbox" "$work/sink.jsonl" "$killed" <<'PY'
import json, re, sys
dump, sink, killed = sys.argv[1], sys.argv[2], int(sys.argv[3])
expected = set(re.findall(rb"^Message-ID: <([^>]+)>", open(dump, "rb").read(), re.M))
seen = {}
lines = 0
for line in open(sink, encoding="utf-8"):
    lines += 1
    r = json.loads(line)
    seen.setdefault(r["message_id"].encode(), set()).add(r["lsn"])
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
