#!/usr/bin/env python3
"""The sync-job API of `mailrail run` (/api/v1/email-sync/...) against a real Dovecot.

Mailboxes are configured with `backfill = "on_request"` in a separate mailboxes file (credentials
from a password file) and synchronised only when a job starts: backfill with a months window,
status polled until completed with counts compared to what Dovecot holds and what the sink got,
409/404/400/401 answers, history order and limit, stats, a scheduled incremental job that picks up
new mail, SIGKILL during a backfill and the same job resuming after the restart. The password must
never appear in the log, the answers or the stats. Every wait is bounded.

    sync_jobs_test.py MAILRAIL_BIN
"""
import json
import os
import sys
import time
import unittest

import dovecot
from dovecot import Daemon, Dovecot, DovecotDaemonTestCase, PASSWORD, free_port, ids, message, wait_until

dovecot.BIN[0] = sys.argv.pop(1)
TOKEN = "sync-test-token"


class SyncJobsTest(DovecotDaemonTestCase):
    tmp_prefix = "mailrail-sync-"

    def setUp(self):
        super().setUp()
        self.answers = []  # every API answer, checked for the secret at the end

    def tearDown(self):
        super().tearDown()
        self.assertNotIn(PASSWORD, json.dumps(self.answers), "the password leaked into an API answer")

    def api(self, method, path, token=None):
        status, body = self.daemon.api(method, path, token)
        self.answers.append(body)
        return status, body

    def status_when(self, user, predicate, timeout, what):
        def check():
            status, body = self.api("GET", f"/api/v1/email-sync/status/{user}")
            return body if status == 200 and predicate(body) else None
        try:
            return wait_until(check, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; last status {self.api('GET', f'/api/v1/email-sync/status/{user}')}; "
                                 f"log: {''.join(self.daemon.log[-15:])}") from None

    def write_mailboxes(self, mailboxes):
        secret = os.path.join(self.tmp, "imap.password")
        with open(secret, "w") as f:
            f.write(PASSWORD + "\n")
        path = os.path.join(self.tmp, "mailboxes.toml")
        with open(path, "w") as f:
            for mb in mailboxes:
                f.write("[[imap.mailbox]]\n")
                for k, v in {**mb, "password_file": secret}.items():
                    f.write(f"{k} = {json.dumps(v)}\n")
        os.chmod(path, 0o600)
        return path

    def test_jobs_api_backfill_incremental_and_resume_after_sigkill(self):
        dv = self.serve(Dovecot(self.tmp, ["alice", "bob", "dave"]))
        dv.start()
        dv.append("alice", "INBOX", [message("alice", i) for i in range(30)])
        dv.append("alice", "INBOX", [message("alice-old", i) for i in range(3)], date=time.time() - 400 * 86400)
        dv.append("alice", "Archive", [message("alice-arch", i) for i in range(5)])
        dv.append("bob", "INBOX", [message("bob", i) for i in range(10)])
        big = 3000
        dv.seed_maildir("dave", [message("dave", i) for i in range(big)])
        plain = {"host": "127.0.0.1", "port": dv.port, "tls": "none", "backfill": "on_request",
                 "idle": False}  # new mail arrives only through scheduled incremental jobs
        mailboxes = self.write_mailboxes([
            {**plain, "name": "alice", "user_id": "user-alice", "user": "alice", "folders": ["INBOX", "Archive"]},
            {**plain, "name": "bob", "user_id": "user-bob", "user": "bob"},
            {**plain, "name": "dave", "user_id": "user-dave", "user": "dave"},
            # Nothing listens there: its job stays pending (connection refused, retried).
            {**plain, "name": "carol", "user_id": "user-carol", "user": "carol", "port": free_port()}])
        d = self.daemon = Daemon(
            self.tmp, [], token=TOKEN,
            imap_extra=f'mailboxes_file = "{mailboxes}"\npoll_interval_ms = 600000\nfetch_batch = 10\n'
                       f'pipeline_depth = 1',
            # At most 32 messages in the pipeline and WAL commits up to 5 ms apart: dave's backfill
            # takes about half a second, long enough to be interrupted by the SIGKILL below.
            extra="[sync]\nincremental_interval_s = 3\n[limits]\nin_flight_messages = 32", wal_linger_us=5000)

        # Nothing is fetched before a job asks for it.
        self.assertEqual(d.stats()["imap_connects"], 0)
        self.assertEqual(self.api("GET", "/api/v1/email-sync/status/user-alice")[0], 404)  # no job yet
        self.assertEqual(self.api("GET", "/api/v1/email-sync/status/nobody")[0], 404)
        self.assertEqual(self.api("POST", "/api/v1/email-sync/start/nobody?months=6")[0], 404)
        self.assertEqual(self.api("POST", "/api/v1/email-sync/start/user-alice?months=0")[0], 400)
        self.assertEqual(self.api("POST", "/api/v1/email-sync/start/user-alice?months=x")[0], 400)
        self.assertEqual(self.api("POST", "/api/v1/email-sync/start/user-alice", token="wrong")[0], 401)
        self.assertEqual(self.api("GET", "/api/v1/email-sync/stats", token="")[0], 401)

        # A running job refuses a second start (409).
        status, started = self.api("POST", "/api/v1/email-sync/start/user-carol?months=1")
        self.assertEqual(status, 200, started)
        status, conflict = self.api("POST", "/api/v1/email-sync/start/user-carol?months=1")
        self.assertEqual(status, 409, conflict)
        self.assertEqual(conflict["job_id"], started["task_id"])
        self.assertEqual(self.api("GET", "/api/v1/email-sync/status/user-carol")[1]["status"], "pending")

        # Backfill of alice: the seed's answer shape, then completed with Dovecot's counts.
        status, started = self.api("POST", "/api/v1/email-sync/start/user-alice?months=6")
        self.assertEqual(status, 200, started)
        self.assertEqual(set(started), {"message", "task_id", "user_id", "months"})
        self.assertEqual((started["message"], started["user_id"], started["months"]),
                         ("Email sync started", "user-alice", 6))
        done = self.status_when("user-alice", lambda b: b["status"] == "completed", 30, "alice's backfill")
        self.assertEqual(done["job_id"], started["task_id"])
        self.assertEqual(set(["job_id", "status", "progress", "total_emails", "processed_emails",
                              "parsed_transactions", "failed_emails"]) - set(done), set())
        self.assertEqual((done["total_emails"], done["processed_emails"], done["parsed_transactions"],
                          done["failed_emails"], done["progress"]), (35, 35, 35, 0, 100.0))
        expected = ids("alice", 30) + ids("alice-arch", 5)
        got = d.wait_ids(expected)
        for i in expected:
            self.assertEqual(got.count(i), 1, i)
        self.assertFalse(set(ids("alice-old", 3)) & set(got), "a message outside the window was fetched")
        self.assertEqual(len(got), 35)

        # Bob, a second user, meanwhile.
        status, bob_job = self.api("POST", "/api/v1/email-sync/start/user-bob")  # months defaults to 6
        self.assertEqual((status, bob_job["months"]), (200, 6))
        self.status_when("user-bob", lambda b: b["status"] == "completed" and b["total_emails"] == 10, 30,
                         "bob's backfill")

        # A scheduled incremental job (every 3 s here) picks up mail that arrived after the backfill.
        dv.append("alice", "INBOX", [message("alice-new", i) for i in range(4)])
        incremental = self.status_when(
            "user-alice", lambda b: b["job_id"] != started["task_id"] and b["status"] == "completed"
            and b["total_emails"] == 4, 30, "an incremental job that found the 4 new messages")
        self.assertEqual((incremental["processed_emails"], incremental["parsed_transactions"]), (4, 4))
        d.wait_ids(ids("alice-new", 4))

        # History: newest first, with the limit; the first job is the backfill.
        status, history = self.api("GET", "/api/v1/email-sync/history/user-alice?limit=50")
        self.assertEqual(status, 200)
        jobs = history["jobs"]
        self.assertGreaterEqual(len(jobs), 2)
        self.assertEqual([j["created_at"] for j in jobs], sorted((j["created_at"] for j in jobs), reverse=True))
        self.assertEqual((jobs[-1]["job_id"], jobs[-1]["kind"]), (started["task_id"], "backfill"))
        self.assertTrue(all(j["kind"] == "incremental" for j in jobs[:-1]))
        self.assertIn(incremental["job_id"], [j["job_id"] for j in jobs])
        status, one = self.api("GET", "/api/v1/email-sync/history/user-alice?limit=1")
        self.assertEqual(len(one["jobs"]), 1)
        self.assertEqual(one["jobs"][0]["job_id"], jobs[0]["job_id"])

        # Stats add up over every job.
        status, stats = self.api("GET", "/api/v1/email-sync/stats")
        self.assertEqual(status, 200)
        self.assertEqual(sum(stats["by_status"].values()), stats["total_jobs"])
        self.assertGreaterEqual(stats["by_status"]["completed"], 3)
        self.assertGreaterEqual(stats["by_status"]["pending"], 1)  # carol, and an incremental job just created
        self.assertGreaterEqual(stats["total_emails"], 35 + 10 + 4)

        # SIGKILL during dave's backfill, restart: the same job resumes and completes, nothing missing.
        status, dave_job = self.api("POST", "/api/v1/email-sync/start/user-dave?months=6")
        self.assertEqual(status, 200)
        wait_until(lambda: len(d.message_ids()) >= 35 + 10 + 4 + 200, 60, "part of dave's backfill in the sink")
        d.kill()
        interrupted = len([i for i in d.message_ids() if i.startswith("dave-")])
        self.assertLess(interrupted, big, "the backfill finished before the kill: the test did not interrupt it")
        d.start()
        resumed = d.wait_for("sync_job_resumed", user_id="user-dave")
        self.assertEqual(resumed["job_id"], dave_job["task_id"])
        done = self.status_when("user-dave", lambda b: b["status"] == "completed", 90, "dave's resumed backfill")
        self.assertEqual(done["job_id"], dave_job["task_id"])
        self.assertEqual((done["total_emails"], done["processed_emails"], done["failed_emails"]), (big, big, 0))
        self.assertEqual(done["parsed_transactions"], big)
        d.wait_ids(ids("dave", big), timeout=60)
        # Only one backfill job for dave: the restart resumed it rather than starting another.
        dave_history = self.api("GET", "/api/v1/email-sync/history/user-dave")[1]["jobs"]
        self.assertEqual([j["job_id"] for j in dave_history if j["kind"] == "backfill"], [dave_job["task_id"]])
        # The secret stays out of the stats socket too.
        self.assertNotIn(PASSWORD, json.dumps(d.stats()))
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("sync_jobs_test: Dovecot's mail processes switch users: run as root")
        sys.exit(1)
    unittest.main(verbosity=2)
