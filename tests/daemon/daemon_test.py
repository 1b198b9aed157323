#!/usr/bin/env python3
"""End-to-end tests of `mailrail run`: the real binary on 127.0.0.1 (ephemeral port), driven by
real clients. Every wait is on an event (a log line, a socket answer, process exit), bounded.

    daemon_test.py MAILRAIL_BIN
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

BIN = sys.argv.pop(1)
DOWNSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "net", "downstream.py")
STARTED = []  # every daemon a test started; tearDown kills those a failed test left running


def message(i, subject=None):
    subject = subject or f"test {i}"
    return (f"From: Sender {i} <s{i}@example.com>\r\nTo: ops@corp.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 4 May 2026 10:00:00 +0000\r\nMessage-ID: <daemon-{i}@example.com>\r\n\r\nbody {i}\r\n").encode()


class Daemon:
    def __init__(self, tmp, extra="", http=""):
        self.tmp = tmp
        self.config = os.path.join(tmp, "mailrail.toml")
        with open(self.config, "w") as f:
            f.write(f'data_dir = "{tmp}/data"\n[http]\nport = 0\n{http}[stats]\nsocket = "{tmp}/stats.sock"\n'
                    f'[log]\nformat = "json"\n{extra}')
        self.proc = subprocess.Popen([BIN, "run", "--config", self.config], stderr=subprocess.PIPE, text=True)
        STARTED.append(self.proc)
        self.log = []
        started = self.wait_for("started")
        self.port = int(re.search(r":(\d+)$", started["http"]).group(1)) if "http" in started else None

    def wait_for(self, event, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"daemon exited before '{event}': {self.log}")
            self.log.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                return record
        raise AssertionError(f"no '{event}' within {timeout} s: {self.log}")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method, path, body=None, headers=None):
        req = urllib.request.Request(self.url(path), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def outcomes(self):
        stats = json.loads(read_stats(os.path.join(self.tmp, "stats.sock")))
        return {x["outcome"]: x["value"] for x in stats["messages_final"]}

    def durable_lsn(self):
        stats = json.loads(read_stats(os.path.join(self.tmp, "stats.sock")))
        return stats["forward_durable_lsn"]

    def wait_outcomes(self, expected, timeout=10):
        """Polls the stats socket (an event source) until the final outcomes include `expected`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.outcomes()
            if all(got.get(k) == v for k, v in expected.items()):
                return got
        return self.outcomes()

    def stats(self):
        return json.loads(read_stats(os.path.join(self.tmp, "stats.sock")))

    def ingest(self, raw):
        status, body = self.request("POST", "/ingest", raw, {"Content-Type": "message/rfc822"})
        assert status == 202, (status, body)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode


def graph_batch(ids):
    """One application/json ingest body: an array of Graph messages, one per id."""
    return json.dumps([{"id": f"g{i}", "internetMessageId": f"<graph-{i}@example.com>", "subject": f"graph {i}",
                        "from": {"emailAddress": {"name": "n", "address": f"s{i}@example.com"}},
                        "body": {"contentType": "text", "content": f"body {i}"}} for i in ids]).encode()


def samples(stats, name, **labels):
    """Values of the samples of `name` whose labels include `labels` (JSON stats)."""
    entry = stats.get(name)
    if entry is None:
        return []
    if not isinstance(entry, list):
        return [entry] if not labels else []
    return [x["value"] for x in entry if all(x.get(k) == v for k, v in labels.items())]


def write_rule_file(path, word, action="drop"):
    """One subject-keyword rule `t.WORD` with `action`."""
    with open(path, "w") as f:
        f.write(f'[[rule]]\nid = "t.{word}"\nkind = "subject"\nkeywords = ["{word}"]\naction = "{action}"\n')


def read_stats(path, fmt="json"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall((fmt + "\n").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode()


class DaemonTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailrail-daemon-")

    def tearDown(self):
        while STARTED:
            proc = STARTED.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_ingest_then_sigterm_drains_everything_accepted(self):
        d = Daemon(self.tmp)
        lsns = []
        for i in range(200):
            status, body = d.request("POST", "/ingest", message(i), {"Content-Type": "message/rfc822"})
            self.assertEqual(status, 202, body)
            lsns += json.loads(body)["lsns"]
        self.assertEqual(sorted(lsns), list(range(1, 201)))
        status, body = d.request("GET", "/session/status")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["progress"]["total"], 200)
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.tmp, "data", "records.jsonl")) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(len(records), 200)  # sink count = accepted count
        self.assertEqual({r["message_id"] for r in records}, {f"daemon-{i}@example.com" for i in range(200)})

    def test_restart_after_sigkill_forwards_what_was_accepted(self):
        d = Daemon(self.tmp)
        for i in range(50):
            status, _ = d.request("POST", "/ingest", message(i), {"Content-Type": "message/rfc822"})
            self.assertEqual(status, 202)
        d.proc.kill()
        d.proc.wait(timeout=10)
        d.proc.stderr.close()
        d = Daemon(self.tmp)
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.tmp, "data", "records.jsonl")) as f:
            ids = {json.loads(line)["message_id"] for line in f}
        self.assertEqual(ids, {f"daemon-{i}@example.com" for i in range(50)})

    def test_http_sink_delivers_everything_through_faults_and_shows_the_open_circuit(self):
        downstream = subprocess.Popen([sys.executable, DOWNSTREAM], stdout=subprocess.PIPE, text=True)
        try:
            port = int(downstream.stdout.readline().split()[1])
            plan = json.dumps([{"status": 503}, {"status": 500}, {"status": 500}]).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/_control/plan", data=plan,
                                                          method="POST"), timeout=5).read()
            d = Daemon(self.tmp, f'[sink]\nkind = "http"\nurl = "http://127.0.0.1:{port}"\nlinger_ms = 2\n'
                                 f'max_in_flight = 1\nbackoff_base_ms = 1\nbackoff_max_ms = 5\n'
                                 f'breaker_threshold = 2\nbreaker_open_ms = 300\n')
            d.ingest(message(0))
            # Two failures open the circuit: /health must say so (polled; it closes after a probe).
            saw_open = False
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not saw_open:
                status, body = d.request("GET", "/health")
                saw_open = status == 503 and "circuit open" in body
            self.assertTrue(saw_open, "the open circuit never showed in /health")
            for i in range(1, 100):
                d.ingest(message(i))
            d.ingest(message(0))  # a duplicate: counted, never sent
            got = d.wait_outcomes({"forwarded": 100, "duplicate": 1})
            self.assertEqual(got["forwarded"], 100)
            self.assertEqual(got["duplicate"], 1)
            self.assertEqual(d.request("GET", "/health")[0], 200)
            stats = json.loads(read_stats(os.path.join(self.tmp, "stats.sock")))
            self.assertGreaterEqual(stats["forward_retries"], 3)
            self.assertGreaterEqual(stats["forward_circuit_opens"], 1)
            # The checkpoint passes the skipped duplicate too (written within checkpoint_interval_ms).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and d.durable_lsn() != 101:
                pass
            self.assertEqual(d.durable_lsn(), 101)
            self.assertEqual(d.stop(), 0)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_control/acked", timeout=5) as r:
                acked = json.loads(r.read())
            self.assertEqual(acked["lsns"], list(range(1, 101)))  # LSN 101 is the duplicate
        finally:
            downstream.kill()
            downstream.wait(timeout=10)

    def test_stats_socket_json_and_prometheus_match_the_work_done(self):
        d = Daemon(self.tmp)
        for i in range(10):
            d.request("POST", "/ingest", message(i), {"Content-Type": "message/rfc822"})
        # The sink counts a message once it took it: wait for that event through the socket.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = json.loads(read_stats(os.path.join(self.tmp, "stats.sock")))
            final = {x["outcome"]: x["value"] for x in stats["messages_final"]}
            if final["forwarded"] == 10:
                break
        self.assertEqual(final["forwarded"], 10)
        # The WAL and parse stages, and the latency with its three parts, match the same 10 messages.
        self.assertEqual(samples(stats, "stage_messages_in", stage="wal"), [10])
        self.assertEqual(samples(stats, "stage_messages_out", stage="wal"), [10])
        self.assertEqual(samples(stats, "stage_messages_in", stage="parse"), [10])
        self.assertEqual(stats["wal_records"], 10)
        self.assertEqual(stats["wal_durable_lsn"], 10)
        self.assertGreater(stats["wal_bytes"], sum(len(message(i)) for i in range(10)))
        self.assertGreaterEqual(stats["wal_commits"], 1)
        self.assertEqual(stats["wal_commit_latency_ns_count"], stats["wal_commits"])
        self.assertEqual(stats["wal_group_records_count"], stats["wal_commits"])
        self.assertGreater(stats["wal_commit_latency_ns_max"], 0)
        self.assertGreater(stats["wal_disk_bytes"], 0)
        self.assertEqual(stats["end_to_end_latency_ns_count"], 10)
        self.assertEqual((stats["session_total"], stats["session_processed"], stats["session_percent"]), (10, 10, 100))
        for part in ("accepted_to_logged", "logged_to_durable", "durable_to_end"):
            self.assertEqual(samples(stats, "latency_part_ns_count", part=part), [10], part)
        prom = read_stats(os.path.join(self.tmp, "stats.sock"), "prometheus")
        self.assertIn('mailrail_messages_final{outcome="forwarded"} 10', prom)
        self.assertIn("mailrail_wal_records 10", prom)
        self.assertRegex(prom, r'mailrail_latency_part_ns_p99\{part="logged_to_durable"\} \d')
        self.assertIn("# TYPE mailrail_ring_fill gauge", prom)
        out = subprocess.run([BIN, "stats", "--socket", os.path.join(self.tmp, "stats.sock")],
                             capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"messages_final\{outcome=forwarded\}\s+10")
        status, metrics = d.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn('mailrail_messages_final{outcome="forwarded"} 10', metrics)
        self.assertEqual(d.stop(), 0)

    def test_sighup_reloads_rules_and_keeps_the_old_ones_when_the_file_is_invalid(self):
        rules = os.path.join(self.tmp, "rules.toml")
        write_rules = lambda word, action="drop": write_rule_file(rules, word, action)

        write_rules("alpha")
        d = Daemon(self.tmp, '[filter]\nrules = "rules.toml"\n')  # relative to the config file
        d.ingest(message(1, "alpha one"))
        self.assertEqual(d.wait_outcomes({"dropped_by_rule": 1})["dropped_by_rule"], 1)
        write_rules("beta", action="dropp")
        d.proc.send_signal(signal.SIGHUP)
        reload = d.wait_for("reload")
        self.assertEqual(reload["result"], "rejected")
        self.assertIn("rules.toml:5: rule 't.beta': unknown action 'dropp'", reload["error"])
        d.ingest(message(2, "alpha two"))  # the old rules are still in force
        self.assertEqual(d.wait_outcomes({"dropped_by_rule": 2})["dropped_by_rule"], 2)
        write_rules("beta")
        d.proc.send_signal(signal.SIGHUP)
        self.assertEqual(d.wait_for("reload")["result"], "ok")
        d.ingest(message(3, "alpha three"))
        d.ingest(message(4, "beta four"))
        got = d.wait_outcomes({"dropped_by_rule": 3, "forwarded": 1})
        self.assertEqual((got["dropped_by_rule"], got["forwarded"]), (3, 1))
        status, _ = d.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(d.stop(), 0)

    def test_duplicates_are_caught_across_a_restart_and_unparseable_input_is_quarantined(self):
        d = Daemon(self.tmp)
        for i in range(5):
            d.ingest(message(i))
        d.ingest(message(0))
        d.ingest(b"\r\n")  # no headers at all: unparseable
        got = d.wait_outcomes({"forwarded": 5, "duplicate": 1, "quarantined_unparseable": 1})
        self.assertEqual((got["forwarded"], got["duplicate"], got["quarantined_unparseable"]), (5, 1, 1))
        deadline = time.monotonic() + 10  # the sink's fdatasync + checkpoint (every 100 ms)
        while time.monotonic() < deadline and d.durable_lsn() < 7:
            pass
        self.assertEqual(d.durable_lsn(), 7)
        d.proc.kill()  # no clean shutdown: dedup is rebuilt from its snapshot and the WAL
        d.proc.wait(timeout=10)
        d.proc.stderr.close()
        d = Daemon(self.tmp)
        d.ingest(message(3))
        d.ingest(message(7))
        got = d.wait_outcomes({"forwarded": 1, "duplicate": 1})
        self.assertEqual((got["forwarded"], got["duplicate"]), (1, 1))
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.tmp, "data", "records.jsonl")) as f:
            ids = [json.loads(line)["message_id"] for line in f]
        self.assertEqual(sorted(ids), sorted([f"daemon-{i}@example.com" for i in range(5)] + ["daemon-7@example.com"]))
        data = os.path.join(self.tmp, "data")
        listed = subprocess.run([BIN, "quarantine", "--data-dir", data, "list", "--json"],
                                capture_output=True, text=True, timeout=10)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        entries = [json.loads(line) for line in listed.stdout.splitlines()]
        self.assertEqual(len(entries), 1)
        self.assertEqual(entries[0]["reason"], "unparseable: no_headers")
        self.assertFalse(entries[0]["redriven"])
        shown = subprocess.run([BIN, "quarantine", "--data-dir", data, "show", str(entries[0]["id"])],
                               capture_output=True, timeout=10)
        self.assertEqual(shown.stdout, b"\r\n")
        # Re-drive into a running daemon: not a duplicate, filtered again, and marked in the store.
        d = Daemon(self.tmp)
        out = subprocess.run([BIN, "quarantine", "--data-dir", data, "redrive", "--url",
                              f"http://127.0.0.1:{d.port}", str(entries[0]["id"])],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        got = d.wait_outcomes({"quarantined_unparseable": 1})
        self.assertEqual(got["quarantined_unparseable"], 1)
        listed = subprocess.run([BIN, "quarantine", "--data-dir", data, "list", "--json"],
                                capture_output=True, text=True, timeout=10)
        self.assertTrue(json.loads(listed.stdout.splitlines()[0])["redriven"])
        self.assertEqual(d.stop(), 0)

    def test_attachment_store_on_the_daemon(self):
        pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
        sha = hashlib.sha256(pdf).hexdigest()
        d = Daemon(self.tmp, '[attachments]\nstore = "disk"\n')
        d.ingest(("From: a@vendor.example\r\nTo: ap@corp.example\r\nSubject: invoice\r\n"
                  "Message-ID: <att-1@vendor.example>\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                  "--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(pdf).decode() + "--b--\r\n").encode())
        graph = json.dumps({"id": "g-att", "internetMessageId": "<att-2@vendor.example>", "subject": "graph",
                            "attachments": [{"name": "b.pdf", "contentType": "application/pdf",
                                             "contentBytes": base64.b64encode(pdf).decode()}]}).encode()
        status, body = d.request("POST", "/ingest", graph, {"Content-Type": "application/json"})
        self.assertEqual(status, 202, body)
        self.assertEqual(d.wait_outcomes({"forwarded": 2}).get("forwarded"), 2)
        path = os.path.join(self.tmp, "data", "attachments", sha[:2], sha[2:4], sha)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), pdf)
        stats = d.stats()
        self.assertEqual(samples(stats, "attachments_stored"), [2])
        self.assertEqual(sum(samples(stats, "attachment_objects_stored", store="disk")), 1)  # the same PDF twice
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.tmp, "data", "records.jsonl")) as f:
            refs = [a.get("stored") for line in f for a in json.loads(line)["attachments"]]
        self.assertEqual(refs, ["sha256:" + sha] * 2)

    def test_stats_socket_reports_dedup_and_filter_counters(self):
        rules = os.path.join(self.tmp, "rules.toml")
        with open(rules, "w") as f:
            f.write('[[rule]]\nid = "t.alpha"\nkind = "subject"\nkeywords = ["alpha"]\naction = "drop"\n')
        # One shard of 4 keys: the window is exact and FIFO, so expiry by count is predictable.
        extra = '[filter]\nrules = "rules.toml"\n[dedup]\nshards = 1\ncapacity = 4\nsnapshot_interval_s = 0\n'
        d = Daemon(self.tmp, extra)
        for i in range(5):
            d.ingest(message(i))
        d.ingest(message(4))  # still in the window: a duplicate
        d.ingest(message(9, "alpha nine"))
        got = d.wait_outcomes({"forwarded": 5, "duplicate": 1, "dropped_by_rule": 1})
        self.assertEqual((got["forwarded"], got["duplicate"], got["dropped_by_rule"]), (5, 1, 1))
        st = d.stats()
        self.assertEqual(samples(st, "dedup_keys_held", worker="0"), [4])
        self.assertEqual(samples(st, "dedup_capacity", worker="0"), [4])
        self.assertEqual(samples(st, "dedup_duplicates", worker="0"), [1])
        self.assertEqual(samples(st, "dedup_expired", worker="0", reason="count"), [2])  # 6 keys, room for 4
        self.assertEqual(samples(st, "dedup_expired", worker="0", reason="age"), [0])
        self.assertEqual(samples(st, "dedup_keys_computed", kind="message_id"), [7])
        [bytes_per_key] = samples(st, "dedup_bytes_per_key", worker="0")
        self.assertGreater(bytes_per_key, 12)  # tiny set: fixed overhead shows; 19.1 B/key at scale
        self.assertEqual(samples(st, "dedup_snapshot_lsn", worker="0"), [0])
        self.assertEqual(samples(st, "dedup_snapshot_age_seconds"), [])  # none written yet
        self.assertEqual(samples(st, "stage_messages_in", stage="dedup"), [7])
        self.assertEqual(samples(st, "stage_messages_in", stage="filter"), [6])
        self.assertEqual(samples(st, "filter_decisions", action="accept"), [5])
        self.assertEqual(samples(st, "filter_decisions", action="drop"), [1])
        self.assertEqual(samples(st, "filter_decisions", action="quarantine"), [0])
        self.assertEqual(samples(st, "filter_rule_fired", rule="t.alpha"), [1])
        self.assertEqual(samples(st, "filter_rule_decisions", rule="t.alpha", action="drop"), [1])
        self.assertEqual(samples(st, "filter_rule_set_version"), [1])
        self.assertEqual(samples(st, "filter_rules"), [1])
        self.assertEqual(samples(st, "filter_reloads", result="ok"), [0])
        prom = read_stats(os.path.join(self.tmp, "stats.sock"), "prometheus")
        self.assertIn('mailrail_filter_rule_decisions{rule="t.alpha",action="drop"} 1', prom)
        self.assertIn('mailrail_dedup_keys_held{worker="0"} 4', prom)
        self.assertEqual(d.stop(), 0)
        # The clean shutdown wrote the snapshot; the next start loads it and says how old it is.
        d = Daemon(self.tmp, extra)
        st = d.stats()
        self.assertEqual(samples(st, "dedup_snapshot_lsn", worker="0"), [7])
        [age] = samples(st, "dedup_snapshot_age_seconds", worker="0")
        self.assertGreaterEqual(age, 0)
        self.assertLess(age, 600)
        self.assertEqual(samples(st, "dedup_keys_held", worker="0"), [4])
        self.assertEqual(d.stop(), 0)

    def test_control_api_reloads_rules_and_answers_with_the_outcome(self):
        rules = os.path.join(self.tmp, "rules.toml")
        write_rules = lambda word, action="drop": write_rule_file(rules, word, action)

        write_rules("alpha")
        d = Daemon(self.tmp, '[filter]\nrules = "rules.toml"\n', http='bearer_token = "tok"\n')
        auth = {"Authorization": "Bearer tok"}
        status, _ = d.request("POST", "/rules/reload")
        self.assertEqual(status, 401)
        write_rules("beta", action="dropp")
        status, body = d.request("POST", "/rules/reload", b"", auth)
        self.assertEqual(status, 422, body)
        answer = json.loads(body)
        self.assertEqual(answer["status"], "rejected")
        self.assertIn("rules.toml:5: rule 't.beta': unknown action 'dropp'", answer["error"])
        self.assertEqual(answer["version"], 1)  # the old rules stay in force
        self.assertEqual(d.wait_for("reload")["source"], "api")
        st = d.stats()
        self.assertEqual(samples(st, "filter_reloads", result="rejected"), [1])
        [error] = [x["error"] for x in st["filter_last_reload_error"]]
        self.assertIn("unknown action 'dropp'", error)
        d.ingest(message(1, "alpha one"))
        self.assertEqual(d.wait_outcomes({"dropped_by_rule": 1})["dropped_by_rule"], 1)
        write_rules("beta")
        status, body = d.request("POST", "/rules/reload", b"", auth)
        self.assertEqual(status, 200, body)
        answer = json.loads(body)
        self.assertEqual((answer["status"], answer["version"], answer["rules"]), ("reloaded", 2, 1))
        # In force for everything ingested after the answer: no waiting for the swap.
        d.ingest(message(2, "beta two"))
        d.ingest(message(3, "alpha three"))
        got = d.wait_outcomes({"dropped_by_rule": 2, "forwarded": 1})
        self.assertEqual((got["dropped_by_rule"], got["forwarded"]), (2, 1))
        st = d.stats()
        self.assertEqual(samples(st, "filter_rule_set_version"), [2])
        self.assertEqual(samples(st, "filter_reloads", result="ok"), [1])
        self.assertNotIn("filter_last_reload_error", st)
        self.assertEqual(samples(st, "filter_rule_decisions", rule="t.beta", action="drop"), [1])
        self.assertEqual(samples(st, "filter_rule_decisions", rule="t.alpha", action="drop"), [1])
        self.assertEqual(d.stop(), 0)

    def test_dedup_threads_catch_duplicates_across_workers_keep_order_and_survive_restarts(self):
        n = 300
        with open(os.path.join(self.tmp, "rules.toml"), "w") as f:  # accept everything: only dedup decides
            f.write('[[rule]]\nid = "t.never"\nkind = "subject"\nkeywords = ["no such subject"]\naction = "drop"\n')
        config = '[filter]\nrules = "rules.toml"\n[dedup]\nshards = 8\nthreads = 3\n'
        d = Daemon(self.tmp, config)
        status, body = d.request("POST", "/ingest", graph_batch(range(n)), {"Content-Type": "application/json"})
        self.assertEqual(status, 202, body)
        status, body = d.request("POST", "/ingest", graph_batch(reversed(range(n))), {"Content-Type": "application/json"})
        self.assertEqual(status, 202, body)
        got = d.wait_outcomes({"forwarded": n, "duplicate": n})
        self.assertEqual((got["forwarded"], got["duplicate"]), (n, n))
        st = d.stats()
        routed = [samples(st, "dedup_routed", worker=str(w)) for w in range(3)]
        self.assertTrue(all(r and r[0] > 0 for r in routed), routed)  # every worker had a share
        self.assertEqual(sum(r[0] for r in routed), 2 * n)
        self.assertEqual(sum(samples(st, "dedup_duplicates")), n)
        self.assertEqual(sum(samples(st, "dedup_keys_held")), n)
        self.assertEqual(samples(st, "dedup_keys_computed", kind="message_id"), [2 * n])
        deadline = time.monotonic() + 10  # the sink's fdatasync + checkpoint (every 100 ms)
        while time.monotonic() < deadline and d.durable_lsn() < 2 * n:
            pass
        self.assertEqual(d.durable_lsn(), 2 * n)
        d.proc.kill()  # no snapshot yet: the three workers rebuild from the WAL
        d.proc.wait(timeout=10)
        d.proc.stderr.close()
        d = Daemon(self.tmp, config)
        status, _ = d.request("POST", "/ingest", graph_batch([5, n + 1]), {"Content-Type": "application/json"})
        self.assertEqual(status, 202)
        got = d.wait_outcomes({"forwarded": 1, "duplicate": 1})
        self.assertEqual((got["forwarded"], got["duplicate"]), (1, 1))
        self.assertEqual(d.stop(), 0)  # writes dedup.snapshot.{0,1,2}-of-3
        data = os.path.join(self.tmp, "data")
        self.assertTrue(all(os.path.exists(os.path.join(data, f"dedup.snapshot.{w}-of-3")) for w in range(3)))
        # Another thread count loads the three files, each worker keeping its shards.
        d = Daemon(self.tmp, config.replace("threads = 3", "threads = 2"))
        status, _ = d.request("POST", "/ingest", graph_batch([7, n + 1, n + 2]), {"Content-Type": "application/json"})
        self.assertEqual(status, 202)
        got = d.wait_outcomes({"forwarded": 1, "duplicate": 2})
        self.assertEqual((got["forwarded"], got["duplicate"]), (1, 2))
        self.assertEqual(sum(samples(d.stats(), "dedup_snapshot_lsn")), 2 * (2 * n + 2))
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(data, "records.jsonl")) as f:
            lsns = [json.loads(line)["lsn"] for line in f]
        self.assertEqual(len(lsns), n + 2)
        self.assertEqual(lsns, sorted(lsns))  # the merge after the workers kept LSN order

    def test_bad_config_names_file_line_and_key(self):
        bad = os.path.join(self.tmp, "bad.toml")
        with open(bad, "w") as f:
            f.write('data_dir = "x"\n[limits]\nin_flight_mib = 0\nbogus = 1\n[dedup]\nshards = 2\nthreads = 4\n')
        out = subprocess.run([BIN, "run", "--config", bad], capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{bad}:3: limits.in_flight_mib: must be between", out.stderr)
        self.assertIn(f"{bad}:4: limits.bogus: unknown key", out.stderr)
        self.assertIn(f"{bad}:7: dedup.threads: must not exceed dedup.shards (2)", out.stderr)

    def test_top_shows_stage_rows_in_tmux(self):
        if shutil.which("tmux") is None:
            self.fail("tmux is not installed (tools/setup-deps installs it)")
        d = Daemon(self.tmp)
        d.request("POST", "/ingest", message(1), {"Content-Type": "message/rfc822"})
        session = f"mailrail-top-{os.getpid()}"
        sock = os.path.join(self.tmp, "stats.sock")
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                        f"{BIN} top --socket {sock}"], check=True)
        try:
            screen = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not re.search(r"(?m)^forward +1 ", screen):
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                        text=True).stdout
            self.assertIn("mailrail top", screen)
            self.assertIn("forward", screen)
            self.assertRegex(screen, r"(?m)^dedup +1 ")  # summed over the dedup workers' labels
            self.assertRegex(screen, r"(?m)^wal +1 ")
            self.assertRegex(screen, r"(?m)^parse +1 ")
            self.assertIn("p99 by part: accepted -> logged", screen)
            self.assertIn("thread {", screen)
            self.assertIn("wal->parse", screen)
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                    break
            self.assertNotEqual(subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode, 0,
                                "top did not quit on q")
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
