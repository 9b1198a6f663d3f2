"""A visitor that keeps using a forwarded port: one fresh exchange every ``--interval`` seconds until SIGTERM.

Each round tries every target once, in order: ``--tcp HOST:PORT`` connects, sends ``--hex``, half-closes
and reads until EOF (ok when exactly the payload came back); ``--udp HOST:PORT`` sends ``--hex`` from a new
socket and waits for it to come back. Every attempt uses a new connection or a new source port, so each
one is a new flow through the router's NAT: a flow already tracked would keep working after the port
forward behind it was gone, and hide a gap.

Prints one JSON line per attempt, ``{"event": "attempt", "proto": "tcp", "ok": true, "at": t, "start": s,
"end": e}`` (``t``: seconds since the first attempt; ``s`` and ``e``: the wall clock, ``time.time()``, when
it began and ended, to line it up with other processes' logs; a failure adds ``"error"``), and on SIGTERM
a last line ``{"event": "summary", "tcp": {"ok": n, "failed": m, "first_failure": t | null}, ...,
"seconds": s}`` (``s``: from the first attempt to the last) before it exits 0.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import time


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def describe(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def tcp_attempt(target: tuple[str, int], payload: bytes, timeout: float) -> str | None:
    """None when the payload came back whole, else what went wrong."""
    try:
        with socket.create_connection(target, timeout=timeout) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
    except OSError as exc:
        return describe(exc)
    return None if bytes(received) == payload else f"echoed {len(received)} bytes, expected {len(payload)}"


def udp_attempt(target: tuple[str, int], payload: bytes, timeout: float) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            sock.send(payload)
            data = sock.recv(65535)
        except OSError as exc:
            return describe(exc)
    return None if data == payload else f"reply of {len(data)} bytes differs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tcp", type=addr, action="append", default=[])
    parser.add_argument("--udp", type=addr, action="append", default=[])
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--hex", default=b"still there?".hex())
    args = parser.parse_args()
    payload = bytes.fromhex(args.hex)
    targets = [("tcp", t, tcp_attempt) for t in args.tcp] + [("udp", t, udp_attempt) for t in args.udp]
    counts = {proto: {"ok": 0, "failed": 0, "first_failure": None} for proto, _, _ in targets}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    last = 0.0
    while not stopping:
        round_start = time.monotonic()
        for proto, target, attempt in targets:
            at = time.monotonic() - start
            began = time.time()
            error = attempt(target, payload, args.timeout)
            ended = time.time()
            last = at
            doc: dict[str, object] = {"event": "attempt", "proto": proto, "ok": error is None, "at": at}
            doc.update(start=began, end=ended)
            if error is None:
                counts[proto]["ok"] += 1  # type: ignore[operator]
            else:
                counts[proto]["failed"] += 1  # type: ignore[operator]
                if counts[proto]["first_failure"] is None:
                    counts[proto]["first_failure"] = at
                doc["error"] = error
            print(json.dumps(doc), flush=True)
        pause = round_start + args.interval - time.monotonic()  # pacing the rounds, not waiting on anything
        if pause > 0 and not stopping:
            time.sleep(pause)
    print(json.dumps({"event": "summary", **counts, "seconds": last}), flush=True)


if __name__ == "__main__":
    main()
