"""Datagram check through a UDP echo path: send COUNT numbered datagrams one at a time, expect each back.

    udp_datagrams.py HOST:PORT [--count N] [--size BYTES] [--timeout S] [--tries K]

Each datagram carries its sequence number and random bytes (sizes cycle from 1 byte up to ``--size``); a
reply must equal what was sent. A datagram without a reply within ``--timeout`` is sent again, up to
``--tries`` times (the path may be unreliable by design). Prints one JSON line:
``{"sent": n, "echoed": k, "mismatched": m, "resent": r, "bytes": total payload bytes echoed}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", type=addr)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(args.target)
    sock.settimeout(args.timeout)
    echoed = mismatched = resent = total = 0
    for seq in range(args.count):
        size = max(4, 1 + (seq * 97) % args.size)
        payload = struct.pack("!I", seq) + os.urandom(size - 4)
        for attempt in range(args.tries):
            resent += attempt > 0
            sock.send(payload)
            try:
                while True:  # skip late replies to earlier datagrams
                    reply = sock.recv(65535)
                    if reply[:4] == payload[:4]:
                        break
            except (TimeoutError, ConnectionRefusedError):
                continue
            if reply == payload:
                echoed += 1
                total += len(payload)
            else:
                mismatched += 1
            break
    doc = {"sent": args.count, "echoed": echoed, "mismatched": mismatched, "resent": resent, "bytes": total}
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
