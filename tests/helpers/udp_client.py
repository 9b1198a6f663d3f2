"""One-shot UDP client: from one socket, send a datagram to each target in turn and wait for a reply.

Prints one JSON line per target: ``{"target": "ip:port", "local": [ip, port], "result": R, ...}`` where R is
``reply`` (with ``from`` and ``hex``), ``refused`` (an ICMP port unreachable came back: the packet was
consumed by whoever owns the address, e.g. the NAT router itself) or ``timeout``. The socket is connected to
each target in turn, so ICMP errors are reported while the local port stays the same.
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
    parser.add_argument("targets", nargs="+", type=addr)
    parser.add_argument("--bind", type=addr, default=("0.0.0.0", 0))
    parser.add_argument("--hex", default=b"ping".hex(), help="payload, hex encoded")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    payload = bytes.fromhex(args.hex)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(args.bind)
    sock.settimeout(args.timeout)
    for target in args.targets:
        sock.connect(target)
        doc: dict[str, object] = {"target": f"{target[0]}:{target[1]}", "local": list(sock.getsockname())}
        try:
            sock.send(payload)
            data, peer = sock.recvfrom(65535)
            doc.update(result="reply", hex=data.hex(), **{"from": list(peer)})
        except ConnectionRefusedError:
            doc["result"] = "refused"
        except TimeoutError:
            doc["result"] = "timeout"
        print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
