#!/usr/bin/env python3
"""httpx client for the net tests: keep-alive, chunked upload (generator body), JSON.

usage: httpx_client.py PORT [CA_FILE]   (CA_FILE: use https with that certificate authority)
"""
import sys

import httpx


def main() -> int:
    port = int(sys.argv[1])
    ca = sys.argv[2] if len(sys.argv) > 2 else None
    base = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
    with httpx.Client(base_url=base, verify=ca if ca else True, http2=False, timeout=10) as client:
        for i in range(5):
            r = client.post("/echo", content=f"body-{i}".encode())
            assert r.status_code == 200, r
            assert r.text == f"body-{i}", r.text

        def chunks():
            for i in range(20):
                yield (f"chunk{i:02d};" * 100).encode()

        r = client.post("/echo", content=chunks())
        assert r.status_code == 200, r
        assert r.headers["x-body-bytes"] == str(20 * 8 * 100), r.headers
        r = client.get("/missing")
        assert r.status_code == 404, r
        # One pooled connection served everything.
        pool = client._transport._pool
        assert len(pool.connections) == 1, pool.connections
    print("httpx ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
