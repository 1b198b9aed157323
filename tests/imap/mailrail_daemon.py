"""The real `mailrail run` binary driven by IMAP tests: config writing (with [[imap.mailbox]]
tables), log events read from stderr, the control API, the stats socket, the JSONL sink and the IMAP
checkpoint. BIN[0] is the binary; the test script sets it from its command line."""
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from dovecot import PASSWORD, wait_until

BIN = [None]


def message(tag, i):
    return (f"From: Sender {i} <s{i}@example.com>\r\nTo: ops@corp.example\r\nSubject: {tag} {i}\r\n"
            f"Date: Mon, 4 May 2026 10:00:00 +0000\r\nMessage-ID: <{tag}-{i}@imap.test>\r\n\r\n"
            f"body of {tag} {i}\r\n" + "x" * (i * 37 % 900) + "\r\n").encode()


class Daemon:
    def __init__(self, tmp, mailboxes, imap_extra="", extra="", token="", wal_linger_us=1000, prefix=()):
        """prefix: a command the daemon is exec'ed from (same PID), e.g. to give it its own /etc/hosts."""
        self.tmp = tmp
        self.config = os.path.join(tmp, "mailrail.toml")
        self.stats_path = os.path.join(tmp, "stats.sock")
        self.records_path = os.path.join(tmp, "data", "records.jsonl")
        self.checkpoint_path = os.path.join(tmp, "data", "imap.checkpoint")
        with open(self.config, "w") as f:
            f.write(f'data_dir = "{tmp}/data"\n[http]\nport = 0\nbearer_token = "{token}"\n[stats]\nsocket = "{self.stats_path}"\n'
                    f'[log]\nformat = "json"\n[wal]\nmax_linger_us = {wal_linger_us}\n'
                    f'{extra}\n'
                    f'[imap]\nbackoff_base_ms = 50\nbackoff_max_ms = 400\n{imap_extra}\n')
            for mb in mailboxes:
                f.write("[[imap.mailbox]]\n")
                for k, v in mb.items():
                    f.write(f"{k} = {json.dumps(v)}\n")
        self.token = token
        self.prefix = list(prefix)
        self.log = []
        self.start()

    def start(self):
        """Starts the daemon; events are read from its log in a thread (one queue per process)."""
        self.events = queue.Queue()
        self.proc = subprocess.Popen(self.prefix + [BIN[0], "run", "--config", self.config], stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, args=(self.proc, self.events), daemon=True)
        self.reader.start()
        self.http = self.wait_for("started")["http"]

    def trigger_polling(self):
        return self.api("POST", "/polling/trigger")

    def api(self, method, path, token=None):
        """(status, parsed JSON body) of a control API request, with the daemon's bearer token."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://{self.http}{path}", data=b"" if method == "POST" else None,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def _read(self, proc, events):
        for line in proc.stderr:
            self.log.append(line)
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        proc.stderr.close()
        events.put(None)

    def wait_for(self, event, timeout=30, **fields):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no '{event}' {fields} within {timeout} s: {''.join(self.log[-30:])}")
            try:
                record = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if record is None:
                raise AssertionError(f"daemon exited before '{event}': {''.join(self.log[-30:])}")
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record

    def stats(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.stats_path)
        s.sendall(b"json\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        return json.loads(data)

    def message_ids(self):
        ids = []
        try:
            with open(self.records_path) as f:
                for line in f:
                    if line.endswith("\n"):
                        ids.append(json.loads(line)["message_id"])
        except FileNotFoundError:
            pass
        return ids

    def wait_ids(self, expected, timeout=30):
        """Waits until every expected id is in the sink; returns all ids seen."""
        expected = set(expected)
        try:
            wait_until(lambda: expected <= set(self.message_ids()), timeout, f"{len(expected)} message ids in the sink")
        except AssertionError as e:
            missing = sorted(expected - set(self.message_ids()))
            raise AssertionError(f"{e}; missing {missing[:10]}; outcomes {self.stats().get('messages_final')}; "
                                 f"log: {''.join(self.log[-20:])}") from None
        return self.message_ids()

    def checkpoint(self):
        out = {}
        try:
            with open(self.checkpoint_path) as f:
                for line in f:
                    if line.startswith("#"):
                        continue
                    validity, uid, key = line.rstrip("\n").split("\t")
                    out[key] = (int(validity), int(uid))
        except FileNotFoundError:
            pass
        return out

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=20)
        self.reader.join(timeout=20)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=40)
        return self.proc.returncode


def ids(tag, n, start=0):
    return [f"{tag}-{i}@imap.test" for i in range(start, start + n)]  # the record drops the <>


class DovecotDaemonTestCase(unittest.TestCase):
    """A temporary directory per test, a Dovecot (self.dovecot) and a daemon (self.daemon) the test
    may start; both are stopped by PID afterwards, and the daemon's log must not hold PASSWORD."""
    tmp_prefix = "mailrail-imap-"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self.tmp_prefix)
        self.dovecot = None
        self.daemon = None

    def tearDown(self):
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.kill()
        if self.dovecot is not None:
            self.dovecot.stop()
        if self.daemon is not None:
            self.assertNotIn(PASSWORD, "".join(self.daemon.log), "the password leaked into the log")
        shutil.rmtree(self.tmp, ignore_errors=True)

