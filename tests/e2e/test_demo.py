"""`pierce demo`: the whole tunnel in one process, run as a real process with no config."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from support.procs import PierceProcess

CHECK_STEPS = (
    "server",
    "web service",
    "client",
    "GET /",
    "GET /blob",
    "POST /echo",
    "concurrent",
    "counters",
    "P2P visitor",
    "over the direct path",
)


async def test_demo_check_passes_end_to_end() -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pierce",
        "demo",
        "--check",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, out.decode() + err.decode()
    assert lines[-1].startswith("demo check: OK"), lines
    steps = lines[:-1]
    assert len(steps) == len(CHECK_STEPS) and all(line.startswith("ok ") for line in steps), lines
    for line, word in zip(steps, CHECK_STEPS, strict=True):
        assert word in line, (word, line)
    assert "4.0 MiB, SHA-256 matches" in out.decode()
    assert "none via the server" in steps[-1] and "direct" in steps[-2], steps
    assert b"lost the server" not in err, err.decode()  # closing is quiet
    assert time.monotonic() - started < 20


async def fetch_page(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = await reader.read(-1)
    writer.close()
    return response


async def test_demo_panel_serves_visitors_and_stops_on_sigint(pierce) -> None:
    demo: PierceProcess = await pierce("demo")
    (ready,) = await demo.wait_event("demo.ready")
    port = int(ready["port"])
    response = await fetch_page(port)
    assert response.startswith(b"HTTP/1.1 200") and b"It works." in response
    # The visit went through the tunnel: the server's proxy saw it open and close.
    await demo.wait_event("proxy.conn_close", count=4)  # the demo's own self-check and ours, on both sides

    demo.proc.send_signal(signal.SIGINT)
    assert await demo.wait_exit() == 0
    (stopped,) = demo.matching("demo.stopped")
    assert stopped["reason"] == "SIGINT"
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        pass
    else:  # pragma: no cover - the public port must be gone with the process
        writer.close()
        raise AssertionError(f"port {port} still accepts after the demo exited")


async def test_demo_panel_stops_after_duration(pierce) -> None:
    demo: PierceProcess = await pierce("demo", "--duration", "0.5")
    await demo.wait_event("demo.ready")
    assert await demo.wait_exit() == 0
    (stopped,) = demo.matching("demo.stopped")
    assert stopped["reason"] == "duration elapsed"
    assert demo.matching("log", lambda e: e["level"] in ("error", "critical")) == []
