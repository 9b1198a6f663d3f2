"""One-shot TCP client: connect, send a payload, half-close, read until EOF; print one JSON line.

The payload is ``--hex`` or the contents of ``--send FILE``; what comes back is written to ``--recv FILE``
(when given) and summarised as ``{"result": "ok", "local": [...], "sent": n, "received": m, "sha256": ...,
"seconds": t}`` (``t``: from the connect to the end of the echo).
Sending runs in its own thread, so large payloads through an echo cannot deadlock on full buffers. A failed
connect or a reset prints ``{"result": "error", "stage": "connect" | "transfer", "errno": "ENETUNREACH"...}``.
``--rate BYTES`` paces the sending (at most that many bytes a second, in 16 KiB writes), so a transfer lasts
long enough for a fault to hit it; ``--progress`` then prints ``{"event": "progress", "received": n}`` once
the first bytes have come back (the transfer is under way).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import socket
import threading
import time
from pathlib import Path


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def error(stage: str, exc: OSError, **extra: object) -> None:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    doc = {"result": "error", "stage": stage, "errno": name, "error": str(exc), **extra}
    print(json.dumps(doc), flush=True)


def paced_send(sock: socket.socket, payload: bytes, rate: float) -> None:
    """``payload`` in 16 KiB writes, none before its time at ``rate`` bytes a second."""
    start, step = time.monotonic(), 16384
    for offset in range(0, len(payload), step):
        time.sleep(max(0.0, start + offset / rate - time.monotonic()))
        sock.sendall(payload[offset : offset + step])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", type=addr)
    parser.add_argument("--hex", default="")
    parser.add_argument("--send", type=Path)
    parser.add_argument("--recv", type=Path)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    payload = args.send.read_bytes() if args.send else bytes.fromhex(args.hex)
    start = time.monotonic()
    try:
        sock = socket.create_connection(args.target, timeout=args.timeout)
    except OSError as exc:
        error("connect", exc)
        return
    local = list(sock.getsockname())
    send_error: list[OSError] = []

    def sender() -> None:
        try:
            if args.rate:
                paced_send(sock, payload, args.rate)
            else:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            if args.progress and not received:
                print(json.dumps({"event": "progress", "received": len(chunk)}), flush=True)
            received += chunk
    except OSError as exc:
        error("transfer", exc, received=len(received))
        return
    finally:
        thread.join(args.timeout)
        sock.close()
    seconds = time.monotonic() - start
    if args.recv:
        args.recv.write_bytes(received)
    doc = {
        "result": "ok",
        "local": local,
        "sent": len(payload),
        "received": len(received),
        "sha256": hashlib.sha256(received).hexdigest(),
        "send_error": str(send_error[0]) if send_error else None,
        "seconds": seconds,
    }
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
