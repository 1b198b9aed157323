#!/usr/bin/env python3
"""`mailrail dlq list` and `mailrail dlq redrive` against the test downstream.

usage: dlq_cli_test.py MAILRAIL_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def letter(first, last, status):
    items = [{"lsn": lsn, "message_id": f"m{lsn}@x"} for lsn in range(first, last + 1)]
    batch_id = f"lsn-{first}-{last}"
    return {"batch_id": batch_id, "idempotency_key": f"mailrail-{batch_id}", "first_lsn": first,
            "last_lsn": last, "records": len(items), "status": status, "error": "",
            "response_body": "{\"error\":\"bad\"}", "dead_lettered_at_ms": 1763891234000,
            "batch": {"batch_id": batch_id, "items": items}}


def main():
    mailrail = sys.argv[1]
    with tempfile.TemporaryDirectory() as data:
        os.makedirs(f"{data}/dlq")
        with open(f"{data}/dlq/dead-letters.jsonl", "w") as f:
            f.write(json.dumps(letter(1, 3, 400)) + "\n")
            f.write(json.dumps(letter(4, 5, 500)) + "\n")
            f.write('{"batch_id": "torn')  # a crash mid-append
        out = subprocess.run([mailrail, "dlq", "--data-dir", data, "list"], capture_output=True, text=True,
                             timeout=20)
        assert out.returncode == 0, out
        assert "lsn-1-3" in out.stdout and "pending" in out.stdout, out.stdout
        assert "2 dead-lettered batches, 2 pending redrive, 1 torn lines skipped" in out.stdout, out.stdout

        downstream = subprocess.Popen([sys.executable, f"{HERE}/downstream.py"], stdout=subprocess.PIPE, text=True)
        try:
            port = int(downstream.stdout.readline().split()[1])
            url = f"http://127.0.0.1:{port}"
            out = subprocess.run([mailrail, "dlq", "--data-dir", data, "redrive", "--url", url, "--batch", "lsn-4-5"],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0 and "redriven 1 of 1 batches" in out.stdout, out
            out = subprocess.run([mailrail, "dlq", "--data-dir", data, "redrive", "--url", url],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0 and "redriven 1 of 1 batches" in out.stdout, out
            acked = json.load(urllib.request.urlopen(f"{url}/_control/acked", timeout=5))
            assert acked["lsns"] == [1, 2, 3, 4, 5], acked
            received = json.load(urllib.request.urlopen(f"{url}/_control/received", timeout=5))
            assert sorted(r["key"] for r in received) == ["mailrail-lsn-1-3", "mailrail-lsn-4-5"], received
        finally:
            downstream.terminate()
            downstream.wait(timeout=10)
        out = subprocess.run([mailrail, "dlq", "--data-dir", data, "list", "--json"], capture_output=True, text=True,
                             timeout=20)
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["redriven"] for r in rows] == [True, True], rows
    print("dlq cli ok")


if __name__ == "__main__":
    main()
