#!/usr/bin/python3
"""A small S3-compatible server for mailrail's tests (standard library only).

Why a double and not s3rver: s3rver (npm) accepts any signature and needs Node and a registry
download at set-up; this double checks every AWS Signature Version 4 header signature with its own
implementation (written from the AWS documentation, independent of mailrail's C++ one), so a wrong
signature fails the test, and it can inject the faults S3 really produces.

Supported: path-style HEAD/GET/PUT Object, CreateMultipartUpload (POST ?uploads), UploadPart
(PUT ?partNumber&uploadId), CompleteMultipartUpload (POST ?uploadId), AbortMultipartUpload
(DELETE ?uploadId). Errors as S3 sends them: XML <Error><Code>...</Code></Error> with
SignatureDoesNotMatch / InvalidAccessKeyId / RequestTimeTooSkewed (403),
XAmzContentSHA256Mismatch (400), NoSuchBucket / NoSuchKey / NoSuchUpload (404), InvalidPart
and EntityTooSmall (400, parts but the last must be >= 5 MiB), SlowDown (503).

Faults: --slowdown-every K answers every K-th request with 503 SlowDown (before any effect);
--error-in-complete N answers the first N CompleteMultipartUpload calls with 200 and an
<Error> body (S3 documents that it may). Objects are written to --data/<bucket>/<key>; every
request is logged as one JSON line to --log. The chosen port is written to --port-file.
"""
import argparse
import datetime
import hashlib
import hmac
import http.server
import json
import os
import threading
import urllib.parse
import uuid

MIN_PART = 5 * 1024 * 1024


def aws_encode(text, keep_slash):
    safe = "-_.~" + ("/" if keep_slash else "")
    return urllib.parse.quote(text, safe=safe)


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.count = 0
        self.uploads = {}  # upload id -> {key, parts: {n: (etag, bytes)}}
        self.complete_errors_left = args.error_in_complete
        self.log = open(args.log, "a", buffering=1) if args.log else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "s3-double"

    def log_message(self, *a):
        pass

    # --- plumbing -----------------------------------------------------------------------------
    def answer(self, status, body=b"", headers=None, op="", extra=None):
        st = self.server.state
        if st.log:
            entry = {"method": self.command, "path": self.path, "op": op, "status": status}
            entry.update(extra or {})
            st.log.write(json.dumps(entry) + "\n")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", str((extra or {}).get("length", 0)))
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, code, message, op):
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s</Code><Message>%s</Message>"
                "<RequestId>%s</RequestId></Error>" % (code, message, uuid.uuid4().hex)).encode()
        self.answer(status, body, {"Content-Type": "application/xml"}, op, {"code": code})

    def do_HEAD(self):
        self.dispatch()

    def do_GET(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    # --- SigV4 verification -------------------------------------------------------------------
    def check_signature(self, body):
        """None when the request is signed correctly, else (status, code, message)."""
        args = self.server.state.args
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return (403, "AccessDenied", "missing AWS4-HMAC-SHA256 authorization")
        fields = {}
        for part in auth[len("AWS4-HMAC-SHA256 "):].split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value
        try:
            access_key, date, region, service, terminal = fields["Credential"].split("/")
            signed_headers = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            return (400, "AuthorizationHeaderMalformed", "malformed authorization header")
        if access_key != args.access_key:
            return (403, "InvalidAccessKeyId", "The AWS access key Id you provided does not exist in our records.")
        if region != args.region or service != "s3" or terminal != "aws4_request":
            return (400, "AuthorizationHeaderMalformed", "wrong region or service in the credential scope")
        amz_date = self.headers.get("x-amz-date", "")
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            return (403, "AccessDenied", "missing or malformed x-amz-date")
        if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900:
            return (403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
        for required in ("host", "x-amz-date", "x-amz-content-sha256"):
            if required not in signed_headers:
                return (403, "AccessDenied", "header %s must be signed" % required)
        payload_hash = self.headers.get("x-amz-content-sha256", "")
        if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
            return (400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
        path, _, raw_query = self.path.partition("?")
        pairs = []
        for item in raw_query.split("&") if raw_query else []:
            name, _, value = item.partition("=")
            pairs.append((aws_encode(urllib.parse.unquote(name), False), aws_encode(urllib.parse.unquote(value), False)))
        pairs.sort()
        canonical_headers = ""
        for name in signed_headers:
            value = self.headers.get(name)
            if value is None:
                return (403, "AccessDenied", "signed header %s is missing" % name)
            canonical_headers += "%s:%s\n" % (name, " ".join(value.strip().split()))
        canonical = "\n".join([self.command, aws_encode(urllib.parse.unquote(path), True),
                               "&".join("%s=%s" % p for p in pairs), canonical_headers,
                               ";".join(signed_headers), payload_hash])
        scope = "%s/%s/s3/aws4_request" % (date, region)
        to_sign = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
        key = hmac_sha256(("AWS4" + args.secret_key).encode(), date)
        key = hmac_sha256(key, region)
        key = hmac_sha256(key, "s3")
        key = hmac_sha256(key, "aws4_request")
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return (403, "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided.")
        return None

    # --- S3 operations ------------------------------------------------------------------------
    def dispatch(self):
        st = self.server.state
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, raw_query = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        segments = urllib.parse.unquote(path).lstrip("/").split("/", 1)
        bucket, key = segments[0], (segments[1] if len(segments) > 1 else "")
        op = self.operation(query)
        with st.lock:
            st.count += 1
            slowdown = st.args.slowdown_every and st.count % st.args.slowdown_every == 0
        if slowdown:
            return self.error(503, "SlowDown", "Please reduce your request rate.", op)
        problem = self.check_signature(body)
        if problem:
            return self.error(problem[0], problem[1], problem[2], op)
        if bucket != st.args.bucket:
            return self.error(404, "NoSuchBucket", "The specified bucket does not exist", op)
        if not key:
            return self.error(400, "InvalidRequest", "bucket operations are not supported by this double", op)
        object_path = os.path.join(st.args.data, bucket, key)
        if op == "HeadObject" or op == "GetObject":
            if not os.path.isfile(object_path):
                return self.error(404, "NoSuchKey", "The specified key does not exist.", op)
            with open(object_path, "rb") as f:
                data = f.read()
            headers = {"ETag": '"%s"' % hashlib.md5(data).hexdigest(), "Content-Type": "application/octet-stream"}
            return self.answer(200, data, headers, op, {"length": len(data)})
        if op == "PutObject":
            self.write_object(object_path, body)
            return self.answer(200, b"", {"ETag": '"%s"' % hashlib.md5(body).hexdigest()}, op, {"bytes": len(body)})
        if op == "CreateMultipartUpload":
            upload_id = uuid.uuid4().hex
            with st.lock:
                st.uploads[upload_id] = {"key": key, "parts": {}}
            xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><Bucket>%s</Bucket>"
                   "<Key>%s</Key><UploadId>%s</UploadId></InitiateMultipartUploadResult>" % (bucket, key, upload_id))
            return self.answer(200, xml.encode(), {"Content-Type": "application/xml"}, op)
        upload = st.uploads.get(query.get("uploadId", ""))
        if upload is None or upload["key"] != key:
            return self.error(404, "NoSuchUpload", "The specified upload does not exist.", op)
        if op == "UploadPart":
            number = int(query["partNumber"])
            etag = '"%s"' % hashlib.md5(body).hexdigest()
            with st.lock:
                upload["parts"][number] = (etag, body)
            return self.answer(200, b"", {"ETag": etag}, op, {"part": number, "bytes": len(body)})
        if op == "AbortMultipartUpload":
            with st.lock:
                st.uploads.pop(query["uploadId"], None)
            return self.answer(204, b"", {}, op)
        if op == "CompleteMultipartUpload":
            with st.lock:
                inject = st.complete_errors_left > 0
                if inject:
                    st.complete_errors_left -= 1
            if inject:
                xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code></Error>"
                return self.answer(200, xml, {"Content-Type": "application/xml"}, op, {"code": "InternalError"})
            text = body.decode()
            listed = []
            for chunk in text.split("<Part>")[1:]:
                number = int(chunk.split("<PartNumber>")[1].split("</PartNumber>")[0])
                etag = chunk.split("<ETag>")[1].split("</ETag>")[0]
                listed.append((number, etag))
            if not listed or [n for n, _ in listed] != sorted(n for n, _ in listed):
                return self.error(400, "InvalidPartOrder", "The list of parts was not in ascending order.", op)
            data = b""
            for i, (number, etag) in enumerate(listed):
                part = upload["parts"].get(number)
                if part is None or part[0] != etag:
                    return self.error(400, "InvalidPart", "One or more of the specified parts could not be found.", op)
                if i + 1 < len(listed) and len(part[1]) < MIN_PART:
                    return self.error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.", op)
                data += part[1]
            self.write_object(object_path, data)
            with st.lock:
                st.uploads.pop(query["uploadId"], None)
            xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult><Bucket>%s</Bucket>"
                   "<Key>%s</Key><ETag>\"%s-%d\"</ETag></CompleteMultipartUploadResult>"
                   % (bucket, key, hashlib.md5(data).hexdigest(), len(listed)))
            return self.answer(200, xml.encode(), {"Content-Type": "application/xml"}, op,
                               {"parts": len(listed), "bytes": len(data)})
        return self.error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.", op)

    def operation(self, query):
        m = self.command
        if m == "HEAD":
            return "HeadObject"
        if m == "GET":
            return "GetObject"
        if m == "PUT":
            return "UploadPart" if "uploadId" in query else "PutObject"
        if m == "POST":
            return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        return m

    def write_object(self, path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = path + ".part-" + uuid.uuid4().hex
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--log", default="")
    p.add_argument("--bucket", default="mail")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--access-key", default="AKIDMAILRAILTEST")
    p.add_argument("--secret-key", default="mailrail/test+secret/KEY")
    p.add_argument("--slowdown-every", type=int, default=0)
    p.add_argument("--error-in-complete", type=int, default=0)
    args = p.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.state = State(args)
    temp = args.port_file + ".tmp"
    with open(temp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(temp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
