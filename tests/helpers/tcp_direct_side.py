#!/usr/bin/env python3
"""One side of a direct TCP path with pierce's own code, for the namespace lab.

    tcp_direct_side.py ROLE PORT STUN_HOST:STUN_PORT LOCAL_IP [--plain]

ROLE is visitor or owner. Binds nothing itself: asks the STUN server (over TCP, from PORT) for its TCP
reflexive address and prints one JSON line ``{"event": "candidates", "candidates": [[kind, host, port],
...], "fingerprint": hex}`` (host LOCAL_IP:PORT, srflx from STUN; the fingerprint of its identity when
it is the owner). Then reads one JSON line on stdin: ``{"candidates": [...], "start": EPOCH, "budget":
SECONDS, "fingerprint": hex}`` (the peer's candidates; the owner's fingerprint for the visitor), runs
`connect_direct` at wall-clock time START with a deadline BUDGET seconds later, secures the socket
(TLS, or the plain proofs with ``--plain``), sends 1 MiB of data derived from its role, half-closes,
reads the peer's until EOF and checks it. Prints one JSON line: the result, the path kind and candidate,
the seconds from START to connected and to secured, and whether the peer's data arrived intact.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

from pierce.addr import parse_host_port
from pierce.errors import PierceError
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.p2p.identity import Identity
from pierce.p2p.tcp_direct import connect_direct, secure_owner, secure_visitor, tcp_reflexive

KEY = bytes(range(32))
SIZE = 2**20


def payload(role: str) -> bytes:
    block = hashlib.sha256(role.encode()).digest() * 1024
    return (block * (SIZE // len(block) + 1))[:SIZE]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["visitor", "owner"])
    parser.add_argument("port", type=int)
    parser.add_argument("stun")
    parser.add_argument("local_ip")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    identity = Identity.generate() if args.role == "owner" else None
    srflx = await tcp_reflexive(parse_host_port(args.stun), args.port, timeout=5)
    mine = [["host", args.local_ip, args.port], ["srflx", srflx[0], srflx[1]]]
    print(
        json.dumps(
            {
                "event": "candidates",
                "candidates": mine,
                "fingerprint": identity.fingerprint.hex() if identity else "",
            }
        ),
        flush=True,
    )
    plan = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    peer = [Candidate(CandidateKind(kind), host, port) for kind, host, port in plan["candidates"]]
    start_at = loop.time() + (float(plan["start"]) - time.time())
    doc: dict[str, object] = {"event": "result"}
    try:
        sock, candidate, kind = await connect_direct(
            args.role, args.port, peer, start_at=start_at, deadline=start_at + float(plan["budget"])
        )
        doc.update(
            kind=kind,
            candidate=f"{candidate.kind.value} {candidate.host}:{candidate.port}",
            peer="{}:{}".format(*sock.getpeername()[:2]),
            connected_s=round(loop.time() - start_at, 3),
        )
        if identity is not None:
            end = await secure_owner(sock, identity, KEY, encrypt=not args.plain)
        else:
            end = await secure_visitor(sock, bytes.fromhex(plan["fingerprint"]), KEY, encrypt=not args.plain)
        doc["secured_s"] = round(loop.time() - start_at, 3)

        async def send() -> None:
            data = payload(args.role)
            for i in range(0, SIZE, 65536):
                await end.write(data[i : i + 65536])
            end.write_eof()

        async def receive() -> bytes:
            got = bytearray()
            while chunk := await end.read(65536):
                got += chunk
            return bytes(got)

        try:
            async with asyncio.timeout(20):
                _, received = await asyncio.gather(send(), receive())
        finally:
            end.close()
        other = "owner" if args.role == "visitor" else "visitor"
        doc["data_ok"] = received == payload(other)
        doc["result"] = "connected"
    except (PierceError, OSError, TimeoutError) as exc:
        failed_s = round(loop.time() - start_at, 3)
        doc.update(result="failed", error=f"{type(exc).__name__}: {exc}", failed_s=failed_s)
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
