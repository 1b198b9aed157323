#!/usr/bin/env python3
"""Graph delta backfill throughput: mailrail's Graph source against the Graph double
(tests/graph/graph_double.py, started as a separate process, throttling off), with a Python
reference client paging the same delta query in the same run.

    bench/graph_backfill.py MAILRAIL_BIN [--messages 20000] [--page-size 1000] [--raw-mime] [--runs 3]
                            [--corpus ../shared/corpus]

One unmeasured reference pass first (the double serialises each message once and caches it), then
per run:
  mailrail   `mailrail run` with one [[graph.mailbox]] and a fresh data directory; the time is from
             the daemon's graph_token event (the first Graph request leaves right after it) to its
             graph_caught_up event, which is logged once the last page's messages are durable in
             the WAL (fetch, JSON split, WAL fdatasync). "to sink" adds parse/dedup/filter and the
             JSONL sink (until every record is in the file). MB/s counts the message bytes
             (graph_bytes on the stats socket).
  reference  Python http.client on one keep-alive connection: GET the delta pages one after the
             other and json.loads each (raw MIME: plus one GET $value per message); no WAL, no
             parsing of the messages. It shows what the double can serve to one simple client.
Prints one line per run and the medians.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "graph"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))
from graph_double import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from mailrail_daemon import MailrailDaemon, wait_until  # noqa: E402

PYTHON = "/usr/bin/python3"


def start_double(n, corpus):
    proc = subprocess.Popen([PYTHON, os.path.join(HERE, "..", "tests", "graph", "graph_double.py"), "--messages", str(n),
                             "--corpus", corpus], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("port="):
        raise SystemExit(f"graph double did not start: {line!r}")
    return proc, int(line.strip().split("=")[1])


def run_mailrail(binary, port, n, page_size, raw_mime, tmp):
    data = os.path.join(tmp, "data")
    shutil.rmtree(data, ignore_errors=True)
    config = os.path.join(tmp, "bench.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{data}"\n[http]\nport = 0\n[stats]\nsocket = "{tmp}/stats.sock"\n[log]\nformat = "json"\n'
                f'[graph]\nbase_url = "http://127.0.0.1:{port}/v1.0"\n'
                f'token_url = "http://127.0.0.1:{port}/test-tenant/oauth2/v2.0/token"\n'
                f'client_id = "{CLIENT_ID}"\nclient_secret = "{CLIENT_SECRET}"\npage_size = {page_size}\n'
                f'raw_mime = {"true" if raw_mime else "false"}\nrate_requests = 10000000\n'
                f'[[graph.mailbox]]\nuser_id = "user0"\n')
    d = MailrailDaemon(binary, config, f"{tmp}/stats.sock", os.path.join(data, "records.jsonl")).start()
    try:
        t0 = d.wait_for("graph_token", timeout=30)["ts_ms"]
        done = d.wait_for("graph_caught_up", timeout=600)
        if done["fetched"] != str(n):
            raise SystemExit(f"mailrail fetched {done['fetched']} of {n}")
        fetch_s = (done["ts_ms"] - t0) / 1000
        wait_until(lambda: d.stats().get("messages_final") and sum(x["value"] for x in d.stats()["messages_final"]) >= n,
                   600, "every record in the sink")
        sink_s = (int(time.time() * 1000) - t0) / 1000  # an upper bound: polled every 50 ms
        nbytes = d.stats()["graph_bytes"]
    finally:
        d.stop()
    return fetch_s, sink_s, nbytes


def run_reference(port, page_size, raw_mime):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                   "client_secret": CLIENT_SECRET, "scope": "https://graph.microsoft.com/.default"})
    conn.request("POST", "/test-tenant/oauth2/v2.0/token", body, {"Content-Type": "application/x-www-form-urlencoded"})
    token = json.loads(conn.getresponse().read())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Prefer": f"odata.maxpagesize={page_size}"}
    select = "id,hasAttachments,receivedDateTime" if raw_mime else (
        "id,internetMessageId,from,sender,toRecipients,ccRecipients,replyTo,subject,sentDateTime,receivedDateTime,"
        "hasAttachments,body")
    path = f"/v1.0/users/user0/mailFolders/inbox/messages/delta?$select={select}"
    start = time.monotonic()
    count = nbytes = 0
    while path:
        conn.request("GET", path, headers=headers)
        page = json.loads(conn.getresponse().read())
        for item in page["value"]:
            count += 1
            if raw_mime:
                conn.request("GET", f"/v1.0/users/user0/messages/{urllib.parse.quote(item['id'])}/$value", headers=headers)
                nbytes += len(conn.getresponse().read())
            else:
                nbytes += len(json.dumps(item, separators=(",", ":")))
        link = page.get("@odata.nextLink")
        path = urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl() if link else None
    elapsed = time.monotonic() - start
    conn.close()
    return count, elapsed, nbytes


def main():
    parser = argparse.ArgumentParser(description="Graph delta backfill: mailrail vs a Python reference client")
    parser.add_argument("binary")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--raw-mime", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--corpus", default=os.path.join(HERE, "..", "..", "shared", "corpus"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mailrail-graph-bench-")
    double, port = start_double(args.messages, args.corpus)
    rows = []
    try:
        run_reference(port, args.page_size, args.raw_mime)  # warm-up: the double serialises each message once
        for run in range(args.runs):
            fetch_s, sink_s, nbytes = run_mailrail(args.binary, port, args.messages, args.page_size, args.raw_mime, tmp)
            count, ref_s, ref_bytes = run_reference(port, args.page_size, args.raw_mime)
            assert count == args.messages, count
            rows.append((args.messages / fetch_s, nbytes / fetch_s / 1e6, args.messages / sink_s, count / ref_s,
                         ref_bytes / ref_s / 1e6))
            print(f"run {run + 1}: mailrail {rows[-1][0]:,.0f} msgs/s {rows[-1][1]:.1f} MB/s (durable), "
                  f"{rows[-1][2]:,.0f} msgs/s to sink; reference {rows[-1][3]:,.0f} msgs/s {rows[-1][4]:.1f} MB/s",
                  flush=True)
    finally:
        double.send_signal(signal.SIGTERM)
        double.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    med = [statistics.median(r[i] for r in rows) for i in range(5)]
    print(json.dumps({"messages": args.messages, "page_size": args.page_size, "raw_mime": args.raw_mime,
                      "mailrail_msgs_per_s": round(med[0]), "mailrail_mb_per_s": round(med[1], 1),
                      "mailrail_to_sink_msgs_per_s": round(med[2]), "reference_msgs_per_s": round(med[3]),
                      "reference_mb_per_s": round(med[4], 1), "ratio": round(med[0] / med[3], 2)}))


if __name__ == "__main__":
    main()
