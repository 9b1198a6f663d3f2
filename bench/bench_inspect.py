#!/usr/bin/env python3
"""What the request inspector's recorder costs per exchange, without sockets.

One `ConnectionRecorder` fed the bytes of a kept-alive connection as the relay hands them over: per
exchange one ``request`` call (a GET head as pierce's server forwards it) and one ``response`` call (an
nginx ``200`` head with ``Content-Length`` and the page), each a memoryview of a buffer, as the socket
copy loop passes them. Reported: microseconds of CPU per exchange, the best of ``--repeat`` runs of
``--exchanges`` each, for the recorder as it runs (``fast``: heads read by the fast path) and with the
fast path off (``llhttp``: every message through the llhttp parser, the fallback).

Usage: ``python3 bench/bench_inspect.py [--exchanges 20000] [--repeat 5] [--page-size 612] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pierce.inspect import record
from pierce.inspect.record import ConnectionRecorder, RequestLog

REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: inspect.bench.example\r\nX-Forwarded-For: 127.0.0.1\r\n"
    b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: inspect.bench.example\r\nX-Real-IP: 127.0.0.1\r\n\r\n"
)


def response(page_size: int) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 06 Jan 2025 10:00:00 GMT\r\n"
        b"Content-Type: text/html\r\nContent-Length: %d\r\nLast-Modified: Mon, 06 Jan 2025 09:00:00 GMT\r\n"
        b'Connection: keep-alive\r\nETag: "677b9b10-264"\r\nAccept-Ranges: bytes\r\n\r\n' % page_size
    )
    return head + b"x" * page_size


def run(exchanges: int, page_size: int, *, fast: bool) -> float:
    """Seconds of CPU for ``exchanges`` request/response pairs on one connection."""
    log = RequestLog(50)
    rec = ConnectionRecorder(log, remote="127.0.0.1:40000", body_limit=4096, fast_path=fast)
    req, resp = memoryview(bytearray(REQUEST)), memoryview(bytearray(response(page_size)))
    on_request, on_response = rec.request, rec.response
    start = time.process_time()
    for _ in range(exchanges):
        on_request(req)
        on_response(resp)
    took = time.process_time() - start
    assert not rec.stopped, rec.stop_reason
    last = log.get(exchanges)
    assert last is not None and last.status == 200 and last.state is record.State.COMPLETE
    assert last.response is not None and last.response.body.size == page_size
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exchanges", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--page-size", type=int, default=612)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    modes = {"fast": True, "llhttp": False}
    res = {
        name: round(
            min(run(args.exchanges, args.page_size, fast=fast) for _ in range(args.repeat))
            * 1e6
            / args.exchanges,
            2,
        )
        for name, fast in modes.items()
    }
    if args.json:
        print(json.dumps({"us_per_exchange": res, "page_bytes": args.page_size}))
    else:
        for name, us in res.items():
            print(f"{name:>7}: {us:6.2f} us per exchange (GET + 200, {args.page_size} B body)")


if __name__ == "__main__":
    main()
