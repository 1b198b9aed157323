#!/usr/bin/env python3
"""A local stand-in for Microsoft Graph's mail API and the Azure AD token endpoint, for the tests
and the benchmark of mailrail's Graph source (Python standard library only).

It behaves like the real service where mailrail depends on it:
- POST /{tenant}/oauth2/v2.0/token (client credentials): an access token that expires after
  `token_ttl` seconds; wrong credentials get 401 {"error":"invalid_client"}. A Graph request with
  an expired or unknown token gets 401 InvalidAuthenticationToken.
- GET /v1.0/users/{user}/mailFolders/{folder}/messages/delta: real paging. The first page of a
  round comes from the initial query ($select, $filter=receivedDateTime ge T); `Prefer:
  odata.maxpagesize=N` sets the page size (default 10); every page but the last carries an
  @odata.nextLink with a $skiptoken, the last an @odata.deltaLink with a $deltatoken that returns
  what was added or removed after the round started. Invalidated or unknown tokens get
  410 syncStateNotFound.
- GET /v1.0/users/{user}/messages/{id}/$value (raw MIME) and /attachments.
- Limits per mailbox: more than `max_concurrency` requests at once, or more than `rate` requests
  per `rate_window` seconds, get 429 with Retry-After (and are counted as violations); injected
  faults (`inject`) answer 503/429 with Retry-After, or 500, for the next N requests of a mailbox.
- Every Graph request is recorded (mailbox, kind, arrival and end times, status), so a test can
  check the concurrency and Retry-After pauses the client kept.
- post_notifications() sends change or lifecycle notifications to a webhook, like Graph does.

Run as a script for the benchmark: graph_double.py --messages N [--mailboxes M] prints
"port=P" once listening and serves until SIGTERM.
"""
import argparse
import base64
import collections
import copy
import datetime
import email.utils
import itertools
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CORPUS_MESSAGE = os.path.join("msgraph-docs", "api-reference", "v1.0", "api", "message-get",
                              "example1-get-message.response.json")
CLIENT_ID = "mailrail-test-client"
CLIENT_SECRET = "s3cr3t-graph-client-secret-never-logged"


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def template_message(corpus_dir):
    """The Graph message resource from the corpus (msgraph-docs), or a minimal one without it."""
    path = os.path.join(corpus_dir or "", CORPUS_MESSAGE)
    if corpus_dir and os.path.exists(path):
        with open(path) as f:
            message = json.load(f)
        message.pop("@odata.context", None)
        return message
    return {"subject": "", "body": {"contentType": "text", "content": "hello"},
            "from": {"emailAddress": {"name": "Adele Vance", "address": "adelev@contoso.example"}},
            "toRecipients": [{"emailAddress": {"name": "Alex Wilber", "address": "alexw@contoso.example"}}]}


class Message:
    def __init__(self, resource, seq, attachments=()):
        self.resource = resource  # the full Graph message resource (dict)
        self.id = resource["id"]
        self.seq = seq
        self.received = parse_iso(resource["receivedDateTime"])
        self.attachments = list(attachments)
        self.removed_seq = None
        self._selected = {}

    def selected(self, select):
        """The resource with only the $select fields (plus id), serialised once per select list."""
        key = tuple(select) if select else None
        if key not in self._selected:
            r = self.resource if not select else {k: v for k, v in self.resource.items() if k in select or k == "id"}
            self._selected[key] = json.dumps(r, separators=(",", ":"))
        return self._selected[key]

    def mime(self):
        r = self.resource
        sender = r["from"]["emailAddress"]
        to = ", ".join(f'{x["emailAddress"]["name"]} <{x["emailAddress"]["address"]}>' for x in r.get("toRecipients", []))
        date = email.utils.formatdate(self.received, usegmt=True)
        body = r["body"]["content"].replace("\r\n", "\n").replace("\n", "\r\n")
        ctype = "text/html" if r["body"]["contentType"] == "html" else "text/plain"
        return (f'From: {sender["name"]} <{sender["address"]}>\r\nTo: {to}\r\nSubject: {r["subject"]}\r\n'
                f'Date: {date}\r\nMessage-ID: {r["internetMessageId"]}\r\nMIME-Version: 1.0\r\n'
                f'Content-Type: {ctype}; charset=utf-8\r\n\r\n{body}\r\n').encode()


class GraphDouble:
    def __init__(self, corpus_dir=None, token_ttl=3600, page_size_default=10, max_concurrency=4,
                 rate=10000, rate_window=600.0, latency=0.0, tenant="test-tenant"):
        self.template = template_message(corpus_dir)
        self.token_ttl = token_ttl
        self.page_size_default = page_size_default
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.rate_window = rate_window
        self.latency = latency
        self.tenant = tenant
        self.lock = threading.Lock()
        self.folders = {}      # (user, folder) -> [Message]
        self.by_id = {}        # (user, id) -> Message
        self.seq = itertools.count(1)
        self.epochs = {}       # (user, folder) -> int; bumping it invalidates that folder's tokens
        self.sync_tokens = {}  # token -> state
        self.tokens = {}       # access token -> expiry (monotonic)
        self.in_flight = {}    # user -> requests being served
        self.recent = {}       # user -> deque of arrival times within the rate window
        self.faults = {}       # user -> [(status, retry_after)]
        self.log = []          # dicts: user, kind, start, end, status, retry_after, path [, client_gone]
        self.violations = {"concurrency": 0, "rate": 0}
        self.token_requests = 0
        self.server = None

    # -- content ------------------------------------------------------------------------------
    def add_messages(self, user, folder, tag, count, received=None, attachments=False):
        """Adds `count` messages; returns their internetMessageIds without angle brackets."""
        ids = []
        with self.lock:
            box = self.folders.setdefault((user, folder), [])
            self.epochs.setdefault((user, folder), 0)
            for i in range(count):
                seq = next(self.seq)
                r = copy.deepcopy(self.template)
                r["id"] = base64.urlsafe_b64encode(f"{user}/{folder}/{tag}/{i}/{seq}".encode()).decode()
                r["internetMessageId"] = f"<{tag}-{i}@graph.test>"
                r["subject"] = f"{tag} {i}"
                r["receivedDateTime"] = iso(received if received is not None else time.time() - 3600)
                r["sentDateTime"] = r["receivedDateTime"]
                r["hasAttachments"] = attachments
                files = []
                if attachments:
                    files = [{"@odata.type": "#microsoft.graph.fileAttachment", "id": f"att-{seq}",
                              "name": f"{tag}-{i}.txt", "contentType": "text/plain", "size": 11,
                              "isInline": False, "contentBytes": base64.b64encode(b"hello world").decode()}]
                m = Message(r, seq, files)
                box.append(m)
                self.by_id[(user, m.id)] = m
                ids.append(f"{tag}-{i}@graph.test")
        return ids

    def remove_message(self, user, folder, message_id):
        with self.lock:
            for m in self.folders[(user, folder)]:
                if m.id == message_id and m.removed_seq is None:
                    m.removed_seq = next(self.seq)

    def invalidate_sync_state(self, user, folder):
        """Every delta or skip token of the folder becomes stale: the next use gets 410."""
        with self.lock:
            self.epochs[(user, folder)] += 1

    def inject(self, user, status, count, retry_after=None):
        """The next `count` Graph requests of `user` are answered with `status` (and Retry-After)."""
        with self.lock:
            self.faults.setdefault(user, []).extend([(status, retry_after)] * count)

    def expire_tokens(self):
        with self.lock:
            for t in self.tokens:
                self.tokens[t] = 0

    # -- server -------------------------------------------------------------------------------
    def start(self, port=0):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def do_POST(self):
                double.handle(self, "POST")

            def do_GET(self):
                double.handle(self, "GET")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client is part of the tests
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1.0"
        self.token_url = f"http://127.0.0.1:{self.port}/{self.tenant}/oauth2/v2.0/token"
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def reply(self, h, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else body.encode()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def error(self, h, status, code, message, headers=()):
        self.reply(h, status, json.dumps({"error": {"code": code, "message": message}}), headers=headers)

    def handle(self, h, method):
        url = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if method == "POST" and url.path == f"/{self.tenant}/oauth2/v2.0/token":
            return self.handle_token(h, body)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
        if method != "GET" or len(parts) < 3 or parts[0] != "v1.0" or parts[1] != "users":
            return self.error(h, 404, "ResourceNotFound", "no such resource")
        user = parts[2]
        rest = parts[3:]
        kind = ("delta" if rest[-1:] == ["delta"] else "value" if rest[-1:] == ["$value"]
                else "attachments" if rest[-1:] == ["attachments"] else "other")
        start = time.monotonic()
        entry = {"user": user, "kind": kind, "start": start, "end": None, "status": None, "retry_after": None,
                 "path": h.path}
        with self.lock:
            self.log.append(entry)
            active = self.in_flight.get(user, 0)
            self.in_flight[user] = active + 1
            recent = self.recent.setdefault(user, collections.deque())
            while recent and recent[0] <= start - self.rate_window:
                recent.popleft()
            recent.append(start)
            over_rate = len(recent) > self.rate
            fault = self.faults[user].pop(0) if self.faults.get(user) else None
            expiry = self.tokens.get(h.headers.get("Authorization", "")[len("Bearer "):])
        status = None  # stays None when the client hangs up before the answer is sent (a killed daemon)
        try:
            if self.latency:
                time.sleep(self.latency)  # service time of the simulated server, not a synchronisation
            if expiry is None or expiry < time.monotonic():
                status = 401
                self.error(h, 401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            elif active >= self.max_concurrency:
                with self.lock:
                    self.violations["concurrency"] += 1
                status, entry["retry_after"] = 429, 1
                self.error(h, 429, "ApplicationThrottled", "MailboxConcurrency limit exceeded", [("Retry-After", "1")])
            elif over_rate:
                with self.lock:
                    self.violations["rate"] += 1
                status, entry["retry_after"] = 429, 1
                self.error(h, 429, "ApplicationThrottled", "Application is over its request limit", [("Retry-After", "1")])
            elif fault is not None:
                status, retry_after = fault
                entry["retry_after"] = retry_after
                headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
                self.error(h, status, "ServiceUnavailable" if status == 503 else "TooManyRequests" if status == 429
                           else "InternalServerError", "injected fault", headers)
            else:
                status = self.serve(h, user, rest, url)
        except (BrokenPipeError, ConnectionResetError):
            entry["client_gone"] = True
        finally:
            with self.lock:
                self.in_flight[user] -= 1
                entry["end"] = time.monotonic()
                entry["status"] = status

    def handle_token(self, h, body):
        form = urllib.parse.parse_qs(body.decode())
        with self.lock:
            self.token_requests += 1
        if (form.get("grant_type") != ["client_credentials"] or form.get("client_id") != [CLIENT_ID]
                or form.get("client_secret") != [CLIENT_SECRET]
                or form.get("scope") != ["https://graph.microsoft.com/.default"]):
            return self.reply(h, 401, json.dumps({"error": "invalid_client",
                                                  "error_description": "AADSTS7000215: Invalid client secret."}))
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
        self.reply(h, 200, json.dumps({"token_type": "Bearer", "expires_in": self.token_ttl,
                                       "ext_expires_in": self.token_ttl, "access_token": token}))

    def serve(self, h, user, rest, url):
        if len(rest) == 4 and rest[0] == "mailFolders" and rest[2:] == ["messages", "delta"]:
            return self.serve_delta(h, user, rest[1], url)
        if len(rest) == 3 and rest[0] == "messages" and rest[2] in ("$value", "attachments"):
            with self.lock:
                m = self.by_id.get((user, rest[1]))
            if m is None or m.removed_seq is not None:
                self.error(h, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
                return 404
            if rest[2] == "$value":
                self.reply(h, 200, m.mime(), "text/plain")
            else:
                self.reply(h, 200, json.dumps({"value": m.attachments}))
            return 200
        self.error(h, 400, "BadRequest", "Unsupported request")
        return 400

    def serve_delta(self, h, user, folder, url):
        query = urllib.parse.parse_qs(url.query)
        prefer = h.headers.get("Prefer", "")
        size = self.page_size_default
        for p in prefer.split(","):
            if p.strip().startswith("odata.maxpagesize="):
                size = max(1, int(p.strip().split("=", 1)[1]))
        key = (user, folder)
        with self.lock:
            if key not in self.folders:
                self.error(h, 404, "ErrorInvalidIdMalformed", "no such folder")
                return 404
            token = (query.get("$skiptoken") or query.get("$deltatoken") or [None])[0]
            if token is not None:
                state = self.sync_tokens.get(token)
                if state is None or state["epoch"] != self.epochs[key] or state["key"] != key:
                    self.error(h, 410, "syncStateNotFound", "The sync state generation is not valid.")
                    return 410
                if "$deltatoken" in query:  # a new round: what changed after the previous one began
                    state = self.new_round(key, state["select"], state["since"], state["watermark"])
            else:
                select = query.get("$select", [""])[0].split(",") if "$select" in query else []
                since = None
                if "$filter" in query:
                    f = query["$filter"][0].split()
                    if len(f) != 3 or f[0] != "receivedDateTime" or f[1] != "ge":
                        self.error(h, 400, "ErrorInvalidUrlQueryFilter", "unsupported $filter")
                        return 400
                    since = parse_iso(f[2])
                state = self.new_round(key, select, since, 0)
            page, rest = state["items"][:size], state["items"][size:]
            values = []
            for m, removed in page:
                values.append(json.dumps({"id": m.id, "@removed": {"reason": "deleted"}}) if removed
                              else m.selected(state["select"]))
            nxt = dict(state, items=rest)
            token = secrets.token_urlsafe(12)
            self.sync_tokens[token] = nxt
            base = f"{self.base_url}/users/{urllib.parse.quote(user)}/mailFolders/{urllib.parse.quote(folder)}/messages/delta"
            link = (f'"@odata.nextLink":"{base}?$skiptoken={token}"' if rest
                    else f'"@odata.deltaLink":"{base}?$deltatoken={token}"')
        self.reply(h, 200, '{"@odata.context":"double",' + link + ',"value":[' + ",".join(values) + "]}")
        return 200

    def new_round(self, key, select, since, after_seq):
        box = self.folders[key]
        items = []
        for m in box:
            if m.removed_seq is not None:
                if after_seq and m.seq <= after_seq < m.removed_seq:
                    items.append((m, True))
                continue
            if m.seq > after_seq and (since is None or m.received >= since):
                items.append((m, False))
        return {"key": key, "epoch": self.epochs[key], "select": select, "since": since, "items": items,
                "watermark": max([after_seq] + [m.seq for m in box] + [m.removed_seq or 0 for m in box])}

    # -- checks for the tests -----------------------------------------------------------------
    def max_concurrency_seen(self, user):
        """The largest number of the user's requests the server was serving at one moment."""
        with self.lock:
            entries = [e for e in self.log if e["user"] == user and e["end"] is not None]
        events = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries])
        peak = current = 0
        for _, d in events:
            current += d
            peak = max(peak, current)
        return peak

    def retry_after_violations(self, user, grace=0.05):
        """Requests of `user` that arrived while a Retry-After the server had sent was running."""
        with self.lock:
            entries = sorted((e for e in self.log if e["user"] == user and e["end"] is not None), key=lambda e: e["start"])
        bad = []
        for e in entries:
            if e["retry_after"] is None:
                continue
            pause_end = e["end"] + e["retry_after"]
            bad += [x for x in entries if e["end"] + grace < x["start"] < pause_end - grace]
        return bad


def post_notifications(webhook_url, notifications, timeout=10):
    """POSTs a Graph notification collection; returns the HTTP status."""
    request = urllib.request.Request(webhook_url, data=json.dumps({"value": notifications}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.status


def change_notification(user, message_id, client_state, subscription="sub-1"):
    return {"subscriptionId": subscription, "subscriptionExpirationDateTime": iso(time.time() + 3600),
            "clientState": client_state, "changeType": "created", "tenantId": "test-tenant",
            "resource": f"Users/{user}/Messages/{message_id}",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": f"Users/{user}/Messages/{message_id}",
                             "id": message_id}}


def lifecycle_notification(event, client_state, subscription="sub-1"):
    return {"subscriptionId": subscription, "subscriptionExpirationDateTime": iso(time.time() + 3600),
            "tenantId": "test-tenant", "clientState": client_state, "lifecycleEvent": event}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per mailbox")
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    double = GraphDouble(corpus_dir=args.corpus, rate=10**9, max_concurrency=10**6)
    for b in range(args.mailboxes):
        double.add_messages(f"user{b}", "inbox", f"bench{b}", args.messages)
    double.start(args.port)
    print(f"port={double.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    double.stop()
    print(json.dumps({"requests": len(double.log), "token_requests": double.token_requests}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
