"""Memory at rest: each role imports only what it uses, seen from outside in real processes.

The processes run with ``PYTHONPROFILEIMPORTTIME=1`` (``python -X importtime``): CPython reports every module
as it is first imported, so the test reads what a server and a client loaded by the time they are logged in
and idle, without any hook in pierce. A client never imports the server's code (the server side of the proxy
kinds, the vhost router and HTTP engine, ACME, the dashboard); heavy packages load only with the feature that
needs them: aiohttp with ``[web]`` or ``admin_port``, prometheus_client with ``[web]``, aioquic and
cryptography (on a client) with the first P2P attempt, async-upnp-client only when UPnP-IGD port mapping is
tried. Neither role at rest holds code it has not used yet: the punching and direct-path code, the visiting
side, the request recorder (llhttp), the frp converter, the HTTP engine and web fronts of a server without web
ports, the server side of udp and secret proxies (UDP flows, visits, visitor sessions, rendezvous) before the
first, the config's "did you mean" (difflib), the archive modules that shutil brings (argparse's terminal
width, tempfile). A server never loads the secret exchange of visitors and owners
(`pierce.proxies.visitor_auth`), which it only relays.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from support.procs import IMPORT_TIME, PierceProcess
from support.streams import free_port
from support.stun import free_port_pair
from support.tunnel import StartPierce, start_client, start_server
from test_secret_proxies import secret_proxy, serve_secret, visit

#: Never in a client process, whatever it is configured with.
CLIENT_NEVER = (
    "pierce.server",
    "pierce.web",
    "pierce.vhost.router",
    "pierce.vhost.front",
    "pierce.vhost.http",
    "pierce.vhost.sni",
    "pierce.vhost.limits",
    "pierce.vhost.acme",
    "pierce.vhost.acme_order",
    "prometheus_client",
    "acme",
    "josepy",
)
#: Not in either role at rest: loaded by a feature, an error or a command that did not happen.
NEITHER_AT_REST = (
    "pierce.inspect.record",
    "dns",  # dnspython: only with [ddns] in client.toml
    "pierce.ddns",
    "httptools",
    "pierce.proxy_protocol",
    "pierce.frpimport.convert",
    "configparser",
    "difflib",
    "json",
    "shutil",
    "tempfile",
    "bz2",
    "lzma",
    "six",
    "pierce.log_events",  # the catalogue: read only with PIERCE_STRICT_EVENTS=1, as the suite runs
)
#: Not in an idle client with one tcp proxy.
CLIENT_AT_REST = (
    *CLIENT_NEVER,
    *NEITHER_AT_REST,
    "aiohttp",
    "aioquic",
    "pierce.p2p.quic",
    "pierce.p2p.direct",
    "pierce.p2p.gather",
    "pierce.p2p.keepalive",
    "pierce.p2p.tcp_direct",
    "pierce.p2p.visitor",
    "pierce.nat.punch",
    "pierce.nat.stun",
    "pierce.nat.stun_server",
    "pierce.client.visitor",
    "pierce.vhost",
    "pierce.portmap",
    "pierce.p2p.portmapping",
    "async_upnp_client",
    "OpenSSL",
    "service_identity",
    "cryptography",
)
#: Not in an idle server with neither [web] nor [acme], nor web or tcpmux ports, whose client has a tcp
#: proxy.
SERVER_AT_REST = (
    *NEITHER_AT_REST,
    "pierce.client",
    "pierce.vhost",
    "pierce.server.proxies.http",
    "pierce.server.proxies.https",
    "pierce.server.proxies.tcpmux",
    "pierce.server.proxies.udp",
    "pierce.server.proxies.secret",
    "pierce.server.proxies.rendezvous",
    "pierce.server.visitor_sessions",
    "pierce.proxies.visitor_auth",
    "pierce.udpflow",
    "pierce.frpimport.formats",
    "pierce.p2p",
    "pierce.nat.punch",
    "pierce.web",
    "pierce.vhost.acme",
    "pierce.vhost.acme_order",
    "aiohttp",
    "prometheus_client",
    "acme",
    "josepy",
    "aioquic",
    "pierce.p2p.quic",
    "pierce.portmap.upnp",
    "async_upnp_client",
    "OpenSSL",
    "service_identity",
)
WEB = ("aiohttp", "prometheus_client", "pierce.web.app", "pierce.web.metrics")
QUIC = ("aioquic", "pierce.p2p.quic", "cryptography")


def traced(pierce: StartPierce) -> StartPierce:
    """``pierce`` whose processes report their imports."""

    async def start(*args: str, env: dict[str, str] | None = None, **kw: Any) -> PierceProcess:
        # as users run it: the check of every event against the catalogue is the test suite's own
        return await pierce(*args, env={**(env or {}), **IMPORT_TIME, "PIERCE_STRICT_EVENTS": "0"}, **kw)

    return start


def loaded(proc: PierceProcess, packages: Iterable[str]) -> set[str]:
    """Which of ``packages`` (or modules inside them) the process has imported."""
    found = proc.imported()
    return {p for p in packages if any(m == p or m.startswith(p + ".") for m in found)}


async def test_an_idle_server_and_client_import_only_what_their_roles_use(
    pierce: StartPierce, tmp_path: Path
) -> None:
    server, port = await start_server(traced(pierce), tmp_path)
    tcp = {"name": "ssh", "type": "tcp", "local_port": free_port(), "remote_port": 0}
    client = await start_client(traced(pierce), tmp_path, port, [tcp])
    await client.wait_event("proxy.ready")
    await server.wait_event("proxy.ready")
    assert {"pierce.server.app", "pierce.server.proxies.tcp"} <= server.imported()  # the trace works
    assert {"pierce.client.app", "pierce.proxies.tcp"} <= client.imported()
    assert loaded(server, SERVER_AT_REST) == set()
    assert loaded(client, CLIENT_AT_REST) == set()


async def test_a_server_with_its_certificate_loads_no_cryptography(
    pierce: StartPierce, tmp_path: Path
) -> None:
    """cryptography (about 8 MiB) makes the certificate on the first start only; a server that starts
    with its certificate (the operator's, or the one in its state directory) checks it with ssl."""
    first, _ = await start_server(traced(pierce), tmp_path)
    assert loaded(first, ["cryptography"]) == {"cryptography"}  # it generated server.crt
    await first.stop()
    again, _ = await start_server(traced(pierce), tmp_path)
    assert "pierce.server.app" in again.imported()
    assert loaded(again, ["cryptography"]) == set()


async def test_web_and_admin_port_load_what_they_serve_with(pierce: StartPierce, tmp_path: Path) -> None:
    """The other way round: with ``[web]`` the server loads aiohttp and prometheus_client, with
    ``admin_port`` the client loads aiohttp; still no server code in the client."""
    server, port = await start_server(
        traced(pierce), tmp_path, web={"addr": "127.0.0.1", "port": free_port()}
    )
    await server.wait_event("web.listening")
    tcp = {"name": "ssh", "type": "tcp", "local_port": free_port(), "remote_port": 0}
    client = await start_client(traced(pierce), tmp_path, port, [tcp], admin_port=free_port())
    await client.wait_event("admin.listening")
    await client.wait_event("proxy.ready")
    assert loaded(server, WEB) == set(WEB)
    assert loaded(client, ("aiohttp", "pierce.client.admin")) == {"aiohttp", "pierce.client.admin"}
    assert loaded(client, CLIENT_NEVER) == set()


async def test_quic_loads_with_the_first_p2p_attempt(pierce: StartPierce, tmp_path: Path) -> None:
    """An owner with an xtcp proxy loads aioquic and cryptography when a visitor first asks for a direct
    path, not before; the visitor with its attempt."""
    xtcp = secret_proxy("xtcp", "p2p-ssh", f"127.0.0.1:{free_port()}")
    server, port, owner = await serve_secret(traced(pierce), tmp_path, [xtcp], stun_port=free_port_pair())
    assert loaded(owner, QUIC) == set()
    visitor = await visit(traced(pierce), port, "p2p-ssh", "--p2p")
    await visitor.wait_event("p2p.direct", lambda e: e["proto"] == "udp", timeout=20)
    await owner.wait_event("p2p.direct", lambda e: e["proto"] == "udp", timeout=20)
    assert loaded(owner, QUIC) == set(QUIC)
    assert loaded(visitor, ("aioquic", "pierce.p2p.quic")) == {"aioquic", "pierce.p2p.quic"}
    assert loaded(owner, CLIENT_NEVER) == loaded(visitor, CLIENT_NEVER) == set()
    assert loaded(owner, ["pierce.portmap", "pierce.p2p.portmapping"]) == set()  # direct = "off"
    assert "pierce.server.proxies.secret" in server.imported()
    assert loaded(server, ("aioquic", "pierce.p2p.quic", "pierce.proxies.visitor_auth")) == set()
