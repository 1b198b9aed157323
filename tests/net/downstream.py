#!/usr/bin/env python3
"""A local MS4-style test downstream for the forward client tests and the forward benchmark.

Listens on 127.0.0.1 (ephemeral port, printed as the first stdout line: "PORT <n>") and serves:
  POST /batch-metadata   answers per the fault plan (FIFO), then 200 {"accepted": n}
  POST /_control/plan    JSON list of actions appended to the plan:
                           {"status": 500}                       plain error status
                           {"status": 429, "retry_after": "1"}   with a Retry-After header
                           {"reset": true}                       close the socket without answering
                           {"sleep": 2.0}                        answer 200 after sleeping (timeouts)
                           {"sleep": 0.2, "status": 200}         slow success
  GET  /_control/received JSON: every attempt in arrival order with batch_id, idempotency key,
                          item LSNs and message ids, the answer given and the arrival time
                          (monotonic seconds)
  GET  /_control/acked    JSON: sorted unique LSNs acknowledged with 2xx
Idempotency: a batch whose Idempotency-Key was already acknowledged is answered 200 again and
not counted twice. --quiet skips recording item LSNs (benchmarks).
"""
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
PLAN = []
RECEIVED = []
ACKED_KEYS = set()
ACKED_LSNS = set()
QUIET = "--quiet" in sys.argv
COUNTS = {"batches": 0, "items": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    def _reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/_control/received":
            with LOCK:
                data = json.dumps(RECEIVED).encode()
            return self._reply(200, data, {"Content-Type": "application/json"})
        if self.path == "/_control/acked":
            with LOCK:
                data = json.dumps({"lsns": sorted(ACKED_LSNS), "batches": COUNTS["batches"],
                                   "items": COUNTS["items"]}).encode()
            return self._reply(200, data, {"Content-Type": "application/json"})
        self._reply(404)

    def do_POST(self):
        body = self._body()
        if self.path == "/_control/plan":
            with LOCK:
                PLAN.extend(json.loads(body))
            return self._reply(204)
        if self.path != "/batch-metadata":
            return self._reply(404)
        key = self.headers.get("Idempotency-Key", "")
        with LOCK:
            action = PLAN.pop(0) if PLAN else {}
        if QUIET:
            lsns, message_ids, batch_id, count = [], [], "", body.count(b'"lsn":')
        else:
            batch = json.loads(body)
            batch_id = batch["batch_id"]
            lsns = [item["lsn"] for item in batch["items"]]
            message_ids = [item.get("message_id") for item in batch["items"]]
            count = len(lsns)
        entry = {"batch_id": batch_id, "key": key, "lsns": lsns, "message_ids": message_ids, "at": time.monotonic(),
                 "content_type": self.headers.get("Content-Type", "")}
        if action.get("reset"):
            entry["answer"] = "reset"
            with LOCK:
                RECEIVED.append(entry)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if "sleep" in action:
            time.sleep(action["sleep"])
        status = action.get("status", 200)
        entry["answer"] = status
        with LOCK:
            if not QUIET:
                RECEIVED.append(entry)
            if 200 <= status < 300 and key not in ACKED_KEYS:
                ACKED_KEYS.add(key)
                ACKED_LSNS.update(lsns)
                COUNTS["batches"] += 1
                COUNTS["items"] += count
        headers = {"Content-Type": "application/json"}
        if "retry_after" in action:
            headers["Retry-After"] = action["retry_after"]
        answer = {"accepted": count} if 200 <= status < 300 else {"error": f"injected {status}"}
        self._reply(status, json.dumps(answer).encode(), headers)


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # injected resets make the handler's final flush fail; that is the point


def main():
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
