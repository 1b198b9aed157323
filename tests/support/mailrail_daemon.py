"""Drives the real `mailrail run` for the Python tests and benchmarks: writes nothing itself (the
caller gives the config file), starts the binary, reads its JSON log in a thread, and offers
bounded waits on log events, on the JSONL sink's message ids and on the stats socket, and calls the
control API. The daemon is stopped by PID (SIGTERM to drain, SIGKILL to crash). Used by the IMAP,
sync-job and Graph tests and the benchmarks."""
import json
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request


def write_config(path, tmp, stats_path, head, section, section_text, mailboxes, wal_linger_us=1000):
    """A daemon config for the tests: data in tmp/data, JSON log, a WAL linger of wal_linger_us
    (1 ms), `head` (more top-level tables, e.g. [http]), then [section] with `section_text` and one
    [[section.mailbox]] table per dict of `mailboxes`."""
    with open(path, "w") as f:
        f.write(f'data_dir = "{tmp}/data"\n[stats]\nsocket = "{stats_path}"\n[log]\nformat = "json"\n'
                f'[wal]\nmax_linger_us = {wal_linger_us}\n{head}\n[{section}]\n{section_text}\n')
        for mb in mailboxes:
            f.write(f"[[{section}.mailbox]]\n")
            for k, v in mb.items():
                f.write(f"{k} = {json.dumps(v)}\n")


def run_config(binary, path, text, timeout=20):
    """Writes `text` to the config file `path` and runs `mailrail run` on it to its end (for configs
    the daemon refuses); returns the CompletedProcess."""
    with open(path, "w") as f:
        f.write(text)
    return subprocess.run([binary, "run", "--config", path], capture_output=True, text=True, timeout=timeout)


def checkpoint_rows(path):
    """The tab-separated fields of each line of a source checkpoint file, comments skipped; [] when
    the file does not exist yet."""
    try:
        with open(path) as f:
            return [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    except FileNotFoundError:
        return []


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling interval of a bounded wait, not a synchronisation
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class MailrailDaemon:
    """The config must set log.format = "json", http.port (0 is fine) and stats.socket. token: the
    config's http.bearer_token, sent by api(). prefix: a command the daemon is exec'ed from (same
    PID), e.g. to give it its own /etc/hosts."""

    def __init__(self, binary, config, stats_path, records_path, token="", prefix=()):
        self.binary = binary
        self.config = config
        self.stats_path = stats_path
        self.records_path = records_path
        self.token = token
        self.prefix = list(prefix)
        self.log = []

    def start(self):
        """Starts the daemon; events are read from its log in a thread (one queue per process)."""
        self.events = queue.Queue()
        self.proc = subprocess.Popen(self.prefix + [self.binary, "run", "--config", self.config], stderr=subprocess.PIPE,
                                     text=True)
        self.reader = threading.Thread(target=self._read, args=(self.proc, self.events), daemon=True)
        self.reader.start()
        self.http = self.wait_for("started")["http"]
        return self

    def post(self, path, body=b"", headers=None):
        request = urllib.request.Request(f"http://{self.http}{path}", data=body, method="POST", headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")

    def trigger_polling(self):
        return self.api("POST", "/polling/trigger")

    def api(self, method, path, token=None):
        """(status, parsed JSON body) of a control API request with the daemon's bearer token (or
        `token`); error statuses are returned, not raised."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return self.post(path, headers=headers) if method == "POST" else self._get(path, headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def _get(self, path, headers):
        request = urllib.request.Request(f"http://{self.http}{path}", method="GET", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")

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

    def outcomes(self):
        return {x["outcome"]: x["value"] for x in self.stats().get("messages_final", [])}

    def records(self):
        out = []
        try:
            with open(self.records_path) as f:
                for line in f:
                    if line.endswith("\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def message_ids(self):
        return [r["message_id"] for r in self.records()]

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

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=20)
        self.reader.join(timeout=20)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=40)
        return self.proc.returncode


class DaemonTestCase(unittest.TestCase):
    """setUp makes self.tmp; tearDown kills a daemon still running, stops every server given to
    serve() (by its stop()), checks that none of secrets() appears in the daemon's log, and
    removes self.tmp."""
    tmp_prefix = "mailrail-test-"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self.tmp_prefix)
        self.daemon = None
        self.servers = []

    def serve(self, server):
        self.servers.append(server)
        return server

    def secrets(self):
        return []

    def tearDown(self):
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.kill()
        for server in reversed(self.servers):
            server.stop()
        if self.daemon is not None:
            log = "".join(self.daemon.log)
            for secret in self.secrets():
                self.assertNotIn(secret, log, "a secret leaked into the log")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assert_once(self, got, expected):
        for i in expected:
            self.assertEqual(got.count(i), 1, f"{i} delivered {got.count(i)} times")
