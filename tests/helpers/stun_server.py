#!/usr/bin/env python3
"""pierce's STUN responder alone (UDP on PORT and PORT + 1, TCP on PORT), for the namespace lab.

    stun_server.py ADDRESS PORT

Prints ``READY <port>`` once listening (after the ``stun.listening`` log line), then serves until killed.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pierce.nat.stun_server import StunServer


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    server = StunServer(sys.argv[1], int(sys.argv[2]))
    server.start()
    if server.tcp is None:
        raise SystemExit("STUN over TCP did not start")
    print(f"READY {server.tcp.address.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
