"""Helpers for tests and benchmarks that need a real Dovecot: a generated config on free loopback
ports (Maildir in a temp dir, passwd-file passdb with plain passwords, mail owned by nobody),
started as `dovecot -F -c CONF` and stopped by PID. Needs root (Dovecot switches users). Also the
IMAP tests' daemon (tests/support/mailrail_daemon.py configured with [[imap.mailbox]] tables), test
messages and the test base class."""
import imaplib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from mailrail_daemon import (DaemonTestCase, MailrailDaemon, checkpoint_rows,  # noqa: E402
                             wait_until, write_config)

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
PASSWORD = "s3cret-Pa55"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BIN = [None]  # the mailrail binary; each IMAP test script sets BIN[0] from its command line


def message(tag, i):
    return (f"From: Sender {i} <s{i}@example.com>\r\nTo: ops@corp.example\r\nSubject: {tag} {i}\r\n"
            f"Date: Mon, 4 May 2026 10:00:00 +0000\r\nMessage-ID: <{tag}-{i}@imap.test>\r\n\r\n"
            f"body of {tag} {i}\r\n" + "x" * (i * 37 % 900) + "\r\n").encode()


def ids(tag, n, start=0):
    return [f"{tag}-{i}@imap.test" for i in range(start, start + n)]  # the record drops the <>


class Daemon(MailrailDaemon):
    """`mailrail run` (started at once) with [imap] (fast backoff, then imap_extra) and one
    [[imap.mailbox]] per dict of `mailboxes`; extra: more top-level tables; token: the API's bearer
    token; prefix: see MailrailDaemon."""

    def __init__(self, tmp, mailboxes, imap_extra="", extra="", token="", wal_linger_us=1000, prefix=()):
        super().__init__(BIN[0], os.path.join(tmp, "mailrail.toml"), os.path.join(tmp, "stats.sock"),
                         os.path.join(tmp, "data", "records.jsonl"), token=token, prefix=prefix)
        self.tmp = tmp
        self.checkpoint_path = os.path.join(tmp, "data", "imap.checkpoint")
        write_config(self.config, tmp, self.stats_path, f'[http]\nport = 0\nbearer_token = "{token}"\n{extra}', "imap",
                     f"backoff_base_ms = 50\nbackoff_max_ms = 400\n{imap_extra}", mailboxes, wal_linger_us)
        self.start()

    def checkpoint(self):
        return {key: (int(validity), int(uid)) for validity, uid, key in checkpoint_rows(self.checkpoint_path)}


class DovecotDaemonTestCase(DaemonTestCase):
    """The IMAP tests' base: a Dovecot given to serve() and the daemon are stopped by PID after the
    test, and the daemon's log must not hold PASSWORD."""
    tmp_prefix = "mailrail-imap-"

    def secrets(self):
        return [PASSWORD]


class Dovecot:
    def __init__(self, tmp, users, tls=False, oauth2_introspection_url=None, extra_conf=""):
        """oauth2_introspection_url: also accept AUTHENTICATE XOAUTH2, with tokens checked by POSTing
        token=... to that URL (Dovecot's oauth2 passdb, introspection_mode = post), which must
        answer {"active": true, "username": USER} for a valid token."""
        self.dir = os.path.join(tmp, "dovecot")
        for d in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        os.chmod(tmp, 0o755)
        os.chmod(self.dir, 0o755)
        for d in ("mail", "home"):  # the mail processes run as nobody
            os.chmod(os.path.join(self.dir, d), 0o777)
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            for user in users:
                f.write(f"{user}:{{PLAIN}}{PASSWORD}\n")
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        ssl = "no"
        if tls:
            self.cert = os.path.join(self.dir, "cert.pem")
            key = os.path.join(self.dir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-keyout", key, "-out", self.cert], check=True, capture_output=True)
            ssl = f"yes\nssl_cert = <{self.cert}\nssl_key = <{key}"
        mechanisms = "plain login"
        oauth2_passdb = ""
        if oauth2_introspection_url:
            mechanisms += " xoauth2"
            oauth2_conf = os.path.join(self.dir, "dovecot-oauth2.conf.ext")
            with open(oauth2_conf, "w") as f:
                f.write(f"introspection_mode = post\nintrospection_url = {oauth2_introspection_url}\n"
                        "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
                        "force_introspection = yes\n")
            oauth2_passdb = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2\n  args = {oauth2_conf}\n}}\n"
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""protocols = imap
{extra_conf}
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
ssl = {ssl}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
mail_location = maildir:{self.dir}/mail/%u
{oauth2_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={self.dir}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
""")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(self._accepts, 20, f"dovecot on port {self.port}")

    def _accepts(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited with {self.proc.returncode}: {self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def stop(self):
        """SIGTERM to the master by PID: it ends its login and mail processes, closing sessions."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        wait_until(lambda: not self._port_open(), 20, "dovecot's port to close")

    def _port_open(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def log(self, full=False):
        try:
            with open(os.path.join(self.dir, "dovecot.log")) as f:
                text = f.read()
                return text if full else text[-3000:]
        except OSError:
            return ""

    def append(self, user, folder, messages, date=None):
        m = imaplib.IMAP4("127.0.0.1", self.port)
        m.login(user, PASSWORD)
        if folder != "INBOX":
            m.create(folder)  # NO when it exists already: fine
        for raw in messages:
            typ, data = m.append(folder, None, date, raw)
            assert typ == "OK", data
        m.logout()

    def seed_maildir(self, user, messages):
        """Writes messages straight into the user's Maildir INBOX (much faster than APPEND for
        thousands); Dovecot assigns their UIDs when the folder is next opened. Owned by nobody."""
        root = os.path.join(self.dir, "mail", user)
        for sub in ("", "cur", "new", "tmp"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            os.chown(os.path.join(root, sub), 65534, 65534)
        stamp = int(time.time())
        for i, raw in enumerate(messages):
            path = os.path.join(root, "cur", f"{stamp}.M{i}P{os.getpid()}.mailrail:2,")
            with open(path, "wb") as f:
                f.write(raw)
            os.chown(path, 65534, 65534)

    def message_ids(self, user, folder, criteria):
        """Message ids (without <>) of the folder's messages matching a SEARCH criteria, read
        without changing flags (EXAMINE, BODY.PEEK)."""
        m = imaplib.IMAP4("127.0.0.1", self.port)
        m.login(user, PASSWORD)
        typ, _ = m.select(folder, readonly=True)
        assert typ == "OK", folder
        typ, data = m.uid("SEARCH", None, criteria)
        uids = data[0].split()
        out = []
        for i in range(0, len(uids), 500):
            typ, data = m.uid("FETCH", b",".join(uids[i:i + 500]), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in data:
                if isinstance(item, tuple):
                    header = item[1].decode()
                    out.append(header[header.index("<") + 1:header.index(">")])
        m.logout()
        return out

    def sessions(self):
        """IMAP sessions open now, as Dovecot counts them (doveadm who)."""
        out = subprocess.run([DOVEADM, "-c", self.conf, "who", "-1"], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return sum(1 for line in out.stdout.splitlines()[1:] if line.strip())

