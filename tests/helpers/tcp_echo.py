"""TCP echo server for tests: streams back what it reads, half-closes on EOF.

Prints ``READY <port>`` once listening, then JSON lines on stdout, one per connection when accepted,
``{"event": "accepted", "peer": [ip, port]}``, and one when the client's stream has ended and everything
was echoed (the server then shuts down its write side and closes):
``{"event": "closed", "peer": [ip, port], "bytes": n, "sha256": hex digest of the bytes}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading

_print_lock = threading.Lock()


def emit(doc: dict[str, object]) -> None:
    with _print_lock:
        print(json.dumps(doc), flush=True)


def serve(conn: socket.socket, peer: tuple[str, int]) -> None:
    total = 0
    digest = hashlib.sha256()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
            total += len(data)
            digest.update(data)
        conn.shutdown(socket.SHUT_WR)
    emit({"event": "closed", "peer": list(peer), "bytes": total, "sha256": digest.hexdigest()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = socket.create_server((args.host, args.port), backlog=64)
    print(f"READY {server.getsockname()[1]}", flush=True)
    while True:
        conn, peer = server.accept()
        emit({"event": "accepted", "peer": list(peer)})
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
