#!/usr/bin/env python3
"""Hundreds of IMAP mailboxes from the daemon's one event loop under a per-server connection limit,
against a real Dovecot: 300 users with 3 messages each, max_connections_per_server = 50. Every
message must arrive exactly once within the deadline, and the number of concurrent sessions stays at
or below the limit both as Dovecot counts them (`doveadm who`, sampled while the daemon works) and
as the source counts its own slots (imap_connections_peak).

    imap_scale_test.py MAILRAIL_BIN
"""
import os
import sys
import threading
import time
import unittest

import dovecot
from dovecot import Daemon, Dovecot, DovecotDaemonTestCase, PASSWORD, ids, message

dovecot.BIN[0] = sys.argv.pop(1)
USERS = 300
PER_USER = 3
LIMIT = 50


class ImapScaleTest(DovecotDaemonTestCase):
    tmp_prefix = "mailrail-imap-scale-"

    def test_300_mailboxes_through_50_connections(self):
        users = [f"user{i:03d}" for i in range(USERS)]
        # Enough login and mail processes for the limit and the turnover (a login process serves one
        # connection); the daemon's own fd limit is far above 50 connections.
        dv = self.serve(Dovecot(self.tmp, users, extra_conf="default_process_limit = 400\n"
                                                              "default_client_limit = 4000"))
        for user in users:
            dv.seed_maildir(user, [message(user, i) for i in range(PER_USER)])
        dv.start()
        mailboxes = [{"name": u, "host": "127.0.0.1", "port": dv.port, "tls": "none", "user": u,
                      "password": PASSWORD} for u in users]
        peak = [0]
        stop = threading.Event()

        def sample():  # Dovecot's view, as often as doveadm answers
            while not stop.is_set():
                peak[0] = max(peak[0], dv.sessions())

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        d = self.daemon = Daemon(self.tmp, mailboxes,
                                 imap_extra=f"max_connections_per_server = {LIMIT}\npoll_interval_ms = 600000")
        sampler.start()
        expected = [i for u in users for i in ids(u, PER_USER)]
        got = d.wait_ids(expected, timeout=90)
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join(timeout=20)
        self.assertEqual(len(got), len(expected), "a message arrived twice")
        stats = d.stats()
        self.assertEqual(stats["imap_messages"], USERS * PER_USER)
        self.assertLessEqual(stats["imap_connections_peak"], LIMIT)
        self.assertEqual(stats["imap_connections_peak"], LIMIT, "the limit was never reached: not tested")
        self.assertGreater(peak[0], 0, "doveadm who never saw a session")
        self.assertLessEqual(peak[0], LIMIT, f"Dovecot saw {peak[0]} sessions at once")
        print(f"imap scale: {USERS} mailboxes x {PER_USER} messages in {elapsed:.1f} s, "
              f"peak sessions seen by Dovecot {peak[0]}, by the source {stats['imap_connections_peak']}",
              file=sys.stderr)
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("imap_scale_test: Dovecot's mail processes switch users: run as root")
        sys.exit(1)
    unittest.main(verbosity=2)
