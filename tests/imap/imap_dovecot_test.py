#!/usr/bin/env python3
"""The IMAP source of `mailrail run` against a real Dovecot (Debian dovecot-imapd).

Each test starts its own Dovecot as `dovecot -F -c CONF` on free loopback ports with a generated
config (Maildir in a temp dir, passwd-file passdb with plain passwords, mail owned by nobody),
seeds it over IMAP APPEND with messages written here, runs the real daemon with [[imap.mailbox]]
entries and checks the JSONL sink (message ids), the stats socket and the IMAP checkpoint.
Dovecot and the daemon are stopped by PID. Every wait polls for an event with a bounded timeout.

    imap_dovecot_test.py MAILRAIL_BIN
"""
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

import dovecot
# PASSWORD must never show up in the daemon's output (DovecotDaemonTestCase checks).
from dovecot import Daemon, Dovecot, DovecotDaemonTestCase, PASSWORD, ids, message, wait_until

BIN = dovecot.BIN[0] = sys.argv.pop(1)


class Introspection:
    """An OAuth2 token introspection endpoint (RFC 7662 style, as Dovecot's oauth2 passdb calls it
    with introspection_mode = post): a token in `valid` is active for user alice. Records every
    token it was asked about in `seen`."""

    def __init__(self):
        owner = self
        self.valid = set()
        self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                token = urllib.parse.parse_qs(body).get("token", [""])[0]
                owner.seen.append(token)
                answer = {"active": True, "username": "alice"} if token in owner.valid else {"active": False}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/introspect"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def wal_message_ids(wal_dir):
    """Message ids whose raw message is anywhere in the WAL's segment files."""
    found = []
    for name in sorted(os.listdir(wal_dir)):
        with open(os.path.join(wal_dir, name), "rb") as f:
            found += [m.decode() for m in re.findall(rb"Message-ID: <([^>]+)>", f.read())]
    return found


class ImapDovecotTest(DovecotDaemonTestCase):
    def test_backfill_idle_restarts_and_uidvalidity(self):
        dv = self.serve(Dovecot(self.tmp, ["alice"]))
        dv.start()
        n = 40
        dv.append("alice", "INBOX", [message("inbox", i) for i in range(n)])
        # Older than the 6-month backfill window (internal date): must not be fetched.
        dv.append("alice", "INBOX", [message("old", i) for i in range(3)], date=time.time() - 400 * 86400)
        dv.append("alice", "Archive", [message("archive", i) for i in range(5)])
        d = self.daemon = Daemon(self.tmp, [{
            "name": "alice", "host": "127.0.0.1", "port": dv.port, "tls": "none", "user": "alice",
            "password": PASSWORD, "folders": ["INBOX", "Archive"], "months": 6}],
            imap_extra="fetch_batch = 7\npipeline_depth = 3")
        expected = ids("inbox", n) + ids("archive", 5)

        # Backfill: every message once, nothing older than the window, one FETCH per UID, pipelined.
        got = d.wait_ids(expected)
        d.wait_for("imap_idle", folder="INBOX")
        self.assert_once(got, expected)
        self.assertFalse(set(ids("old", 3)) & set(got), "messages outside the backfill window were fetched")
        stats = d.stats()
        self.assertEqual(stats["imap_messages"], n + 5)
        self.assertEqual(stats["imap_fetch_commands"], 6 + 1)  # ceil(40 / 7) + ceil(5 / 7)

        # New mail during IDLE.
        dv.append("alice", "INBOX", [message("live", i) for i in range(3)])
        self.assert_once(d.wait_ids(ids("live", 3)), ids("live", 3))
        self.assertGreaterEqual(d.stats()["imap_idle_wakeups"], 1)

        # Dovecot restarted under the daemon: it reconnects (with backoff) and nothing is missing.
        dv.stop()
        d.wait_for("imap_disconnected", folder="INBOX")
        dv.start()
        d.wait_for("imap_idle", folder="INBOX")
        dv.append("alice", "INBOX", [message("after-restart", i) for i in range(3)])
        expected += ids("live", 3) + ids("after-restart", 3)
        self.assert_once(d.wait_ids(expected), expected)

        # The checkpoint reaches the last durable UID (46 in INBOX: 40 + 3 old + 3 live ... the old
        # ones were skipped by SEARCH but 'UID n:*' resumes after the highest fetched UID).
        wait_until(lambda: d.checkpoint().get("alice/INBOX", (0, 0))[1] == n + 3 + 3 + 3, 10, "INBOX checkpoint")
        wait_until(lambda: d.checkpoint().get("alice/Archive", (0, 0))[1] == 5, 10, "Archive checkpoint")

        # SIGKILL, new mail while down, restart: only the new mail is fetched.
        d.kill()
        dv.append("alice", "INBOX", [message("while-down", i) for i in range(2)])
        d.start()
        caught_up = d.wait_for("imap_caught_up", folder="INBOX")
        self.assertEqual(caught_up["fetched"], "2", "restart refetched more than the new mail")
        expected += ids("while-down", 2)
        self.assert_once(d.wait_ids(expected), expected)
        self.assertEqual(d.stats()["imap_messages"], 2)

        # UIDVALIDITY change (uidlist and indexes removed while Dovecot is down): full resync of
        # the folder; dedup drops the repeats, so the sink still has each message once.
        d.wait_for("imap_idle", folder="Archive")
        dv.stop()
        root = os.path.join(dv.dir, "mail", "alice")
        for folder in (os.path.join(root, ".Archive"), root):  # the folder's uidlist and index, the list index
            for name in os.listdir(folder):
                if name.startswith("dovecot") and (folder != root or name.startswith("dovecot.list.index")):
                    os.remove(os.path.join(folder, name))
        dv.start()
        d.wait_for("imap_uidvalidity_changed", folder="Archive")
        d.wait_for("imap_caught_up", folder="Archive", fetched="5")
        stats = wait_until(lambda: (s := d.stats())["messages_final"] and s, 10, "stats")
        self.assertEqual(stats["imap_uidvalidity_resets"], 1)
        wait_until(lambda: {x["outcome"]: x["value"] for x in d.stats()["messages_final"]}.get("duplicate", 0) >= 5,
                   20, "the 5 resynced Archive messages to be counted as duplicates")
        self.assert_once(d.message_ids(), expected)
        self.assertEqual(d.stop(), 0)

    def test_seen_and_move_only_after_durable(self):
        dv = self.serve(Dovecot(self.tmp, ["erin", "frank"]))
        dv.start()
        big = 300
        dv.seed_maildir("erin", [message("erin", i) for i in range(big)])
        dv.append("frank", "INBOX", [message("frank", i) for i in range(20)])
        dv.append("frank", "Archive", [])  # creates the destination folder
        plain = {"host": "127.0.0.1", "port": dv.port, "tls": "none", "password": PASSWORD}
        mailboxes = [{**plain, "name": "erin", "user": "erin", "on_durable": "seen"},
                     {**plain, "name": "frank", "user": "frank", "on_durable": "move", "move_to": "Archive"}]
        # A slow WAL (a commit every 300 ms) and at most 16 messages in the pipeline: at any moment
        # fetched messages wait for the WAL.
        d = self.daemon = Daemon(self.tmp, mailboxes, wal_linger_us=300_000, extra="[limits]\nin_flight_messages = 16",
                                 imap_extra="fetch_batch = 10\npipeline_depth = 1")
        wait_until(lambda: dv.message_ids("erin", "INBOX", "SEEN"), 60, "a first \\Seen message")
        fetched = d.stats()["imap_messages"]
        d.kill()
        # Everything flagged at the kill is in the WAL (the flag is sent only after the commit) ...
        seen = set(dv.message_ids("erin", "INBOX", "SEEN"))
        in_wal = set(wal_message_ids(os.path.join(self.tmp, "data", "wal")))
        self.assertTrue(seen)
        self.assertEqual(seen - in_wal, set(), "a message was flagged \\Seen before its WAL record existed")
        # ... while fetched messages were still waiting for it (else the check above proves nothing).
        self.assertLess(len(in_wal), fetched, "every fetched message was durable at the kill: no window tested")
        self.assertLess(len(seen), big)

        # Restarted: every message arrives, every one ends \Seen (durable ones the STORE missed are
        # caught up after SELECT), frank's are moved to Archive and gone from INBOX.
        d.start()
        d.wait_ids(ids("erin", big) + ids("frank", 20), timeout=90)
        wait_until(lambda: len(dv.message_ids("erin", "INBOX", "SEEN")) == big, 30, "every erin message \\Seen")
        wait_until(lambda: not dv.message_ids("frank", "INBOX", "ALL"), 30, "frank's INBOX emptied")
        self.assertEqual(sorted(dv.message_ids("frank", "Archive", "ALL")), sorted(ids("frank", 20)))
        self.assertEqual(d.stop(), 0)

    def test_xoauth2_with_a_rotated_token_file(self):
        introspection = Introspection()
        self.addCleanup(introspection.close)
        introspection.valid = {"tok-one-ABCDEF"}
        dv = self.serve(Dovecot(self.tmp, ["alice"], oauth2_introspection_url=introspection.url))
        dv.start()
        dv.append("alice", "INBOX", [message("oauth", i) for i in range(3)])
        token_file = os.path.join(self.tmp, "alice.token")
        write_atomically(token_file, "tok-one-ABCDEF\n")
        d = self.daemon = Daemon(self.tmp, [{"name": "alice", "host": "127.0.0.1", "port": dv.port, "tls": "none",
                                             "user": "alice", "auth": "xoauth2", "token_file": token_file}])
        d.wait_ids(ids("oauth", 3))
        self.assertIn("tok-one-ABCDEF", introspection.seen)

        # The token is rotated on disk and the old one revoked; the next connection uses the new one.
        introspection.valid = {"tok-two-GHIJKL"}
        write_atomically(token_file, "tok-two-GHIJKL\n")
        dv.stop()
        d.wait_for("imap_disconnected")
        dv.start()
        dv.append("alice", "INBOX", [message("rotated", i) for i in range(2)])
        d.wait_ids(ids("rotated", 2))
        self.assertIn("tok-two-GHIJKL", introspection.seen)

        # Revoked before the file changes: refused (retried with backoff) until the file is rotated.
        introspection.valid = {"tok-three-MNOPQR"}
        dv.stop()
        d.wait_for("imap_disconnected")
        dv.start()
        refused = d.wait_for("imap_disconnected", code="imap_refused")
        self.assertIn("AUTHENTICATE XOAUTH2 refused", refused["error"])
        write_atomically(token_file, "tok-three-MNOPQR\n")
        dv.append("alice", "INBOX", [message("after-refusal", i) for i in range(2)])
        got = d.wait_ids(ids("oauth", 3) + ids("rotated", 2) + ids("after-refusal", 2))
        self.assertEqual(len(got), 7)
        self.assertRegex(dv.log(full=True), r"Login: user=<alice>, method=XOAUTH2")
        self.assertEqual(d.stop(), 0)
        log = "".join(d.log)
        for token in ("tok-one", "tok-two", "tok-three"):
            self.assertNotIn(token, log, "a token leaked into the log")

    def test_every_resolved_address_is_tried(self):
        """`localhost` resolving to ::1 then 127.0.0.1 (a hosts file bind-mounted over /etc/hosts in
        the daemon's own mount namespace) while Dovecot listens on 127.0.0.1 only."""
        hosts = os.path.join(self.tmp, "hosts")
        with open(hosts, "w") as f:
            f.write("::1 localhost\n127.0.0.1 localhost\n")
        prefix = ["unshare", "--mount", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$0" "$@"']
        probe = subprocess.run(prefix + ["getent", "ahosts", "localhost"], capture_output=True, text=True, timeout=10)
        if probe.returncode != 0:
            self.skipTest(f"no private mount namespace here: {probe.stderr.strip()}")
        self.assertTrue(probe.stdout.startswith("::1"), probe.stdout)
        dv = self.serve(Dovecot(self.tmp, ["alice"]))
        dv.start()
        dv.append("alice", "INBOX", [message("multi", i) for i in range(4)])
        d = self.daemon = Daemon(self.tmp, [{"name": "alice", "host": "localhost", "port": dv.port, "tls": "none",
                                             "user": "alice", "password": PASSWORD}], prefix=prefix)
        failed = d.wait_for("imap_connect_failed")
        self.assertEqual(failed["address"], "::1")
        self.assert_once(d.wait_ids(ids("multi", 4)), ids("multi", 4))
        stats = d.stats()
        self.assertEqual(stats["imap_connect_fallbacks"], 1)
        self.assertEqual(stats["imap_disconnects"], 0, "the refused address cost a backoff")
        self.assertEqual(d.stop(), 0)

    def test_tls_starttls_plain_auth_and_connection_limit(self):
        dv = self.serve(Dovecot(self.tmp, ["alice", "bob"], tls=True))
        dv.start()
        dv.append("alice", "INBOX", [message("alice", i) for i in range(10)])
        for folder in ("INBOX", "Work", "Lists"):
            dv.append("bob", folder, [message(f"bob-{folder}", i) for i in range(4)])
        d = self.daemon = Daemon(self.tmp, [
            {"name": "alice", "host": "127.0.0.1", "port": dv.tls_port, "tls": "implicit", "ca_file": dv.cert,
             "user": "alice", "password": PASSWORD, "auth": "plain"},
            # Three folders through one connection at a time: they take turns, polling with NOOP.
            {"name": "bob", "host": "127.0.0.1", "port": dv.port, "tls": "starttls", "verify_peer": False,
             "user": "bob", "password_file": self.write_secret(), "folders": ["INBOX", "Work", "Lists"],
             "idle": False},
            # The same server without its CA: the certificate must be refused.
            {"name": "untrusted", "host": "127.0.0.1", "port": dv.tls_port, "tls": "implicit",
             "user": "alice", "password": PASSWORD}],
            imap_extra="max_connections_per_server = 1\npoll_interval_ms = 60000")
        expected = ids("alice", 10)
        for folder in ("INBOX", "Work", "Lists"):
            expected += ids(f"bob-{folder}", 4)
        self.assert_once(d.wait_ids(expected), expected)
        # New mail in a folder that gave up its connection arrives when polling is triggered
        # (the poll interval, 60 s, is longer than the wait).
        dv.append("bob", "Work", [message("bob-late", 0)])
        status, answer = d.trigger_polling()
        self.assertEqual(status, 202)
        self.assertGreaterEqual(answer["folders"], 2)
        self.assert_once(d.wait_ids(ids("bob-late", 1), timeout=20), ids("bob-late", 1))
        refused = d.wait_for("imap_disconnected", mailbox="untrusted")
        self.assertEqual(refused["code"], "tls")
        self.assertIn("certificate verify failed", refused["error"])
        self.assertEqual(d.stop(), 0)
        for line in d.log:
            if '"imap_disconnected"' in line:
                self.assertIn('"untrusted"', line, "a trusted mailbox lost its connection")
        # The daemon's sessions were encrypted (implicit TLS and STARTTLS; the test's own APPENDs are not).
        log = dv.log(full=True)
        self.assertRegex(log, r"Login: user=<alice>, method=PLAIN, .*TLS")
        self.assertRegex(log, r"Login: user=<bob>, method=PLAIN, .*TLS")

    def test_wrong_password_is_retried_and_reported_without_secret(self):
        dv = self.serve(Dovecot(self.tmp, ["alice"]))
        dv.start()
        d = self.daemon = Daemon(self.tmp, [{"host": "127.0.0.1", "port": dv.port, "tls": "none", "user": "alice",
                                             "password": PASSWORD + "-wrong"}])
        first = d.wait_for("imap_disconnected")
        self.assertEqual(first["code"], "imap_refused")
        self.assertIn("login refused", first["error"])
        d.wait_for("imap_disconnected")  # retried after the backoff
        self.assertNotIn(PASSWORD + "-wrong", "".join(d.log))
        self.assertEqual(d.stop(), 0)

    def test_silent_and_garbling_servers_are_dropped_and_retried(self):
        """Fault injection without Dovecot: a server that greets and then never answers (command
        timeout), and one that answers LOGIN with bytes that are not IMAP (protocol error)."""
        def serve(listener, reply):
            listener.settimeout(30)
            conns = []
            try:
                while True:
                    conn, _ = listener.accept()
                    conns.append(conn)
                    conn.sendall(b"* OK fake server ready\r\n")
                    if reply:
                        conn.recv(4096)
                        conn.sendall(reply)
            except OSError:
                pass
            finally:
                for c in conns:
                    c.close()

        listeners = []
        for reply in (None, b"garbage without a tag\r\n"):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listeners.append(listener)
            threading.Thread(target=serve, args=(listener, reply), daemon=True).start()
        d = self.daemon = Daemon(self.tmp, [
            {"name": "silent", "host": "127.0.0.1", "port": listeners[0].getsockname()[1], "tls": "none",
             "user": "u", "password": PASSWORD},
            {"name": "garbling", "host": "127.0.0.1", "port": listeners[1].getsockname()[1], "tls": "none",
             "user": "u", "password": PASSWORD}],
            imap_extra="response_timeout_ms = 300")
        timeout = d.wait_for("imap_disconnected", mailbox="silent")
        self.assertEqual(timeout["code"], "timeout")
        garbled = d.wait_for("imap_disconnected", mailbox="garbling")
        self.assertEqual(garbled["code"], "imap_protocol")
        d.wait_for("imap_disconnected", mailbox="silent")  # reconnected and timed out again
        self.assertGreaterEqual(d.stats()["imap_connects"], 3)
        self.assertEqual(d.stop(), 0)
        for listener in listeners:
            listener.close()

    def test_bad_config_and_damaged_checkpoint_are_refused_at_start(self):
        bad = os.path.join(self.tmp, "bad.toml")
        with open(bad, "w") as f:
            f.write('[imap]\nfetch_batch = 0\n'
                    '[[imap.mailbox]]\nuser = "a"\npassword = "p1"\npassword_file = "f"\ntls = "ssl"\n'
                    '[[imap.mailbox]]\nname = "a/b"\nhost = "h"\nuser = "b"\npassword = "p2"\nfolders = []\nbogus = 1\n')
        out = subprocess.run([BIN, "run", "--config", bad], capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, 2, out.stderr)
        for expected in (f"{bad}:2: imap.fetch_batch: must be between 1 and 10000",
                         f"{bad}:7: imap.mailbox[0].tls: must be one of none, implicit, starttls",
                         "imap.mailbox[0].host: is required",
                         "imap.mailbox[0].password: give exactly one of password and password_file",
                         f"{bad}:13: imap.mailbox[1].folders: must be a non-empty array",
                         "imap.mailbox[1].name: must not contain '/'",
                         f"{bad}:14: imap.mailbox[1].bogus: unknown key"):
            self.assertIn(expected, out.stderr)
        self.assertNotIn("p1", out.stderr.replace("imap.", "").replace(self.tmp, ""))  # the temp name may hold "p1"

        # The keys of sync jobs, acknowledgements and XOAUTH2, in a separate mailboxes file.
        mailboxes = os.path.join(self.tmp, "mailboxes.toml")
        with open(mailboxes, "w") as f:
            f.write('[[imap.mailbox]]\nname = "a"\nhost = "h"\nuser = "a"\npassword = "p"\non_durable = "move"\n'
                    'backfill = "later"\n'
                    '[[imap.mailbox]]\nname = "b"\nuser_id = "a"\nhost = "h"\nuser = "b"\nauth = "xoauth2"\n'
                    'password = "p"\n')
        with open(bad, "w") as f:
            f.write(f'[imap]\nmailboxes_file = "{mailboxes}"\n[sync]\nincremental_interval_s = 0\n')
        out = subprocess.run([BIN, "run", "--config", bad], capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, 2, out.stderr)
        for expected in (f"{bad}:4: sync.incremental_interval_s: must be between 1 and 604800",
                         f"{mailboxes}:6: imap.mailbox[0].move_to: on_durable = \"move\" needs move_to",
                         f"{mailboxes}:7: imap.mailbox[0].backfill: must be one of at_start, on_request",
                         "imap.mailbox[1].password: auth = \"xoauth2\" takes token or token_file, not a password",
                         "imap.mailbox[1].token: auth = \"xoauth2\" needs exactly one of token and token_file"):
            self.assertIn(expected, out.stderr)

        data = os.path.join(self.tmp, "data")
        os.makedirs(data)
        with open(os.path.join(data, "imap.checkpoint"), "w") as f:
            f.write("# header\n17\tnot-a-uid\tmb/INBOX\n")
        good = os.path.join(self.tmp, "good.toml")
        with open(good, "w") as f:
            f.write(f'data_dir = "{data}"\n[http]\nport = 0\n[stats]\nsocket = "{self.tmp}/stats.sock"\n'
                    f'[[imap.mailbox]]\nname = "mb"\nhost = "127.0.0.1"\nport = 1\ntls = "none"\nuser = "u"\n'
                    f'password = "p"\n')
        out = subprocess.run([BIN, "run", "--config", good], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn(f"{data}/imap.checkpoint:2: expected <uidvalidity> TAB <uid> TAB <mailbox>/<folder>", out.stderr)

    def write_secret(self):
        path = os.path.join(self.tmp, "bob.password")
        with open(path, "w") as f:
            f.write(PASSWORD + "\n")
        return path


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("imap_dovecot_test: Dovecot's mail processes switch users: run as root")
        sys.exit(1)
    unittest.main(verbosity=2)
