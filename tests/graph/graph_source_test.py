#!/usr/bin/env python3
"""The Graph source of `mailrail run` against the Graph double (graph_double.py), which each test
starts in-process on a free loopback port: backfill of two mailboxes with several folders, new mail
found by change notification, by a lifecycle "missed" and by schedule, token expiry, 429/503/500
storms, 410 syncStateNotFound, SIGKILL mid-backfill, and a sync job (/api/v1/email-sync) for a
Graph mailbox. Every check is on what arrived at the JSONL
sink (message ids, exactly once after dedup), on the stats socket, the checkpoint, and on the
double's request log (concurrency and Retry-After kept). Every wait is bounded.

    graph_source_test.py MAILRAIL_BIN CORPUS_DIR
"""
import os
import sys
import time
import unittest

from graph_double import (CLIENT_ID, CLIENT_SECRET, GraphDouble, change_notification, lifecycle_notification,
                          post_notifications)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from mailrail_daemon import (DaemonTestCase, MailrailDaemon, checkpoint_rows, run_config,  # noqa: E402
                             wait_until, write_config)

BIN = sys.argv.pop(1)
CORPUS = sys.argv.pop(1)
CLIENT_STATE = "graph-client-state-for-tests"


class Daemon(MailrailDaemon):
    def __init__(self, tmp, double, mailboxes, graph_extra=""):
        super().__init__(BIN, os.path.join(tmp, "mailrail.toml"), os.path.join(tmp, "stats.sock"),
                         os.path.join(tmp, "data", "records.jsonl"))
        self.checkpoint_path = os.path.join(tmp, "data", "graph.checkpoint")
        secret_file = os.path.join(tmp, "graph.secret")
        with open(secret_file, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        write_config(self.config, tmp, self.stats_path, f'[http]\nport = 0\ngraph_client_state = "{CLIENT_STATE}"',
                     "graph", f'base_url = "{double.base_url}"\ntoken_url = "{double.token_url}"\n'
                     f'client_id = "{CLIENT_ID}"\nclient_secret_file = "{secret_file}"\n'
                     f'backoff_base_ms = 50\nbackoff_max_ms = 400\n{graph_extra}', mailboxes)
        self.start()

    def checkpoint(self):
        return {key: link for key, link in checkpoint_rows(self.checkpoint_path)}

    def webhook(self):
        return f"http://{self.http}/webhook/graph"


class GraphSourceTest(DaemonTestCase):
    tmp_prefix = "mailrail-graph-"

    def secrets(self):
        return [CLIENT_SECRET] + [token for g in self.servers for token in g.tokens]

    def assert_limits_kept(self, users, concurrency=4):
        g = self.double
        self.assertEqual(g.violations, {"concurrency": 0, "rate": 0}, "the double had to refuse requests")
        for user in users:
            self.assertLessEqual(g.max_concurrency_seen(user), concurrency, f"{user}: too many requests at once")
            self.assertEqual(g.retry_after_violations(user), [], f"{user}: requests sent during Retry-After")

    def test_backfill_two_mailboxes_then_notifications_and_lifecycle(self):
        g = self.double = self.serve(GraphDouble(corpus_dir=CORPUS, latency=0.01).start())
        expected = g.add_messages("alice", "inbox", "alice-inbox", 120)
        expected += g.add_messages("alice", "archive", "alice-archive", 30, attachments=True)
        expected += g.add_messages("bob@corp.example", "inbox", "bob-inbox", 80)
        # Older than the 6-month window (receivedDateTime): must not be fetched.
        old = g.add_messages("alice", "inbox", "alice-old", 5, received=time.time() - 400 * 86400)
        d = self.daemon = Daemon(self.tmp, g, [
            {"user_id": "alice", "folders": ["inbox", "archive"], "months": 6},
            {"user_id": "bob@corp.example", "name": "bob", "months": 6}],
            graph_extra="page_size = 7\nfetch_attachments = true\npoll_interval_ms = 600000")

        got = d.wait_ids(expected)
        caught_up = set()
        while caught_up != {"alice/inbox", "alice/archive", "bob/inbox"}:
            e = d.wait_for("graph_caught_up")
            caught_up.add(f'{e["mailbox"]}/{e["folder"]}')
        self.assert_once(got, expected)
        self.assertFalse(set(old) & set(got), "messages outside the backfill window were fetched")
        stats = d.stats()
        self.assertEqual(stats["graph_messages"], 230)
        self.assertEqual(stats["graph_pages"], 18 + 5 + 12)  # ceil(120/7), ceil(30/7), ceil(80/7)
        self.assertEqual(stats["graph_token_refreshes"], 1)
        archive = [r for r in d.records() if r["message_id"].startswith("alice-archive")]
        self.assertTrue(all(r.get("has_attachments") for r in archive), archive[:1])
        # The checkpoint holds each folder's deltaLink once everything is durable.
        wait_until(lambda: all("$deltatoken=" in d.checkpoint().get(k, "")
                               for k in ("alice/inbox", "alice/archive", "bob/inbox")), 10, "delta links in the checkpoint")
        self.assert_limits_kept(["alice", "bob@corp.example"])
        # POST /polling/trigger: an incremental round in every folder; nothing new, nothing fetched.
        deltas = sum(e["kind"] == "delta" for e in g.log)
        status, answer = d.trigger_polling()
        self.assertEqual((status, answer["graph_folders"]), (202, 3))
        wait_until(lambda: sum(e["kind"] == "delta" and e["end"] is not None for e in g.log) == deltas + 3, 10,
                   "one delta request per folder")
        self.assertTrue(all("$deltatoken=" in e["path"] for e in g.log[-3:]), g.log[-3:])
        self.assertEqual(d.stats()["graph_messages"], 230)

        # New mail and a change notification: the mailbox runs a delta round and gets it.
        live = g.add_messages("bob@corp.example", "inbox", "bob-live", 3)
        bob_id = g.folders[("bob@corp.example", "inbox")][-1].id
        self.assertEqual(post_notifications(d.webhook(), [change_notification("bob@corp.example", bob_id, CLIENT_STATE)]),
                         202)
        self.assert_once(d.wait_ids(expected + live), expected + live)
        # New mail whose notification Graph dropped; then a lifecycle "missed": a round of every
        # mailbox of that subscription (learned from the change notification above).
        dropped = g.add_messages("bob@corp.example", "inbox", "bob-dropped", 2)
        self.assertEqual(post_notifications(d.webhook(), [lifecycle_notification("missed", CLIENT_STATE)]), 202)
        expected += live + dropped
        self.assert_once(d.wait_ids(expected), expected)
        stats = d.stats()
        self.assertEqual(stats["graph_notification_syncs"], 1)
        self.assertEqual(stats["graph_lifecycle_syncs"], 1)
        self.assertEqual(stats["graph_messages"], 235, "a round fetched more than the new mail")
        # A notification for a mailbox the source does not have stays a durable fetch request in
        # quarantine, as without a Graph source.
        self.assertEqual(post_notifications(d.webhook(), [change_notification("carol", "X1", CLIENT_STATE)]), 202)
        wait_until(lambda: d.outcomes().get("quarantined_unparseable", 0) == 1, 10, "the unknown mailbox's notification")
        self.assert_limits_kept(["alice", "bob@corp.example"])
        self.assertEqual(d.stop(), 0)

    def test_token_expiry_throttling_storms_schedule_and_410(self):
        # The double allows 20 requests per 2 s; the daemon is configured for 18 (arrival jitter).
        g = self.double = self.serve(GraphDouble(corpus_dir=CORPUS, latency=0.005, rate=20,
                                                 rate_window=2.0).start())
        expected = g.add_messages("alice", "inbox", "storm", 60)
        # Storms at the start: 503 and 429 with Retry-After, then 500s (backoff, no Retry-After).
        g.inject("alice", 503, 3, retry_after=1)
        g.inject("alice", 429, 2, retry_after=1)
        g.inject("alice", 500, 2)
        d = self.daemon = Daemon(self.tmp, g, [{"user_id": "alice"}],
                                 graph_extra="page_size = 4\npoll_interval_ms = 300\nrate_requests = 18\n"
                                             "rate_window_ms = 2000")
        # The first token lives an hour, so nothing refreshes it before it is revoked mid-run: the
        # requests in flight and the next one get 401, then one refresh, and the rest go on.
        wait_until(lambda: d.stats().get("graph_messages", 0) >= 20, 30, "the first pages")
        g.token_ttl = 3
        g.expire_tokens()
        # (The backfill may be complete by now: then the next scheduled round meets the 401.)
        wait_until(lambda: any(e["status"] == 401 for e in g.log), 10, "a request refused for the revoked token")
        self.assert_once(d.wait_ids(expected, timeout=60), expected)
        stats = d.stats()
        self.assertEqual(stats["graph_throttled"], 5)
        self.assertGreaterEqual(stats["graph_retries"], 7)
        # The new token lives 3 s: it is renewed at 80% of that, before it expires, so no request
        # is refused again (at most the 4 in flight at the revocation were).
        wait_until(lambda: d.stats()["graph_token_refreshes"] >= 3, 10, "a refresh before expiry")
        self.assertLessEqual(sum(e["status"] == 401 for e in g.log), 4)
        self.assert_limits_kept(["alice"])
        # The scheduled rounds (every 300 ms) keep asking, within the rate limit; new mail is found.
        later = g.add_messages("alice", "inbox", "scheduled", 3)
        self.assert_once(d.wait_ids(expected + later), expected + later)

        # The sync state is lost on the server: 410 syncStateNotFound, the folder restarts from
        # scratch, dedup drops the repeats, the sink still has each message once.
        g.invalidate_sync_state("alice", "inbox")
        after = g.add_messages("alice", "inbox", "after-410", 4)
        d.wait_for("graph_delta_restart", timeout=30, mailbox="alice", folder="inbox")
        expected += later + after
        self.assert_once(d.wait_ids(expected, timeout=60), expected)
        wait_until(lambda: d.outcomes().get("duplicate", 0) >= 63, 60, "the refetched messages counted as duplicates")
        self.assertEqual(d.stats()["graph_delta_restarts"], 1)
        self.assert_once(d.message_ids(), expected)
        self.assert_limits_kept(["alice"])
        self.assertEqual(d.stop(), 0)

    def test_sigkill_mid_backfill_loses_nothing_raw_mime(self):
        g = self.double = self.serve(GraphDouble(corpus_dir=CORPUS, latency=0.01).start())
        expected = g.add_messages("alice", "inbox", "kill", 400)
        d = self.daemon = Daemon(self.tmp, g, [{"user_id": "alice"}],
                                 graph_extra="page_size = 10\nraw_mime = true\nmax_pages_ahead = 2")
        # Kill once part of the folder is durable and checkpointed, the rest not yet fetched.
        wait_until(lambda: "$skiptoken=" in d.checkpoint().get("alice/inbox", ""), 30, "a mid-round checkpoint")
        d.kill()
        before = set(d.message_ids())
        self.assertLess(len(before), 400, "the backfill finished before the kill; nothing was tested")
        start = len(g.log)
        d.start()
        d.wait_ids(expected, timeout=60)
        # At-least-once into the JSONL sink: a record written but not yet past the forward
        # checkpoint at the kill is written again after the restart, with its original LSN. What
        # the Graph source fetched twice got a second LSN and dedup dropped it: one LSN per id.
        lsns = {}
        for r in d.records():
            lsns.setdefault(r["message_id"], set()).add(r["lsn"])
        self.assertEqual({i: v for i, v in lsns.items() if len(v) > 1}, {}, "a message passed dedup twice")
        # The restart resumed from the stored link (not from scratch) and refetched less than all.
        first_delta = next(e for e in g.log[start:] if e["kind"] == "delta")
        self.assertIn("$skiptoken=", first_delta["path"])
        self.assertLess(d.stats()["graph_messages"], 400)
        # Every $value answered 200, but for requests the SIGKILL cut off before their answer.
        self.assertTrue(all(e["kind"] != "value" or e["status"] == 200 or e.get("client_gone") for e in g.log),
                        [e for e in g.log if e["kind"] == "value" and e["status"] != 200][:5])
        self.assert_limits_kept(["alice"])
        # The $value fetches did run 4 at a time: the limit above was reached, not just never approached.
        self.assertEqual(g.max_concurrency_seen("alice"), 4)
        self.assertEqual(d.stop(), 0)

    def test_sync_job_for_a_graph_mailbox(self):
        """The sync-job API serves Graph mailboxes (here read from a mailboxes_file): a backfill job
        restarts the mailbox's delta from scratch and completes with the double's counts."""
        g = self.double = self.serve(GraphDouble(corpus_dir=CORPUS, latency=0.005).start())
        expected = g.add_messages("alice", "inbox", "job-inbox", 25)
        expected += g.add_messages("alice", "archive", "job-archive", 9)
        g.add_messages("alice", "inbox", "job-old", 4, received=time.time() - 400 * 86400)
        mailboxes = os.path.join(self.tmp, "graph-mailboxes.toml")
        with open(mailboxes, "w") as f:
            f.write('[[graph.mailbox]]\nuser_id = "alice"\nname = "alice-box"\nfolders = ["inbox", "archive"]\n')
        d = self.daemon = Daemon(self.tmp, g, [], graph_extra=f'page_size = 7\npoll_interval_ms = 600000\n'
                                                              f'mailboxes_file = "{mailboxes}"')
        self.assertEqual(d.api("POST", "/api/v1/email-sync/start/nobody?months=6")[0], 404)
        self.assertEqual(d.api("GET", "/api/v1/email-sync/status/alice")[0], 404)  # no job yet
        status, started = d.api("POST", "/api/v1/email-sync/start/alice?months=6")
        self.assertEqual(status, 200, started)
        self.assertEqual((started["user_id"], started["months"]), ("alice", 6))

        def completed():
            status, body = d.api("GET", "/api/v1/email-sync/status/alice")
            return body if status == 200 and body["status"] == "completed" else None
        done = wait_until(completed, 30, "the Graph backfill job to complete")
        self.assertEqual(done["job_id"], started["task_id"])
        # Found = the double's messages in the 6-month window, each durable and settled downstream.
        self.assertEqual((done["total_emails"], done["processed_emails"], done["parsed_transactions"],
                          done["failed_emails"], done["progress"]), (34, 34, 34, 0, 100.0))
        got = d.wait_ids(expected)
        self.assert_once(got, expected)  # the start-up round and the job's round: dedup keeps one
        self.assertFalse([i for i in got if i.startswith("job-old")], "a message outside the window was fetched")
        self.assertEqual(d.stats()["graph_delta_restarts"], 2)  # one per folder: the backfill from scratch
        status, stats = d.api("GET", "/api/v1/email-sync/stats")
        self.assertEqual(status, 200, stats)
        self.assertEqual(d.stop(), 0)

    def test_bad_config_and_bad_credentials(self):
        g = self.double = self.serve(GraphDouble(corpus_dir=CORPUS).start())
        bad = os.path.join(self.tmp, "bad.toml")
        out = run_config(BIN, bad, f'data_dir = "{self.tmp}/data"\n[graph]\nclient_id = "x"\n'
                                   f'client_secret = "{CLIENT_SECRET}"\ntenant = "t"\npage_sise = 5\n'
                                   f'[[graph.mailbox]]\nfolders = []\n')
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(f"{bad}:6: graph.page_sise: unknown key", out.stderr)
        self.assertIn(f"{bad}:7: graph.mailbox[0].user_id: is required", out.stderr)
        self.assertIn("graph.mailbox[0].folders: must be a non-empty array", out.stderr)
        self.assertNotIn(CLIENT_SECRET, out.stderr)
        # A sync job drives one source: a user_id in IMAP and Graph mailboxes is refused.
        out = run_config(BIN, bad, f'data_dir = "{self.tmp}/data"\n[imap]\n[[imap.mailbox]]\nhost = "127.0.0.1"\n'
                                   f'user = "a"\npassword = "p"\nuser_id = "alice"\n[graph]\nclient_id = "x"\n'
                                   f'client_secret = "s"\ntenant = "t"\n[[graph.mailbox]]\nuser_id = "alice"\n')
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(f"{bad}:13: graph.mailbox[0].user_id: 'alice' is also the user_id of IMAP mailbox 'a@127.0.0.1'",
                      out.stderr)
        # A wrong secret: the token request fails, is logged without the secret, and retried.
        g.add_messages("alice", "inbox", "never", 1)
        d = self.daemon = Daemon(self.tmp, g, [{"user_id": "alice"}])
        with open(d.config) as f:
            text = f.read()
        d.kill()
        with open(d.config, "w") as f:
            f.write(text.replace(f'client_secret_file = "{self.tmp}/graph.secret"', 'client_secret = "wrong-secret"'))
        d.start()
        failed = d.wait_for("graph_token_failed")
        self.assertIn("401 invalid_client", failed["error"])
        d.wait_for("graph_token_failed")  # retried
        self.assertNotIn("wrong-secret", "".join(d.log))
        self.assertEqual(d.stats()["graph_token_errors"] >= 2, True)
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
