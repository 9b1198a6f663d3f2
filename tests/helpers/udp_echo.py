"""UDP echo server for tests: sends every datagram back to its sender unchanged.

Prints ``READY <port>`` once bound (and, with ``--hello``, once each hello has been answered), then one JSON
line per datagram on stdout: ``{"event": "datagram", "peer": [ip, port], "bytes": n}``.

``--hello HOST:PORT`` (repeatable) first sends ``hello`` from the bound socket to that address and waits for
the reply: behind a NAT this opens a mapping for the socket, and the reply proves the router has it.
"""

from __future__ import annotations

import argparse
import json
import socket


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hello", type=addr, action="append", default=[])
    parser.add_argument("--hello-timeout", type=float, default=5.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    for target in args.hello:
        sock.settimeout(args.hello_timeout)
        sock.sendto(b"hello", target)
        while True:
            data, peer = sock.recvfrom(65535)
            if peer == target:
                break
        sock.settimeout(None)
        doc = {"event": "hello", "peer": list(peer), "reply": data.decode(errors="replace")}
        print(json.dumps(doc), flush=True)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)
        print(json.dumps({"event": "datagram", "peer": list(peer), "bytes": len(data)}), flush=True)


if __name__ == "__main__":
    main()
