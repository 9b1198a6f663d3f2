"""One-shot STUN probe: send Binding requests to TARGET every 100 ms until one is answered or time is up.

Prints one JSON line: ``{"result": "answer", "from": "ip:port"}`` or ``{"result": "timeout"}``.
Used to wait until a STUN server in a lab namespace is up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time

COOKIE = 0x2112A442


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="ip:port")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.1)
    deadline = time.monotonic() + args.timeout
    tid = os.urandom(12)
    while time.monotonic() < deadline:
        sock.sendto(struct.pack("!HHI12s", 0x0001, 0, COOKIE, tid), (host, int(port)))
        try:
            data, peer = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            continue
        if len(data) >= 20 and data[8:20] == tid:
            print(json.dumps({"result": "answer", "from": f"{peer[0]}:{peer[1]}"}), flush=True)
            return
    print(json.dumps({"result": "timeout"}), flush=True)


if __name__ == "__main__":
    main()
