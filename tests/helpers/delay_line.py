"""A delay line for the namespace lab: hold every packet of an NFQUEUE for a fixed time, then accept it.

The kernel here has no ``sch_netem``, so delay is done in userspace: a router's netfilter rule sends its
packets to queue ``--queue`` (``iptables -t raw -A PREROUTING -j NFQUEUE --queue-num N``: before
conntrack, so the delay is on the wire, not between NAT steps), and this process keeps each one for
``--delay-ms`` before its verdict. The queue is spoken directly over ``NETLINK_NETFILTER`` (the
``nfnetlink_queue`` messages are a handful of fixed structs), so no bindings are needed. Only packet
metadata is copied to userspace (``NFQNL_COPY_META``), and since every packet waits the same time,
one batch verdict ("accept every id up to N") releases all that are due at once; a notification lost to
a full socket buffer is still released by the next batch.

Prints ``READY 0`` once bound, then runs until SIGTERM. The kernel queue holds ``--max-queued`` packets;
beyond that new packets are dropped, as a router's full buffer would.
"""

from __future__ import annotations

import argparse
import collections
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
SO_RCVBUFFORCE = 33


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def configure(sock: socket.socket, queue: int, max_queued: int) -> None:
    """Bind the queue, copy metadata only, set the queue length, keep GSO packets whole; check acks."""
    requests = [
        attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)),
        attr(NFQA_CFG_PARAMS, struct.pack("!IBxxx", 0, NFQNL_COPY_META)),
        attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_queued)),
        attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
        + attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)),
    ]
    for seq, attrs in enumerate(requests, 1):
        sock.send(message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        reply = sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
        if kind == NLMSG_ERROR and (code := struct.unpack_from("=i", reply, 16)[0]) != 0:
            raise SystemExit(f"nfqueue config step {seq} failed: errno {-code}")


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink read."""
    ids, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos, end = offset + 20, offset + length
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, pos + 4)[0])
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--max-queued", type=int, default=16384)
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.bind((0, 0))
    configure(sock, args.queue, args.max_queued)
    print("READY 0", flush=True)
    held: collections.deque[tuple[float, int]] = collections.deque()
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        if select.select([sock], [], [], timeout)[0]:
            try:
                data = sock.recv(1 << 16)
            except OSError:  # ENOBUFS: notifications were lost; the next batch verdict covers them
                data = b""
            due = time.monotonic() + delay
            held.extend((due, pid) for pid in packet_ids(data))
        now, last = time.monotonic(), None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:
            verdict = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
            sock.send(message(NFQNL_MSG_VERDICT_BATCH, args.queue, verdict))


if __name__ == "__main__":
    main()
