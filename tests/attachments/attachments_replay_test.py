#!/usr/bin/python3
"""Replay-level tests of the attachment store: the real `mailrail replay` over an mbox of test
messages (base64 PDFs, a quoted-printable XML, a duplicate, a quarantined .exe, a 6 MiB and a
7 MiB attachment) plus real corpus messages with PDFs, first into the disk store, then into the
S3 double (tests/attachments/s3_double.py, which verifies every SigV4 signature) with injected
503 SlowDown answers and an <Error> inside a 200 to CompleteMultipartUpload.

    attachments_replay_test.py MAILRAIL_BIN CORPUS_DIR

Every wait is bounded (subprocess timeouts, a polled port file with a deadline); the S3 double
listens on 127.0.0.1 on a port the kernel picks and is stopped by its PID.
"""
import base64
import email
import email.policy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

BIN = sys.argv.pop(1)
CORPUS = sys.argv.pop(1)
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024
CORPUS_FILES = [
    "flanker/tests/fixtures/messages/attached-pdf.eml",
    "ruby-mail/spec/fixtures/emails/attachment_emails/attachment_pdf_lf.eml",
]
SECRET = "mailrail/test+secret/KEY"


def blob(seed, size):
    rng = random.Random(seed)
    return b"%PDF-1.4\n" + rng.randbytes(size - 9)


def part(filename, content_type, data, encoding="base64"):
    if encoding == "base64":
        body = base64.encodebytes(data).decode().replace("\n", "\r\n")
    else:
        body = data.decode()
    return (f"--b1\r\nContent-Type: {content_type}; name=\"{filename}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n{body}\r\n")


def message(msg_id, subject, parts):
    head = (f"From: Billing <billing@vendor.example>\r\nTo: ap@corp.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 4 May 2026 10:00:00 +0000\r\nMessage-ID: <{msg_id}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            f"--b1\r\nContent-Type: text/plain\r\n\r\nplease find the document attached\r\n")
    return head + "".join(parts) + "--b1--\r\n"


class Fixture:
    """The dump and what each attachment must become."""

    def __init__(self, directory):
        self.pdf_a = blob(1, 200_000)
        self.pdf_c = blob(3, 40_000)
        self.pdf_dup_only = blob(4, 30_000)   # only in a duplicate: never stored
        self.exe = blob(5, 20_000)            # in a quarantined message: never stored
        self.big = blob(6, 6 * MIB + 12345)   # multipart on S3
        self.too_large = blob(7, 7 * MIB)     # over max_bytes
        self.xml = "<invoice><total>12=2C50 =E2=82=AC</total></invoice>".encode()
        self.xml_decoded = "<invoice><total>12,50 \u20ac</total></invoice>".encode()
        messages = [
            message("a1@vendor.example", "invoice 1", [part("a.pdf", "application/pdf", self.pdf_a),
                                                       part("a.xml", "application/xml", self.xml, "quoted-printable")]),
            message("a2@vendor.example", "invoice 2", [part("again.pdf", "application/pdf", self.pdf_a),
                                                       part("c.pdf", "application/pdf", self.pdf_c)]),
            message("a1@vendor.example", "invoice 1", [part("dup.pdf", "application/pdf", self.pdf_dup_only)]),
            message("a3@vendor.example", "tool", [part("invoice.exe", "application/octet-stream", self.exe)]),
            message("a4@vendor.example", "scan", [part("big.pdf", "application/pdf", self.big)]),
            message("a5@vendor.example", "huge scan", [part("huge.pdf", "application/pdf", self.too_large)]),
        ]
        self.dump = os.path.join(directory, "dump.mbox")
        with open(self.dump, "w", newline="") as f:
            for m in messages:
                f.write("From billing@vendor.example Mon May  4 10:00:00 2026\n" + m + "\n")
        self.stored = {hashlib.sha256(b).hexdigest(): b
                       for b in (self.pdf_a, self.pdf_c, self.big, self.xml_decoded)}
        self.never = {hashlib.sha256(b).hexdigest() for b in (self.pdf_dup_only, self.exe)}
        self.too_large_sha = hashlib.sha256(self.too_large).hexdigest()
        self.corpus = [os.path.join(CORPUS, p) for p in CORPUS_FILES if os.path.isfile(os.path.join(CORPUS, p))]
        # Python's email package is the independent oracle for the corpus messages' attachments.
        self.corpus_sha = set()
        for path in self.corpus:
            with open(path, "rb") as f:
                parsed = email.message_from_binary_file(f, policy=email.policy.default)
            for attachment in parsed.iter_attachments():
                payload = attachment.get_payload(decode=True) or b""
                self.corpus_sha.add(hashlib.sha256(payload).hexdigest())


class AttachmentReplayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="mailrail-attachments-")
        cls.fx = Fixture(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def replay(self, name, attachments_toml):
        data_dir = os.path.join(self.dir, name)
        config = os.path.join(self.dir, name + ".toml")
        with open(config, "w") as f:
            f.write(attachments_toml)
        out = os.path.join(self.dir, name + ".jsonl")
        stats = os.path.join(self.dir, name + ".stats.json")
        run = subprocess.run([BIN, "replay", self.fx.dump, *self.fx.corpus, "--sink", "jsonl:" + out,
                              "--data-dir", data_dir, "--attachments-config", config, "--fresh",
                              "--stats-json", stats], capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        with open(out) as f:
            records = [json.loads(line) for line in f]
        with open(stats) as f:
            samples = json.load(f)
        return data_dir, records, samples, run

    def stat(self, samples, name, **labels):
        value = samples.get(name)
        self.assertIsNotNone(value, f"no sample {name}")
        if not isinstance(value, list):
            return value
        for entry in value:
            if all(entry.get(k) == v for k, v in labels.items()):
                return entry["value"]
        self.fail(f"no sample {name} {labels}")

    def check_records(self, records, reference):
        """Every attachment of every forwarded record names its object, or says why not."""
        by_sha = {}
        subjects = {r["subject"] for r in records}
        self.assertNotIn("tool", subjects)  # quarantined by the .exe rule
        self.assertEqual(sum(1 for r in records if r["subject"] == "invoice 1"), 1)  # the duplicate was dropped
        for r in records:
            for a in r["attachments"]:
                if a["sha256"] == self.fx.too_large_sha:
                    self.assertEqual(a.get("not_stored"), "too_large")
                    self.assertNotIn("stored", a)
                    continue
                self.assertEqual(a.get("stored"), reference(a["sha256"]), a)
                by_sha[a["sha256"]] = a
        for sha in self.fx.stored:
            self.assertIn(sha, by_sha)
        if self.fx.corpus:
            self.assertTrue(self.fx.corpus_sha & set(by_sha), "no corpus attachment was stored")
        return by_sha

    def test_disk_store(self):
        toml = '[attachments]\nstore = "disk"\nmax_bytes = 6815744\n'
        data_dir, records, samples, run = self.replay("disk", toml)
        by_sha = self.check_records(records, lambda sha: "sha256:" + sha)
        root = os.path.join(data_dir, "attachments")
        files = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(dirpath, name), "rb") as f:
                    content = f.read()
                self.assertEqual(hashlib.sha256(content).hexdigest(), name, "content does not match its address")
                self.assertEqual(dirpath, os.path.join(root, name[:2], name[2:4]))
                files[name] = content
        self.assertEqual(set(files), set(by_sha))  # one file per distinct attachment, nothing else
        for sha, content in self.fx.stored.items():
            self.assertEqual(files[sha], content)
        for sha in self.fx.never | {self.fx.too_large_sha}:
            self.assertNotIn(sha, files)
        self.assertIn("attachments:", run.stdout)
        self.assertEqual(self.stat(samples, "attachments_not_stored", reason="too_large"), 1)
        # a.pdf is in two forwarded messages and was written once.
        self.assertEqual(self.stat(samples, "attachment_objects_stored", store="disk"), len(files))

    def test_disk_store_after_sigkill_restores_every_reference(self):
        """Kill the replay mid-way; the resumed run re-stores what the WAL re-feeds (idempotent)."""
        count = 1500
        dump = os.path.join(self.dir, "crash.mbox")
        blobs = {}
        with open(dump, "w", newline="") as f:
            for i in range(count):
                data = blob(1000 + i, 8000)  # all distinct: finding one on disk means it was re-fed
                blobs[hashlib.sha256(data).hexdigest()] = data
                f.write("From billing@vendor.example Mon May  4 10:00:00 2026\n" +
                        message(f"crash{i}@vendor.example", f"crash {i}", [part("d.pdf", "application/pdf", data)]) +
                        "\n")
        data_dir = os.path.join(self.dir, "crash")
        config = os.path.join(self.dir, "crash.toml")
        with open(config, "w") as f:
            f.write('[attachments]\nstore = "disk"\n')
        out = os.path.join(self.dir, "crash.jsonl")
        root = os.path.join(data_dir, "attachments")
        cmd = [BIN, "replay", dump, "--sink", "jsonl:" + out, "--data-dir", data_dir, "--attachments-config", config]

        def stored_files():
            return sum(len(names) for _, _, names in os.walk(root))

        proc = subprocess.Popen(cmd + ["--rate", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while stored_files() < 300 and proc.poll() is None:
            self.assertLess(time.monotonic(), deadline, "no attachments were stored")
            time.sleep(0.01)
        self.assertIsNone(proc.poll(), "the replay finished before it could be killed")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stats = os.path.join(self.dir, "crash.stats.json")
        run = subprocess.run(cmd + ["--stats-json", stats], capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        with open(stats) as f:
            samples = json.load(f)
        # The re-fed messages found their objects on disk instead of writing them again.
        self.assertIn("recovered from the WAL", run.stdout)
        self.assertGreater(self.stat(samples, "attachment_objects_deduplicated", store="disk", found="on_disk"), 0)
        seen = set()
        with open(out) as f:
            for line in f:
                r = json.loads(line)
                seen.add(r["message_id"])
                (a,) = r["attachments"]
                self.assertEqual(a["stored"], "sha256:" + a["sha256"])
        self.assertEqual(seen, {f"crash{i}@vendor.example" for i in range(count)})
        files = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                self.assertNotIn(".tmp.", name)
                with open(os.path.join(dirpath, name), "rb") as f:
                    files[name] = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(set(files), set(blobs))
        for name, digest in files.items():
            self.assertEqual(name, digest)

    def test_bad_attachment_config_names_file_line_and_key_without_the_secret(self):
        config = os.path.join(self.dir, "bad.toml")
        with open(config, "w") as f:
            f.write('[attachments]\nstore = "s3"\nbudget_mib = 10\n[attachments.s3]\nendpoint = "127.0.0.1:9"\n'
                    'bucket = "mail"\naccess_key_id = "AKID"\nsecret_access_key = "s3cr3t-value"\n'
                    'secret_file = "also.secret"\npart_size_mib = 1\nbogus = 1\n')
        run = subprocess.run([BIN, "replay", self.fx.dump, "--sink", "jsonl:" + os.path.join(self.dir, "bad.jsonl"),
                              "--data-dir", os.path.join(self.dir, "bad"), "--attachments-config", config, "--fresh"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 2, run.stderr)
        for expected in (config + ":3: attachments.budget_mib: applies to the disk store only",
                         config + ":5: attachments.s3.endpoint: must be an http:// or https:// URL",
                         "attachments.s3.secret_access_key: give exactly one of secret_access_key and secret_file",
                         config + ":10: attachments.s3.part_size_mib: must be between 5 and 5120",
                         config + ":11: attachments.s3.bogus: unknown key"):
            self.assertIn(expected, run.stderr)
        self.assertNotIn("s3cr3t-value", run.stderr)

    def start_double(self, name, *flags):
        data = os.path.join(self.dir, name + "-bucket")
        log = os.path.join(self.dir, name + "-requests.jsonl")
        port_file = os.path.join(self.dir, name + ".port")
        proc = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "s3_double.py"), "--port-file", port_file,
                                 "--data", data, "--log", log, "--secret-key", SECRET, *flags])
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            self.assertIsNone(proc.poll(), "the S3 double exited")
            self.assertLess(time.monotonic(), deadline, "the S3 double did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            return int(f.read()), data, log

    def s3_toml(self, port, secret=SECRET):
        return ('[attachments]\nstore = "s3"\nmax_bytes = 6815744\n[attachments.s3]\n'
                f'endpoint = "http://127.0.0.1:{port}"\nbucket = "mail"\nprefix = "att/"\n'
                f'access_key_id = "AKIDMAILRAILTEST"\nsecret_access_key = "{secret}"\n'
                'multipart_threshold_mib = 5\npart_size_mib = 5\nmax_attempts = 6\n')

    @staticmethod
    def requests(log):
        with open(log) as f:
            return [json.loads(line) for line in f]

    def test_s3_store_with_faults_multipart_and_dedup_across_runs(self):
        port, bucket_dir, log = self.start_double("s3", "--slowdown-every", "4", "--error-in-complete", "1")
        _, records, samples, _ = self.replay("s3", self.s3_toml(port))
        by_sha = self.check_records(records, lambda sha: "s3://mail/att/" + sha)
        objects = {}
        for name in os.listdir(os.path.join(bucket_dir, "mail", "att")):
            with open(os.path.join(bucket_dir, "mail", "att", name), "rb") as f:
                objects[name] = f.read()
            self.assertEqual(hashlib.sha256(objects[name]).hexdigest(), name)
        self.assertEqual(set(objects), set(by_sha))
        for sha in self.fx.never:
            self.assertNotIn(sha, objects)
        reqs = self.requests(log)
        self.assertGreater(sum(1 for r in reqs if r["status"] == 503 and r.get("code") == "SlowDown"), 0)
        self.assertFalse([r for r in reqs if r["status"] == 403], "a request failed its signature check")
        big_key = "/mail/att/" + hashlib.sha256(self.fx.big).hexdigest()
        done = [r for r in reqs if r["op"] == "CompleteMultipartUpload" and r["status"] == 200 and "parts" in r]
        self.assertEqual(len(done), 1)
        self.assertTrue(done[0]["path"].startswith(big_key))
        self.assertEqual(done[0]["parts"], 2)
        self.assertTrue([r for r in reqs if r["op"] == "CompleteMultipartUpload" and r.get("code") == "InternalError"])
        puts = [r["path"] for r in reqs if r["op"] == "PutObject" and r["status"] == 200]
        self.assertEqual(len(puts), len(set(puts)), "an object was uploaded twice")
        self.assertGreater(self.stat(samples, "s3_retries"), 0)

        # A second run (new data directory, same bucket) finds every object with HEAD.
        before = len(reqs)
        _, records, _, _ = self.replay("s3-again", self.s3_toml(port))
        self.check_records(records, lambda sha: "s3://mail/att/" + sha)
        again = self.requests(log)[before:]
        self.assertFalse([r for r in again if r["op"] in ("PutObject", "UploadPart") and r["status"] == 200])
        self.assertTrue([r for r in again if r["op"] == "HeadObject" and r["status"] == 200])

    def test_s3_wrong_secret_is_a_clear_error_and_messages_still_flow(self):
        port, _, _ = self.start_double("s3-bad")
        wrong = "not-the-secret-" + "x" * 8
        _, records, samples, run = self.replay("s3-bad", self.s3_toml(port, secret=wrong))
        self.assertEqual(len(records), 2 + 1 + 1 + len(self.fx.corpus))  # every forwarded message arrived
        reasons = {a.get("not_stored") for r in records for a in r["attachments"]}
        self.assertIn("store_error", reasons)
        self.assertIn("SignatureDoesNotMatch", run.stderr)
        self.assertNotIn(wrong, run.stderr + run.stdout)
        self.assertGreater(self.stat(samples, "attachments_not_stored", reason="store_error"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
