#!/usr/bin/env python3
"""One side of a UDP hole punch with pierce's own agent and driver, for the namespace lab.

    udp_punch.py ROLE LOCAL_IP PORT MY_PUBLIC_IP PEER_IP PEER_PUBLIC_IP START_EPOCH [--opening-ttl N]
                 [--mapping easy:hard|hard:easy] [--budget S]

Binds 0.0.0.0:PORT; its candidates are host LOCAL_IP:PORT and server-reflexive MY_PUBLIC_IP:PORT (a
Linux MASQUERADE keeps the source port when it can); the peer's are the same on its side. Both sides
start probing at the wall-clock time START_EPOCH. Prints one JSON line: the outcome, the locked peer
address, the seconds from the start to the lock, and whether a datagram then crossed the hole both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

from pierce.nat.candidates import Candidate, CandidateKind
from pierce.nat.classify import Behaviour
from pierce.nat.punch import PunchAgent, PunchSettings, Role
from pierce.nat.punch_io import run_punch
from pierce.nat.punch_wire import is_punch_packet

SID = b"lab-punch"
KEY = bytes(range(32))


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("role", "local_ip", "port", "public_ip", "peer_ip", "peer_public_ip", "start"):
        parser.add_argument(name)
    parser.add_argument("--opening-ttl", type=int, default=2)
    parser.add_argument("--mapping", default="", help="LOCAL:REMOTE mapping behaviours (easy / hard)")
    parser.add_argument("--budget", type=float, default=8.0)
    args = parser.parse_args()
    port = int(args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    loop = asyncio.get_running_loop()
    now = loop.time()
    start_at = now + (float(args.start) - time.time())
    local = [
        Candidate(CandidateKind.HOST, args.local_ip, port),
        Candidate(CandidateKind.SRFLX, args.public_ip, port),
    ]
    remote = [
        Candidate(CandidateKind.HOST, args.peer_ip, port),
        Candidate(CandidateKind.SRFLX, args.peer_public_ip, port),
    ]
    role = Role.CONTROLLING if args.role == "controlling" else Role.CONTROLLED
    ttl = args.opening_ttl if args.opening_ttl > 0 else None
    settings = PunchSettings(budget_s=args.budget, opening_ttl=ttl)
    kinds = {"easy": Behaviour.ENDPOINT_INDEPENDENT, "hard": Behaviour.ADDRESS_AND_PORT_DEPENDENT}
    local_mapping, _, remote_mapping = args.mapping.partition(":")
    agent = PunchAgent(
        role,
        SID,
        KEY,
        local,
        remote,
        now,
        start_at=start_at,
        settings=settings,
        local_mapping=kinds.get(local_mapping),
        remote_mapping=kinds.get(remote_mapping),
    )
    result = await run_punch(agent, {0: sock})
    doc: dict[str, object] = {"result": "locked" if result.locked else "failed"}
    if result.locked is not None:
        peer = result.locked.path.remote
        doc.update(peer=f"{peer[0]}:{peer[1]}", elapsed=round(result.locked.elapsed, 3))
        # A datagram each way through the hole: send every 0.1 s until the peer's has arrived, and a few
        # times more after that, since the peer may still be punching (its driver takes and drops
        # anything that is not a punch packet).
        assert result.sock is not None
        sock = result.sock  # the locked socket: with port prediction, one of the extra ones
        sock.setblocking(False)
        message = f"data from {args.role}".encode()
        received = b""
        extra = 5
        deadline = loop.time() + 5
        while loop.time() < deadline and extra > 0:
            sock.sendto(message, peer)
            if received:
                extra -= 1
            await asyncio.sleep(0.1)  # the send pace
            try:
                while not received:
                    data, source = sock.recvfrom(2048)
                    if not is_punch_packet(data) and source == peer:
                        received = data
            except BlockingIOError:
                pass
        doc["received"] = received.decode(errors="replace")
    else:
        doc["reason"] = result.failed.reason.value if result.failed else ""
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
