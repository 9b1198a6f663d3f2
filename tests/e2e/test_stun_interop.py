"""STUN interop on loopback: real clients against ``pierce server``, ``pierce nat`` against coturn.

127.0.0.1 and 127.0.0.2 are both on ``lo``, so a server with ``stun_alt_addr = "127.0.0.2"`` has the two
addresses RFC 5780 needs. There is no NAT on loopback: every client must report an open, endpoint-independent
path, and each response must come from the address the request asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.stun import ALTERNATE, PRIMARY, free_port_pair, stun_server
from support.tunnel import StartPierce, start_server

from pierce.nat import stun


async def run(*argv: str, timeout: float = 30) -> str:
    """Run a command to completion; its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


async def pierce_nat(port: int) -> dict[str, object]:
    # --no-router: the probe of the default gateway would leave loopback (the natlab tests cover it)
    out = await run(
        sys.executable, "-m", "pierce", "nat", "--server", f"{PRIMARY}:{port}", "--json", "--no-router"
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert isinstance(report, dict), out
    return report


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: {'stun-client' if name == 'stun' else 'coturn'})")
    return path


@pytest.mark.parametrize("bind", [PRIMARY, "0.0.0.0"])
async def test_debian_stun_client_sees_an_open_internet(
    pierce: StartPierce, tmp_path: Path, bind: str
) -> None:
    """The RFC 3489 client: no magic cookie, MAPPED/SOURCE/CHANGED-ADDRESS, all four tests answered from
    the address each asked for."""
    client = tool("stun")
    port = await stun_server(pierce, tmp_path, bind)
    out = await run(client, f"{PRIMARY}:{port}", "-v")
    for test in ("test I", "test II", "test III", "test I(2)", "hairpin", "preserver port"):
        assert f"{test} = 1" in out, out
    assert "is nat  = 0" in out, out
    # Each response's SOURCE-ADDRESS, by test number (stund puts it in the first transaction id byte).
    found = re.findall(r"SourceAddress = (\S+)\n(?:.*\n)*?Received message of type 257\s+id=(\d+)", out)
    by_test = {int(test): source for source, test in found}
    assert by_test == {
        1: f"{PRIMARY}:{port}",  # plain request
        2: f"{ALTERNATE}:{port}",  # CHANGE-REQUEST change IP
        3: f"{PRIMARY}:{port + 1}",  # CHANGE-REQUEST change port
        10: f"{ALTERNATE}:{port}",  # sent to the changed address
    }, out
    assert set(re.findall(r"ChangedAddress = (\S+)", out)) == {f"{ALTERNATE}:{port + 1}"}, out
    assert "Primary: Open" in out, out


@pytest.mark.parametrize("bind", [PRIMARY, "0.0.0.0"])
async def test_coturn_natdiscovery_against_pierce(pierce: StartPierce, tmp_path: Path, bind: str) -> None:
    """coturn's RFC 5780 client, with 1500-byte PADDING in every request: no NAT, endpoint-independent
    mapping and filtering, and the filtering answer from the other address and port."""
    client = tool("turnutils_natdiscovery")
    port = await stun_server(pierce, tmp_path, bind)
    out = await run(client, "-m", "-f", "-P", "-p", str(port), "-L", PRIMARY, PRIMARY)
    assert "No NAT! (Endpoint Independent Mapping)" in out, out
    assert "NAT with Endpoint Independent Mapping!" in out, out
    assert "NAT with Endpoint Independent Filtering!" in out, out
    assert "ALG detected" not in out and "No ALG: Mapped == XOR-Mapped" in out, out
    assert set(re.findall(r"Other addr: : (\S+)", out)) == {f"{ALTERNATE}:{port + 1}"}, out
    origins = re.findall(r"Response origin: : (\S+)", out)
    assert f"{ALTERNATE}:{port + 1}" in origins and f"{ALTERNATE}:{port}" in origins, out


async def test_pierce_nat_without_an_answer() -> None:
    """Nothing answers: exit status 1, every answer null, and the reason."""
    port = free_port_pair()
    argv = [
        sys.executable,
        "-m",
        "pierce",
        "nat",
        "--server",
        f"{PRIMARY}:{port}",
        "--json",
        "--timeout",
        "0.3",
        "--no-router",
    ]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 1
    report = json.loads(out)
    assert {k: report[k] for k in ("public_address", "behind_nat", "mapping", "filtering", "p2p")} == {
        "public_address": None,
        "behind_nat": None,
        "mapping": None,
        "filtering": None,
        "p2p": "relay only",
    }
    assert "No STUN answer" in report["why"]


async def test_server_runs_on_when_the_stun_port_is_taken(pierce: StartPierce, tmp_path: Path) -> None:
    port = free_port_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((PRIMARY, port + 1))
        proc, control_port = await start_server(pierce, tmp_path, stun_port=port)
        (warning,) = await proc.wait_event("stun.unavailable")
    assert "address already in use" in warning["error"], warning
    assert control_port > 0 and proc.proc.returncode is None
    assert not proc.matching("stun.listening")


async def test_pierce_nat_against_pierce_server(pierce: StartPierce, tmp_path: Path) -> None:
    port = await stun_server(pierce, tmp_path)
    report = await pierce_nat(port)
    assert report["public_address"] == report["local_address"], report
    assert report == open_path(report, port)


@contextlib.asynccontextmanager
async def coturn(tmp_path: Path) -> AsyncIterator[int]:
    """``turnserver`` as an RFC 5780 STUN server on both loopback addresses; yields its port."""
    server = tool("turnserver")
    port = free_port_pair()
    argv = [
        server, "-n", "--stun-only", "--no-cli", "--no-tcp", "--no-tls", "--no-dtls",
        f"--listening-ip={PRIMARY}", f"--listening-ip={ALTERNATE}", f"--listening-port={port}",
        f"--alt-listening-port={port + 1}", f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--log-file={tmp_path / 'turnserver.log'}", "--simple-log",
    ]  # fmt: skip
    if re.search(r"^\s*--rfc5780\b", await run(server, "-h"), re.M):
        argv.append("--rfc5780")  # coturn 4.7 and later leave RFC 5780 off unless asked
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await answers_stun(port)
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def answers_stun(port: int, timeout: float = 10.0) -> None:
    """Wait until a Binding request to ``port`` is answered (the server is up)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((PRIMARY, port))
        async with asyncio.timeout(timeout):
            while True:
                request = stun.binding_request()
                sock.send(stun.encode(request))
                with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                    async with asyncio.timeout(0.2):
                        data = await loop.sock_recv(sock, 2048)
                        if stun.decode(data).transaction_id == request.transaction_id:
                            return


def open_path(report: dict[str, object], port: int) -> dict[str, object]:
    return {
        "public_address": report["public_address"],
        "local_address": report["local_address"],
        "behind_nat": False,
        "cgnat": False,
        "mapping": "endpoint-independent",
        "filtering": "endpoint-independent",
        "hairpinning": None,
        "mapping_lifetime_s": None,
        "p2p": "direct likely",
        "why": report["why"],
        "server": f"{PRIMARY}:{port}",
        "hops": None,
        "port_mapping": None,
    }


async def test_pierce_nat_against_coturn(tmp_path: Path) -> None:
    async with coturn(tmp_path) as port:
        report = await pierce_nat(port)
    assert str(report["public_address"]).startswith(f"{PRIMARY}:"), report
    assert report["public_address"] == report["local_address"], report
    assert report == open_path(report, port)
