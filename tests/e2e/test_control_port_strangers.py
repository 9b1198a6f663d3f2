"""What a stranger can do to the server's control port before logging in: nothing that lasts.

A real `pierce server`; hostile peers and logins run in this process. Peers dial from their own
loopback addresses (127.x.y.z) so the per-source limits can be told apart from the total ones, and
logins use the client's own code (`client_login` over TLS), with the right token or a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from support.procs import PierceProcess
from support.streams import echo, tcp_server
from support.tunnel import TOKEN, start_client, start_server

from pierce.client.session import SERVER_NAME
from pierce.handshake import AuthenticationFailed, client_login
from pierce.protocol import Hello, Role, certificate_binding, encode_frame
from pierce.protocol.messages import PROTOCOL_VERSION
from pierce.protocol.pake import PakeClient
from pierce.tls import check_peer, client_context
from pierce.transport import StreamChannel

#: Any certificate: these peers are strangers, they check nothing.
ANY_CERT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ANY_CERT.check_hostname = False
ANY_CERT.verify_mode = ssl.CERT_NONE

GIANT = b"\xff\xff\xff\xff"  # a frame header announcing 4 GiB
KINDS = ("plain-garbage", "plain-giant", "plain-silent", "tls-giant", "tls-silent", "tls-stall")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def rss_kib(proc: PierceProcess) -> int:
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def login(port: int, *, source: str = "127.0.0.1", token: str = TOKEN) -> None:
    """Log in as a control client from ``source``, as `pierce client` does; then leave."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname=SERVER_NAME, local_addr=(source, 0)
    )
    channel = StreamChannel(reader, writer)
    try:
        der = check_peer(writer.get_extra_info("ssl_object"))
        await client_login(
            channel,
            user="",
            token=token,
            features=frozenset({"encrypt_data"}),
            client_id=f"probe-{uuid.uuid4().hex[:8]}",
            role=Role.CONTROL,
            binding=certificate_binding(der),
        )
    finally:
        channel.abort()


async def connect(port: int, source: str, *, tls: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=ANY_CERT if tls else None,
        server_hostname="" if tls else None,
        local_addr=(source, 0),
    )


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Return once the server has closed (EOF, reset, broken TLS); never sends anything itself."""
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while await reader.read(65536):
            pass


async def hostile(port: int, kind: str, source: str, junk: bytes, *, patience: float) -> str:
    """One stranger's connection of ``kind``; how it ended: "closed" by the server within ``patience``
    seconds, "refused" at once, or "held" (still open after ``patience``)."""
    try:
        if kind == "tls-stall":  # the first byte of a TLS handshake, then nothing
            reader, writer = await connect(port, source, tls=False)
            writer.write(b"\x16")
        else:
            reader, writer = await connect(port, source, tls=kind.startswith("tls"))
            if kind.endswith("giant"):
                writer.write(GIANT + junk)
            elif kind == "plain-garbage":
                writer.write(junk)
    except (OSError, ssl.SSLError):
        return "refused"
    try:
        async with asyncio.timeout(patience):
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.drain()
            await until_closed(reader)
        return "closed"
    except TimeoutError:
        return "held"
    finally:
        writer.transport.abort()


async def burst(port: int, count: int, *, seed: int, patience: float, batch: int = 250) -> Counter[str]:
    """``count`` strangers of every kind in batches; half from their own addresses, half from ten
    shared ones (which soon get blocked for their failures, and then reset at once)."""
    rnd = random.Random(seed)
    junk = rnd.randbytes(64 * 1024)
    big = rnd.randbytes(3 * 1024 * 1024)
    outcomes: Counter[str] = Counter()
    for start in range(0, count, batch):
        peers = []
        for i in range(start, min(count, start + batch)):
            kind = KINDS[i % len(KINDS)]
            if (i // len(KINDS)) % 2:
                source = f"127.{10 + seed}.{i // 250}.{i % 250 + 1}"
            else:
                source = f"127.{20 + seed}.0.{i % 10 + 1}"
            payload = big if kind == "tls-giant" and i < 60 else junk  # ten of them send 3 MiB
            peers.append(hostile(port, kind, source, payload, patience=patience))
        outcomes.update(await asyncio.gather(*peers))
    return outcomes


async def poll(check: Callable[[], bool], *, deadline: float, what: str) -> None:
    """Wait until ``check()`` holds, at most ``deadline`` seconds (for values with no event to await:
    /proc counters)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {deadline}s")
        await asyncio.sleep(0.05)


async def test_hostile_bursts_leave_no_trace(pierce, tmp_path: Path) -> None:
    """2,000 strangers sending garbage, 4 GiB frame headers (plain and after a real TLS handshake) or
    nothing: each is closed within the login deadline, a client logs in right after, and the server's
    descriptors and memory go back to where they were."""
    raise_fd_limit()
    server, port = await start_server(pierce, tmp_path, login_timeout_s=1.0, stun_port=0)
    # Warm up with the same mix, so what the server builds once (TLS state, caches, tables) is in the
    # baseline; the burst must add nothing to it.
    await burst(port, 300, seed=1, patience=4.0)
    for _ in range(3):
        await login(port)
    await server.wait_event("client.gone", count=3)
    base_fds, base_rss = server.fd_count(), rss_kib(server)

    outcomes = await burst(port, 2000, seed=2, patience=4.0)
    assert outcomes["held"] == 0, outcomes  # every one closed within the 1 s login deadline + slack
    assert outcomes["closed"] >= 1000, outcomes  # most got in and were thrown out, not just refused

    async with asyncio.timeout(1):  # availability: a client gets in at once
        await login(port)
    await poll(lambda: server.fd_count() <= base_fds, deadline=5, what=f"fds back to {base_fds}")
    await poll(
        lambda: rss_kib(server) <= base_rss * 1.05,
        deadline=10,
        what=f"RSS back within 5% of {base_rss} KiB (now {rss_kib(server)} KiB)",
    )
    assert server.proc.returncode is None


async def test_idle_and_slow_strangers_are_cut_at_one_login_deadline(pierce, tmp_path: Path) -> None:
    """Silent plain and TLS connections, a stalled TLS handshake and a login that takes its time (a
    Hello trickled in over half the deadline, then nothing: every step within the deadline, the
    whole not) are all aborted at the one login deadline; and the server keeps no descriptor for
    them although the peers never close (no wait for a TLS close_notify)."""
    deadline, slack = 2.0, 0.6
    server, port = await start_server(pierce, tmp_path, login_timeout_s=deadline, stun_port=0)
    await login(port)
    await server.wait_event("client.gone")
    base_fds = server.fd_count()

    hello = encode_frame(
        Hello(
            version=PROTOCOL_VERSION,
            features=frozenset({"encrypt_data"}),
            client_id="slow",
            role=Role.CONTROL,
            pake=PakeClient("default", "a guess").public,
        )
    )
    peers: list[asyncio.StreamWriter] = []

    async def closed_after(kind: str, n: int) -> float:
        started = time.monotonic()
        source = f"127.3.0.{n}"
        reader, writer = await connect(port, source, tls=kind in ("tls-silent", "tls-deaf", "tls-slow-login"))
        peers.append(writer)
        if kind == "tls-stall":
            writer.write(b"\x16\x03")
        elif kind == "plain-partial":
            writer.write(hello[:3])  # part of a frame header
        elif kind == "tls-slow-login":
            for i in range(0, len(hello), len(hello) // 10 + 1):
                writer.write(hello[i : i + len(hello) // 10 + 1])
                await asyncio.sleep(deadline / 2 / 10)
        try:
            async with asyncio.timeout(deadline + 15):
                if kind == "tls-deaf":  # reads nothing more, so it never answers a close_notify
                    writer.transport.pause_reading()
                    await server.wait_event("login.failed", lambda e: e["peer"].startswith(source + ":"))
                else:
                    await until_closed(reader)
        except TimeoutError:
            return float("inf")
        return time.monotonic() - started

    kinds = ["plain-silent", "plain-partial", "tls-silent", "tls-deaf", "tls-stall", "tls-slow-login"]
    took = await asyncio.gather(*(closed_after(kind, n + 1) for n, kind in enumerate(kinds)))
    late = {k: round(t, 2) for k, t in zip(kinds, took, strict=True) if t > deadline + slack}
    assert not late, f"closed after more than the {deadline}s login deadline: {late}"
    try:
        # The peers are all still open on this side: the server must not be waiting on any of them.
        await poll(lambda: server.fd_count() <= base_fds, deadline=slack, what=f"fds back to {base_fds}")
    finally:
        for writer in peers:
            writer.transport.abort()
    failed = server.matching("login.failed", lambda e: e["peer"].startswith("127.3.0."))
    refused = server.matching("login.refused", lambda e: e["peer"].startswith("127.3.0."))
    assert len(failed) == len(kinds) - 1 and len(refused) == 1, (failed, refused)


async def turned_away(port: int, source: str) -> bool:
    """Whether a new connection from ``source`` is closed at once (within a second, long before the
    login deadline of the test that asks)."""
    try:
        reader, writer = await connect(port, source, tls=False)
    except OSError:
        return True  # reset before the connect even completed
    try:
        async with asyncio.timeout(1):
            await until_closed(reader)
        return True
    except TimeoutError:
        return False
    finally:
        writer.transport.abort()


async def test_pending_logins_are_capped_per_source_and_in_total(pierce, tmp_path: Path) -> None:
    server, port = await start_server(
        pierce, tmp_path, login_timeout_s=10.0, max_pending_logins=6, max_pending_logins_per_ip=3, stun_port=0
    )
    held = [await connect(port, "127.4.0.1", tls=False) for _ in range(3)]
    # A fourth from the same address is reset at once, long before the 10 s login deadline.
    assert await turned_away(port, "127.4.0.1")
    (away,) = await server.wait_event("login.turned_away")
    assert away["source"] == "127.4.0.1"
    assert away["reason"] == "too many connections from this address waiting to log in"
    async with asyncio.timeout(1):  # other addresses still get in
        await login(port, source="127.4.0.2")

    # Three more silent ones fill the total of 6; a seventh, from a fresh address, is reset at once.
    held += [await connect(port, f"127.4.1.{n}", tls=False) for n in range(1, 4)]
    assert await turned_away(port, "127.4.2.1")
    await server.wait_event(
        "login.turned_away", lambda e: e["reason"] == "too many connections waiting to log in"
    )

    # Once they go, everyone is welcome again, the capped address too.
    for _, w in held:
        w.close()
    await server.wait_event("login.failed", lambda e: "closed before sending" in e["error"], count=6)
    async with asyncio.timeout(1):
        await login(port, source="127.4.0.1")
        await login(port, source="127.4.2.1")


async def test_failed_logins_slow_a_source_down_and_a_fixed_token_gets_back_in(
    pierce, tmp_path: Path
) -> None:
    """Five wrong tokens in a row are free; each further one blocks the address, 1 s then 2 s (its
    connections are reset at once); the right token after the block logs in and clears the record."""
    server, port = await start_server(pierce, tmp_path, stun_port=0)
    me = "127.5.0.1"

    async def attempt(token: str) -> str:
        try:
            await login(port, source=me, token=token)
        except AuthenticationFailed as exc:
            assert "authentication failed" in str(exc)  # a named refusal, never silence
            return "wrong"
        except (OSError, ssl.SSLError):
            return "refused"
        return "in"

    async def after_block(token: str, block: float) -> str:
        async with asyncio.timeout(block + 2):
            while True:
                outcome = await attempt(token)
                if outcome != "refused":
                    return outcome
                await asyncio.sleep(0.05)  # a retry, as a client's backoff would

    assert [await attempt("a-typo") for _ in range(6)] == ["wrong"] * 6
    (blocked,) = await server.wait_event("login.blocked")
    assert (blocked["source"], blocked["failures"], blocked["block_s"]) == (me, 6, 1.0)
    assert await attempt(TOKEN) == "refused"  # even the right token: the address waits out its block
    await server.wait_event(
        "login.turned_away", lambda e: e["reason"] == "too many failed logins from this address"
    )
    assert await after_block("a-typo", 1.0) == "wrong"
    (_, again) = await server.wait_event("login.blocked", count=2)
    assert (again["failures"], again["block_s"]) == (7, 2.0)
    assert await attempt(TOKEN) == "refused"
    assert await after_block(TOKEN, 2.0) == "in"  # the typo fixed: in as soon as the block ends
    assert await attempt("a-typo") == "wrong"  # and the record is cleared: free again
    await server.wait_event("auth.failed", count=8)
    assert len(server.matching("login.blocked")) == 2


async def test_timeouts_never_close_someone_elses_socket(pierce, tmp_path: Path) -> None:
    """Bursts of strangers timing out at every step while clients keep logging in and a tunnel keeps
    carrying traffic: each socket is closed by its one owner once, so no live connection is hit."""
    raise_fd_limit()
    server, port = await start_server(pierce, tmp_path, login_timeout_s=0.3, stun_port=0)
    async with tcp_server(echo) as local:
        host, _, local_port = local.rpartition(":")
        proxy = {"type": "tcp", "name": "echo", "local_ip": host, "local_port": int(local_port)}
        client = await start_client(pierce, tmp_path, port, [proxy])
        (ready,) = await client.wait_event("proxy.ready")
        public = int(ready["remote_port"])
        stop = asyncio.Event()
        logins = visits = 0

        async def keep_logging_in() -> None:
            nonlocal logins
            while not stop.is_set():
                await login(port)
                logins += 1

        async def keep_visiting() -> None:
            nonlocal visits
            while not stop.is_set():
                reader, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.write(b"ping %d" % visits)
                writer.write_eof()
                assert await reader.read() == b"ping %d" % visits
                writer.close()
                visits += 1

        workers = [asyncio.create_task(keep_logging_in()), asyncio.create_task(keep_visiting())]
        try:
            for round_ in range(4):
                kinds = ("tls-silent", "tls-stall", "plain-silent", "tls-giant")
                outcomes = await asyncio.gather(
                    *(
                        hostile(port, kinds[i % 4], f"127.6.{round_}.{i + 1}", b"x", patience=3.0)
                        for i in range(60)
                    )
                )
                assert "held" not in outcomes, Counter(outcomes)
            stop.set()
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
    assert logins >= 10 and visits >= 10, (logins, visits)
    assert client.matching("client.disconnected") == []
    assert server.proc.returncode is None
