#!/usr/bin/env python3
"""IMAP backfill throughput: mailrail's IMAP source against Python imaplib, same Dovecot, same
folder, same UID FETCH batch size, in the same run.

    bench/imap_backfill.py MAILRAIL_BIN [--messages 5000] [--batch 64] [--depth 4] [--runs 3]

Starts a local Dovecot (tests/imap/dovecot.py; needs root), writes --messages generated messages
(1-12 KiB, deterministic) into alice's INBOX, then per run:
  mailrail  `mailrail run` with one [[imap.mailbox]] and a fresh data directory; the rate is
            messages / (imap_caught_up - imap_search) from the daemon's own log (fetching and
            handing to the pipeline; the WAL and the sink run concurrently), and "to sink" is the
            time from the search until the last record is in the JSONL sink (WAL fsync included).
  imaplib   LOGIN, SELECT, UID SEARCH ALL, then UID FETCH <batch> (UID BODY.PEEK[]) one command at
            a time (imaplib cannot pipeline); the rate is messages / time of the FETCH loop.
Prints one line per run and the medians.
"""
import argparse
import imaplib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "imap"))
from dovecot import PASSWORD, Dovecot, wait_until  # noqa: E402


def generate(i, rng):
    words = ["invoice", "payment", "meeting", "report", "shipment", "quarterly", "update", "account"]
    body = "\r\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(10, 150)))
    return (f"From: Sender {i} <s{i}@example.com>\r\nTo: ops@corp.example\r\nSubject: bench {i}\r\n"
            f"Date: Mon, 4 May 2026 10:00:00 +0000\r\nMessage-ID: <bench-{i}@imap.bench>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def seed(dv, n):
    """Creates alice's Maildir through one login, then writes the messages straight into new/."""
    m = imaplib.IMAP4("127.0.0.1", dv.port)
    m.login("alice", PASSWORD)
    m.select("INBOX")
    m.logout()
    new = os.path.join(dv.dir, "mail", "alice", "new")
    rng = random.Random(42)
    total = 0
    for i in range(n):
        raw = generate(i, rng)
        total += len(raw)
        path = os.path.join(new, f"{1700000000 + i}.M{i}P1.bench,S={len(raw)}")
        with open(path, "wb") as f:
            f.write(raw)
        os.chown(path, 65534, 65534)
    return total


def run_mailrail(binary, dv, n, batch, depth, placement, extra, tmp):
    data = os.path.join(tmp, "data")
    shutil.rmtree(data, ignore_errors=True)
    config = os.path.join(tmp, "bench.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{data}"\n[http]\nport = 0\n[stats]\nsocket = "{tmp}/stats.sock"\n[log]\nformat = "json"\n'
                f'[topology]\nplacement = "{placement}"\n[imap]\nfetch_batch = {batch}\npipeline_depth = {depth}\n'
                f'[[imap.mailbox]]\nname = "alice"\nhost = "127.0.0.1"\nport = {dv.port}\ntls = "none"\n'
                f'user = "alice"\npassword = "{PASSWORD}"\nidle = true\n')
    proc = subprocess.Popen([binary, "run", "--config", config], stderr=subprocess.PIPE, text=True)
    search = caught_up = None
    try:
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "imap_search":
                search = event["ts_ms"]
            if event.get("event") == "imap_caught_up" and event.get("fetched") == str(n):
                caught_up = event["ts_ms"]
                break
        if search is None or caught_up is None:
            raise SystemExit("mailrail exited before catching up")
        records = os.path.join(data, "records.jsonl")

        def lines():
            try:
                with open(records, "rb") as f:
                    return sum(1 for _ in f)
            except FileNotFoundError:
                return 0
        wait_until(lambda: lines() >= n, 300, "every record in the sink")
        sink_ms = time.time() * 1000 - search  # upper bound: polled
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return n / ((caught_up - search) / 1000), sink_ms / 1000


def run_imaplib(dv, n, batch):
    m = imaplib.IMAP4("127.0.0.1", dv.port)
    m.login("alice", PASSWORD)
    m.select("INBOX", readonly=True)
    typ, data = m.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    assert len(uids) == n, len(uids)
    start = time.monotonic()
    got = 0
    for i in range(0, len(uids), batch):
        chunk = b",".join(uids[i:i + batch]).decode()
        typ, data = m.uid("FETCH", chunk, "(UID BODY.PEEK[])")
        assert typ == "OK"
        got += sum(1 for part in data if isinstance(part, tuple))
    elapsed = time.monotonic() - start
    m.logout()
    assert got == n, got
    return n / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mailrail")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--placement", default="auto", help="mailrail topology.placement (auto, one-thread, ...)")
    parser.add_argument("--imap-config", default="", help="extra [imap] lines for mailrail, e.g. 'checkpoint_interval_ms = 1000'")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mailrail-imap-bench-")
    dv = Dovecot(tmp, ["alice"])
    dv.start()
    try:
        total = seed(dv, args.messages)
        print(f"seeded {args.messages} messages, {total / args.messages / 1024:.1f} KiB average; "
              f"batch {args.batch}, mailrail pipeline depth {args.depth}, placement {args.placement}")
        # Dovecot indexes new/ on first access: do that outside the measurements.
        run_imaplib(dv, args.messages, args.batch)
        ours, theirs, sinks = [], [], []
        for run in range(args.runs):
            rate, sink_s = run_mailrail(args.mailrail, dv, args.messages, args.batch, args.depth, args.placement,
                                         args.imap_config.replace("\\n", "\n"), tmp)
            peer = run_imaplib(dv, args.messages, args.batch)
            ours.append(rate)
            theirs.append(peer)
            sinks.append(sink_s)
            print(f"run {run + 1}: mailrail {rate:,.0f} msg/s (all in sink after {sink_s:.2f} s), "
                  f"imaplib {peer:,.0f} msg/s, ratio {rate / peer:.2f}")
        m, p = statistics.median(ours), statistics.median(theirs)
        print(f"median: mailrail {m:,.0f} msg/s, imaplib {p:,.0f} msg/s, ratio {m / p:.2f}; "
              f"mailrail all in sink after {statistics.median(sinks):.2f} s")
    finally:
        dv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
