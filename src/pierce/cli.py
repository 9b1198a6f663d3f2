"""Command-line interface: argument parsing only. Each command builds a config and runs one coroutine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from pierce import __version__, config
from pierce.addr import HostPort
from pierce.errors import ConfigError, LocalError, PierceError

log = logging.getLogger("pierce")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _add_logging_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default if suppress else "info",
        help="how much to log (default: info)",
    )
    parser.add_argument(
        "--json-logs",
        action="store_true",
        default=default if suppress else False,
        help="log one JSON object per line on stderr, for machines",
    )


def _help_width() -> int:
    """What argparse's formatters take from ``shutil.get_terminal_size()``: $COLUMNS, else the width of
    the terminal on stdout, else 80; less 2."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout with the same width, found without shutil: argparse makes a formatter for
    every argument it adds, and shutil imports the archive modules (bz2, lzma, zlib), about half a MiB
    in every server and client, which never print help."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, _help_width() if width is None else width)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`HelpFormatter` keeping the description's and epilog's line breaks."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose help uses `HelpFormatter`; its subcommands' parsers are of this class too
    (``add_subparsers`` makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pierce",
        description="Reach services behind NAT: reverse tunnels, port mapping, P2P.",
    )
    parser.add_argument("--version", action="version", version=f"pierce {__version__}")
    _add_logging_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_map = sub.add_parser(
        "map",
        help="forward local TCP/UDP ports to other hosts (like socat/rinetd)",
        description=(
            "Forward LISTEN to TARGET. One rule from the command line, or several from a TOML file "
            "with [[rules]] tables (listen, target, protocol, allow, idle_timeout, connect_timeout)."
        ),
        epilog=(
            "examples:\n"
            "  pierce map 0.0.0.0:10022 192.168.0.10:22\n"
            "  pierce map --udp 0.0.0.0:5353 10.0.0.5:53\n"
            "  pierce map '[::]:8080' web.internal:80 --allow 10.0.0.0/8\n"
            "  pierce map -c map.toml"
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_map, suppress=True)
    p_map.add_argument("listen", nargs="?", help="address to accept on, host:port ([v6]:port; port 0 = any)")
    p_map.add_argument(
        "target", nargs="?", help="address to forward to, host:port (names resolved per connection)"
    )
    p_map.add_argument("-c", "--config", type=Path, help="TOML file with [[rules]] tables")
    p_map.add_argument("--udp", action="store_true", help="forward UDP instead of TCP")
    p_map.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept only these sources (repeatable), e.g. 10.0.0.0/8",
    )
    p_map.add_argument(
        "--idle-timeout",
        type=float,
        default=config.DEFAULT_UDP_IDLE_TIMEOUT,
        metavar="S",
        help="UDP: end a client's session after S idle seconds (default 60)",
    )
    p_map.add_argument(
        "--connect-timeout",
        type=float,
        default=config.DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help="TCP: give up connecting to the target after S seconds (default 10)",
    )
    p_map.set_defaults(func=cmd_map)

    p_server = sub.add_parser(
        "server",
        help="run the public server: control port, proxies' public ports",
        description="Run the pierce server. Settings from -c FILE; flags override the file.",
    )
    _add_logging_flags(p_server, suppress=True)
    p_server.add_argument("-c", "--config", type=Path, help="server.toml")
    p_server.add_argument("--bind-addr", help="control port address (default 0.0.0.0)")
    p_server.add_argument("--bind-port", type=int, help="control port (default 7000)")
    _add_token_flags(
        p_server, "the shared secret clients log in with", " (default: generated, kept in --state-dir)"
    )
    p_server.add_argument(
        "--allow-weak-token",
        action="store_true",
        default=None,
        help="accept a token estimated below 64 bits (config: allow_weak_token)",
    )
    p_server.add_argument(
        "--allow-ports", action="append", metavar="RANGE", help='e.g. "6000-7000" (repeatable)'
    )
    p_server.add_argument("--state-dir", help="where the generated certificate and token are kept")
    p_server.add_argument("--vhost-http-port", type=int, help="public port of http proxies (by Host)")
    p_server.add_argument("--vhost-https-port", type=int, help="public port of https proxies (by SNI)")
    p_server.add_argument("--subdomain-host", help='e.g. "example.com": subdomain = "nas" => nas.example.com')
    p_server.set_defaults(func=cmd_server)

    p_client = sub.add_parser(
        "client",
        help="run the client behind NAT: expose local services through the server",
        description=(
            "Run the pierce client from -c client.toml, or one proxy from the command line:\n"
            "  pierce client --server H:7000 --token-file T tcp 22 --remote-port 6022\n"
            "  pierce client --server H:7000 --token-file T http 8080 --domain nas.example.com\n"
            "Control a running client through its admin API: pierce client reload|status|stop -c client.toml"
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_client, suppress=True)
    p_client.add_argument("-c", "--config", type=Path, help="client.toml")
    p_client.add_argument("--server", metavar="HOST:PORT", help="the server's control address")
    _add_token_flags(p_client, "the server's shared secret")
    p_client.add_argument(
        "--state-dir", help="where the admin token and the pinned server certificates are kept"
    )
    p_client.add_argument("--user", help="log in as this user of the server's [[users]] (default: default)")
    p_client.add_argument("--pool-count", type=int, help="ready work connections (default 4)")
    p_client.add_argument("--server-fingerprint", help="pin the server certificate (SHA-256)")
    p_client.add_argument("--client-id", help="stable name of this client")
    p_client.add_argument(
        "--no-encrypt-data",
        action="store_true",
        help="send data unencrypted after login (the server must agree)",
    )
    actions = p_client.add_subparsers(dest="action", metavar="ACTION")
    for kind in ("tcp", "udp"):
        p_kind = actions.add_parser(kind, help=f"expose one local {kind.upper()} port")
        p_kind.add_argument("local_port", type=int)
        p_kind.add_argument("--local-ip", default="127.0.0.1")
        p_kind.add_argument("--remote-port", type=int, default=0, help="public port (0 = the server picks)")
        p_kind.add_argument("--name", help=f"proxy name (default {kind}-LOCAL_PORT)")
        p_kind.add_argument(
            "--direct",
            action="store_true",
            help='also reachable through a port mapping on the router (direct = "auto")',
        )
    for kind in ("http", "https"):
        p_kind = actions.add_parser(kind, help=f"expose one local web service by domain ({kind.upper()})")
        p_kind.add_argument("local_port", type=int)
        p_kind.add_argument("--local-ip", default="127.0.0.1")
        p_kind.add_argument("--domain", action="append", dest="domains", metavar="DOMAIN", help="repeatable")
        p_kind.add_argument("--subdomain", help="one label under the server's subdomain_host")
        p_kind.add_argument("--name", help=f"proxy name (default {kind}-LOCAL_PORT)")
    for action in ("reload", "status", "stop"):
        p_action = actions.add_parser(
            action, help=f"{action} the running client (needs admin_port in its config)"
        )
        # `pierce client reload -c client.toml` as well as `pierce client -c client.toml reload`
        p_action.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="client.toml")
        p_action.add_argument(
            "--state-dir", default=argparse.SUPPRESS, help="the running client's state directory"
        )
    p_client.set_defaults(func=cmd_client)

    p_demo = sub.add_parser(
        "demo",
        help="see a tunnel work: server, client and a web service on loopback, no config",
        description=(
            "Start a server, a client and a small web service on loopback (free ports, a random token, a "
            "temporary certificate), expose the service, fetch it through the tunnel and show a live panel. "
            "With --check: run verified requests, print one line per step and exit 0 or 1."
        ),
    )
    _add_logging_flags(p_demo, suppress=True)
    p_demo.add_argument("--check", action="store_true", help="verify end to end, print the result, exit 0/1")
    p_demo.add_argument(
        "--duration", type=float, default=0.0, metavar="S", help="stop the panel after S seconds (0 = Ctrl-C)"
    )
    p_demo.set_defaults(func=cmd_demo)

    _add_nat_command(sub)
    _add_map_port_command(sub)
    _add_visit_command(sub)
    _add_trust_command(sub)
    _add_import_frp_command(sub)
    _add_systemd_command(sub)
    _add_status_command(sub)
    _add_ddns_command(sub)

    p_verify = sub.add_parser("verify", help="check a config file without starting anything")
    _add_logging_flags(p_verify, suppress=True)
    p_verify.add_argument("-c", "--config", type=Path, required=True, help="the file to check")
    p_verify.add_argument("--kind", choices=sorted(config.KINDS), help="file kind (default: guess from keys)")
    p_verify.set_defaults(func=cmd_verify)

    p_verifier = sub.add_parser(
        "verifier",
        help="print a user's SRP verifier for server.toml (the server then holds no token)",
        description=(
            "Reads the user's token from PIERCE_TOKEN or, when that is unset, from standard input (a "
            "prompt on a terminal), and prints the line to put in the user's [[users]] table. "
            "The token never appears on the command line."
        ),
    )
    _add_logging_flags(p_verifier, suppress=True)
    p_verifier.add_argument("user", help="the user's name in [[users]]")
    p_verifier.set_defaults(func=cmd_verifier)
    return parser


def cmd_verifier(args: argparse.Namespace) -> int:
    import getpass
    import os

    from pierce.protocol.pake import make_verifier

    token = os.environ.get("PIERCE_TOKEN")
    if not token:
        token = getpass.getpass(f"token of {args.user}: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.rstrip("\r\n")
    if not token:
        raise ConfigError(["verifier: expected the user's token (PIERCE_TOKEN or standard input)"])
    problems = config.user_problems(args.user)
    if problems:
        raise ConfigError([f"verifier: {p}" for p in problems])
    print(f'verifier = "{make_verifier(args.user, token).text()}"')
    return 0


def map_config_from_args(args: argparse.Namespace) -> config.MapConfig:
    if args.config is not None:
        if args.listen or args.target:
            raise ConfigError(["map: give either -c FILE or LISTEN TARGET, not both"])
        return config.load(args.config, config.MapConfig)
    if not (args.listen and args.target):
        raise ConfigError(
            ["map: expected LISTEN and TARGET (e.g. 0.0.0.0:10022 192.168.0.10:22), or -c FILE"]
        )
    rule: dict[str, Any] = {
        "listen": args.listen,
        "target": args.target,
        "protocol": "udp" if args.udp else "tcp",
        "allow": args.allow,
        "idle_timeout": args.idle_timeout,
        "connect_timeout": args.connect_timeout,
    }
    return config.convert({"rules": [rule]}, config.MapConfig, "command line")


def cmd_map(args: argparse.Namespace) -> int:
    from pierce.mapper import run_map
    from pierce.runtime import run

    cfg = map_config_from_args(args)
    run(run_map(cfg))
    return EXIT_OK


#: The environment variable a token may come from (after --token and --token-file, before the config).
TOKEN_ENV = "PIERCE_TOKEN"


def _add_token_flags(parser: argparse.ArgumentParser, what: str, default: str = "") -> None:
    parser.add_argument(
        "--token",
        help=f"{what}{default}; visible to every user in `ps`: prefer --token-file or {TOKEN_ENV}",
    )
    parser.add_argument("--token-file", type=Path, metavar="FILE", help=f"read {what} from FILE")


def _token(args: argparse.Namespace) -> str | None:
    """The token from the command line or environment: --token, else --token-file, else $PIERCE_TOKEN.

    None means "from the config file, if any" (the last in that order).
    """
    import os

    from pierce.logs import event
    from pierce.statedir import read_secret

    if args.token:
        event(
            log,
            logging.WARNING,
            "token.on_command_line",
            "--token: the token is visible to every user of this machine (ps, /proc) and in your shell "
            f"history; use --token-file FILE or the {TOKEN_ENV} environment variable",
        )
        return str(args.token)
    if args.token_file is not None:
        try:
            token = read_secret(args.token_file)
        except LocalError as exc:
            raise ConfigError([f"--token-file: {exc}"]) from None
        if token is None:
            raise ConfigError([f"--token-file: {args.token_file}: file not found"])
        return token
    return os.environ.get(TOKEN_ENV) or None


def server_config_from_args(args: argparse.Namespace) -> config.ServerConfig:
    doc: dict[str, Any] = config.load_toml(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    overrides = {
        "bind_addr": args.bind_addr,
        "bind_port": args.bind_port,
        "token": _token(args),
        "allow_weak_token": args.allow_weak_token,
        "allow_ports": args.allow_ports,
        "state_dir": args.state_dir,
        "vhost_http_port": args.vhost_http_port,
        "vhost_https_port": args.vhost_https_port,
        "subdomain_host": args.subdomain_host,
    }
    doc.update({k: v for k, v in overrides.items() if v is not None})
    return config.convert(doc, config.ServerConfig, source)


def client_config_from_args(args: argparse.Namespace) -> config.ClientConfig:
    doc: dict[str, Any] = _client_doc(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    if args.server:
        from pierce.addr import parse_host_port

        try:
            hp = parse_host_port(args.server)
        except ValueError as exc:
            raise ConfigError([f"--server: {exc}"]) from None
        doc["server_addr"], doc["server_port"] = hp.host, hp.port
    overrides = {
        "token": _token(args),
        "user": args.user,
        "pool_count": args.pool_count,
        "server_fingerprint": args.server_fingerprint,
        "client_id": args.client_id,
        "state_dir": args.state_dir,
    }
    doc.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_encrypt_data:
        doc.setdefault("transport", {})["encrypt_data"] = False
    if args.action in ("tcp", "udp"):
        doc.setdefault("proxies", []).append(
            {
                "type": args.action,
                "name": args.name or f"{args.action}-{args.local_port}",
                "local_ip": args.local_ip,
                "local_port": args.local_port,
                "remote_port": args.remote_port,
                "direct": "auto" if args.direct else "off",
            }
        )
    if args.action in ("http", "https"):
        web: dict[str, Any] = {
            "type": args.action,
            "name": args.name or f"{args.action}-{args.local_port}",
            "local_ip": args.local_ip,
            "local_port": args.local_port,
            "custom_domains": args.domains or [],
        }
        if args.subdomain:
            web["subdomain"] = args.subdomain
        doc.setdefault("proxies", []).append(web)
    if "server_addr" not in doc:
        raise ConfigError([f"{source}: server_addr: missing (give -c FILE or --server HOST:PORT)"])
    return config.convert(doc, config.ClientConfig, source)


def cmd_server(args: argparse.Namespace) -> int:
    from pierce.runtime import run
    from pierce.server.app import run_server

    run(run_server(server_config_from_args(args)))
    return EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    from pierce.client.app import run_client
    from pierce.runtime import run

    if args.action in ("reload", "status", "stop"):
        from pierce.client.admin import call_admin

        # reads only the admin address and credential: the file may be broken
        return call_admin(args.config, args.action, state_dir=args.state_dir)
    cfg = client_config_from_args(args)
    return run(run_client(cfg, args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    from pierce.demo import run_demo
    from pierce.runtime import run

    return run(run_demo(check=args.check, duration=args.duration, json_logs=args.json_logs))


def _add_nat_command(sub: Any) -> None:
    p_nat = sub.add_parser(
        "nat",
        help="what NAT is this host behind, and can a direct (P2P) connection work?",
        description=(
            "Run the RFC 5780 NAT behaviour tests against a STUN server (a pierce server answers on UDP "
            "3478): public and local address, mapping and filtering, hairpinning, carrier-grade NAT, and "
            "the outlook for direct connections, in plain words or with --json."
        ),
    )
    _add_logging_flags(p_nat, suppress=True)
    p_nat.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help="STUN server (default: server_addr of ~/.config/pierce/client.toml; port 3478)",
    )
    p_nat.add_argument("--json", action="store_true", help="print one JSON object")
    p_nat.add_argument(
        "--lifetime", action="store_true", help="also measure how long an idle UDP mapping lives (slow)"
    )
    p_nat.add_argument(
        "--lifetime-max", type=float, default=120.0, metavar="S", help="longest idle gap tried (default 120)"
    )
    p_nat.add_argument(
        "--timeout", type=float, default=3.0, metavar="S", help="wait for each test's answer (default 3)"
    )
    p_nat.add_argument(
        "--no-router",
        action="store_true",
        help="do not ask the router which port mapping protocols (PCP, NAT-PMP) it answers",
    )
    p_nat.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where --lifetime records the measured lifetime for the client's direct paths (default: "
        "state_dir of ~/.config/pierce/client.toml, else the client's default)",
    )
    p_nat.set_defaults(func=cmd_nat)


def _add_map_port_command(sub: Any) -> None:
    p = sub.add_parser(
        "map-port",
        help="ask the router to forward a public port to a local one (PCP, NAT-PMP, UPnP-IGD)",
        description=(
            "Ask the router (the default gateway) for a port mapping over PCP, or NAT-PMP when it only "
            "speaks that, or UPnP-IGD when neither answers (--method picks one); print the public address "
            "and port; renew the lease before it ends and make the "
            "mapping again after a router restart; delete it on exit (Ctrl-C, SIGTERM). Says so when the "
            "router's external address is itself private or shared (another NAT beyond it, e.g. CGNAT)."
        ),
    )
    _add_logging_flags(p, suppress=True)
    p.add_argument("protocol", type=str.upper, choices=["TCP", "UDP"], help="TCP or UDP")
    p.add_argument("local_port", type=int, metavar="LOCAL_PORT", help="the port of the local service")
    p.add_argument(
        "--public-port", type=int, default=0, metavar="N", help="the public port wanted (default: any)"
    )
    p.add_argument(
        "--lifetime",
        type=int,
        default=7200,
        metavar="S",
        help="lease asked for, seconds; renewed at half of what the router grants (default 7200)",
    )
    p.add_argument("--gateway", metavar="IP", help="the router (default: the default route's gateway)")
    p.add_argument(
        "--method",
        choices=["auto", "pcp", "nat-pmp", "upnp"],
        default="auto",
        help="the port mapping protocol: auto (PCP, then NAT-PMP, then UPnP-IGD; the default) or only one",
    )
    p.add_argument(
        "--upnp-url",
        metavar="URL",
        help="UPnP-IGD: the router's root description URL (default: found by SSDP on the LAN)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per mapping made")
    p.set_defaults(func=cmd_map_port)


def cmd_map_port(args: argparse.Namespace) -> int:
    import ipaddress
    import json

    from pierce.portmap.client import ALL_METHODS, Mapping, Method
    from pierce.portmap.lease import describe, hold_mapping, reachable_from_internet
    from pierce.portmap.pcp import Protocol
    from pierce.runtime import run

    problems = []
    if not 1 <= args.local_port <= 65535:
        problems.append(f"map-port: LOCAL_PORT: expected 1-65535, got {args.local_port}")
    if not 0 <= args.public_port <= 65535:
        problems.append(f"map-port: --public-port: expected 0 (any) or 1-65535, got {args.public_port}")
    if args.lifetime < 1:
        problems.append(f"map-port: --lifetime: expected seconds >= 1, got {args.lifetime}")
    gateway = None
    if args.gateway:
        try:
            gateway = ipaddress.IPv4Address(args.gateway)
        except ValueError:
            problems.append(f"map-port: --gateway: expected an IPv4 address, got {args.gateway!r}")
    if args.upnp_url and not args.upnp_url.startswith(("http://", "https://")):
        problems.append(f"map-port: --upnp-url: expected an http:// URL, got {args.upnp_url!r}")
    if args.upnp_url and args.method not in ("auto", "upnp"):
        problems.append(f"map-port: --upnp-url: only with --method upnp or auto, not {args.method}")
    if problems:
        raise ConfigError(problems)
    methods = ALL_METHODS if args.method == "auto" else (Method(args.method),)

    def show(mapping: Mapping) -> None:
        reachable = reachable_from_internet(mapping.external_ip)
        if args.json:
            doc = {
                "protocol": mapping.protocol.name.lower(),
                "local_port": mapping.internal_port,
                "public_ip": str(mapping.external_ip) if mapping.external_ip else None,
                "public_port": mapping.external_port,
                "via": mapping.method.value,
                "gateway": str(mapping.gateway),
                "lifetime": mapping.lifetime,
                "reachable_from_internet": reachable,
            }
            print(json.dumps(doc), flush=True)
            return
        print(f"mapped: {describe(mapping)}", flush=True)
        if not reachable:
            print(
                f"warning: the router's external address {mapping.external_ip} is private or shared: "
                "another NAT (e.g. your carrier's) sits beyond it, so this mapping is not reachable from "
                "the internet",
                file=sys.stderr,
                flush=True,
            )

    run(
        hold_mapping(
            Protocol[args.protocol],
            args.local_port,
            external_port=args.public_port,
            lifetime=args.lifetime,
            gateway=gateway,
            methods=methods,
            upnp_location=args.upnp_url,
            on_change=show,
        )
    )
    return EXIT_OK


def nat_server_from_args(args: argparse.Namespace) -> HostPort:
    """``pierce nat``'s STUN server: ``--server HOST[:PORT]``, else ``server_addr`` of the user's
    client.toml (only that key is read, so the rest of the file may be broken); port 3478 by default."""
    from pierce.nat.discover import stun_server

    if args.server:
        text, source = args.server, "--server"
    else:
        path = config.user_client_config()
        text = config.read_key(path, config.ClientConfig, "server_addr") if path.is_file() else None
        if not text:
            raise ConfigError(
                [f"nat: no STUN server: pass --server HOST[:PORT], or set server_addr in {path}"]
            )
        source = f"{path}: server_addr"
    try:
        return stun_server(text, default_port=config.DEFAULT_STUN_PORT)
    except ValueError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None


def cmd_nat(args: argparse.Namespace) -> int:
    import json

    from pierce.nat.classify import NatReport
    from pierce.nat.discover import discover
    from pierce.runtime import run

    if args.timeout <= 0 or args.lifetime_max <= 0:
        raise ConfigError(["nat: --timeout and --lifetime-max: expected seconds > 0"])
    server = nat_server_from_args(args)

    async def both() -> NatReport:
        report = await discover(
            server,
            timeout=args.timeout,
            lifetime=args.lifetime,
            lifetime_max=args.lifetime_max,
            lifetime_resolution=max(args.lifetime_max / 24, 0.5),
        )
        if not args.no_router:
            from pierce.portmap.probe import probe_router

            public = report.public_address.ip if report.public_address is not None else None
            report.port_mapping = await probe_router(public)
        return report

    report = run(both())
    print(json.dumps(report.as_json()) if args.json else report.as_text())
    if report.mapping_lifetime_s is not None and report.public_address is not None:
        _record_lifetime(args, str(report.public_address.ip), report.mapping_lifetime_s)
    return EXIT_OK if report.public_address is not None else EXIT_FAILURE


def _record_lifetime(args: argparse.Namespace, public_ip: str, lifetime_s: float) -> None:
    """Keep the measured lifetime where the client's direct paths find it (their keepalive)."""
    from pierce.p2p import keepalive
    from pierce.statedir import state_dir_for

    configured = args.state_dir
    if configured is None:
        path = config.user_client_config()
        configured = config.read_key(path, config.ClientConfig, "state_dir") if path.is_file() else ""
    try:
        written = keepalive.record(state_dir_for("client", configured or ""), public_ip, lifetime_s)
    except OSError as exc:
        print(f"nat: the lifetime was not recorded: {exc}", file=sys.stderr)
        return
    interval = keepalive.keepalive_for(config.P2pOptions().keepalive_s, lifetime_s)
    print(
        f"nat: recorded in {written}: direct paths from {public_ip} keep alive every {interval:g} s",
        file=sys.stderr,
    )


def _add_visit_command(sub: Any) -> None:
    p_visit = sub.add_parser(
        "visit",
        help="reach a secret (stcp/sudp) proxy of another client through the server, on a local port",
        description=(
            "Open a local port whose connections (or datagrams, with --udp) reach the secret proxy NAME "
            "through the server. The secret is checked at start: a wrong secret or an unknown name exits "
            "with status 1."
        ),
        epilog=(
            "example:\n"
            "  pierce visit --server H:7000 --token-file T --name ssh --secret K --bind 127.0.0.1:9000\n"
            "  ssh -p 9000 127.0.0.1"
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_visit, suppress=True)
    p_visit.add_argument("--server", metavar="HOST:PORT", required=True, help="the server's control address")
    _add_token_flags(p_visit, "the server's shared secret")
    p_visit.add_argument("--name", required=True, help="the secret proxy to reach")
    p_visit.add_argument("--secret", help="the proxy's secret_key (or PIERCE_SECRET)")
    p_visit.add_argument(
        "--bind",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="local address to open (port 0 = any; logged)",
    )
    p_visit.add_argument(
        "--udp", action="store_true", help="the proxy is sudp (xudp with --p2p): carry UDP datagrams"
    )
    p_visit.add_argument(
        "--p2p", action="store_true", help="the proxy is xtcp (xudp with --udp): peer to peer where possible"
    )
    p_visit.add_argument("--no-fallback", action="store_true", help="with --p2p: never go through the server")
    p_visit.add_argument(
        "--fallback-timeout-ms", type=int, help="with --p2p: wait this long for a direct path (default 2000)"
    )
    p_visit.add_argument(
        "--user", help="log in as this user of the server's [[users]] (allow_users names users)"
    )
    p_visit.add_argument("--client-id", help="the name this visitor gives, for logs")
    p_visit.add_argument("--server-fingerprint", help="pin the server certificate (SHA-256)")
    p_visit.add_argument("--state-dir", help="where the pinned server certificates are kept")
    p_visit.set_defaults(func=cmd_visit)


def visit_config_from_args(args: argparse.Namespace) -> config.ClientConfig:
    import os

    from pierce.addr import parse_host_port

    problems = []
    try:
        server = parse_host_port(args.server)
    except ValueError as exc:
        problems.append(f"--server: {exc}")
    try:
        bind = parse_host_port(args.bind, allow_port_zero=True)
    except ValueError as exc:
        problems.append(f"--bind: {exc}")
    secret = args.secret or os.environ.get("PIERCE_SECRET")
    if not secret:
        problems.append("--secret: expected the proxy's secret_key (or set PIERCE_SECRET)")
    if problems:
        raise ConfigError(problems)
    doc: dict[str, Any] = {
        "server_addr": server.host,
        "server_port": server.port,
        "token": _token(args) or "",
        "user": args.user or "",
        "client_id": args.client_id or "",
        "server_fingerprint": args.server_fingerprint or "",
        "state_dir": args.state_dir or "",
        "visitors": [
            {
                "type": ("xudp" if args.udp else "xtcp") if args.p2p else ("sudp" if args.udp else "stcp"),
                "name": f"visit-{args.name}",
                "server_name": args.name,
                "secret_key": secret,
                "bind_addr": bind.host,
                "bind_port": bind.port,
            }
        ],
    }
    if args.no_fallback or args.fallback_timeout_ms is not None:
        if not args.p2p:
            raise ConfigError(["--no-fallback, --fallback-timeout-ms: only with --p2p"])
        visitor = doc["visitors"][0]
        visitor["fallback"] = not args.no_fallback
        if args.fallback_timeout_ms is not None:
            visitor["fallback_timeout_ms"] = args.fallback_timeout_ms
    return config.convert(doc, config.ClientConfig, "command line")


def cmd_visit(args: argparse.Namespace) -> int:
    from pierce.client.visitor import run_visit
    from pierce.runtime import run

    return run(run_visit(visit_config_from_args(args)))


def _add_trust_command(sub: Any) -> None:
    p_trust = sub.add_parser(
        "trust",
        help="list or forget the server certificates pinned on first use",
        description=(
            "A client that pins nothing in its config records each server's certificate the first time it "
            "connects (known_hosts in its state directory) and refuses a different one later. After a "
            "server's certificate changed on purpose, --forget it: the next connection records the new one."
        ),
    )
    _add_logging_flags(p_trust, suppress=True)
    what = p_trust.add_mutually_exclusive_group(required=True)
    what.add_argument("--forget", metavar="HOST:PORT", help="remove the pinned certificate of this server")
    what.add_argument("--list", action="store_true", help="print every pinned server and fingerprint")
    p_trust.add_argument("-c", "--config", type=Path, help="client.toml (for its state_dir)")
    p_trust.add_argument("--state-dir", help="the client's state directory")
    p_trust.set_defaults(func=cmd_trust)


def cmd_trust(args: argparse.Namespace) -> int:
    from pierce.addr import parse_host_port
    from pierce.known_hosts import KnownHosts
    from pierce.statedir import state_dir_for

    configured = args.state_dir
    if configured is None and args.config is not None:
        configured = config.read_key(args.config, config.ClientConfig, "state_dir")
    known = KnownHosts.in_state_dir(state_dir_for("client", configured or ""))
    if args.list:
        for known_pin in known.load().values():
            print(f"{known_pin.server} {known_pin.fingerprint}")
        return EXIT_OK
    try:
        server = parse_host_port(args.forget)
    except ValueError as exc:
        raise ConfigError([f"--forget: {exc}"]) from None
    pin = known.forget(server)
    if pin is None:
        print(f"error: {server} has no pinned certificate in {known.path}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"forgot certificate {pin.fingerprint} of {pin.server} ({known.path}); the next connection "
        "records the certificate the server presents then"
    )
    return EXIT_OK


def _add_import_frp_command(sub: Any) -> None:
    p_import = sub.add_parser(
        "import-frp",
        help="convert an frpc/frps config (TOML, YAML, JSON or legacy INI) to pierce's TOML",
        description=(
            "Convert an frp config file to a pierce client.toml or server.toml, printed on standard output. "
            "Every frp option pierce cannot carry over gets a warning on standard error naming the file, "
            "the option and why; options pierce has built in are listed as comments on top. Exit status 0: "
            "converted (warnings allowed); 1: the file is unreadable or invalid, or the result does not load."
        ),
        epilog=(
            "examples:\n"
            "  pierce import-frp frpc.toml > client.toml\n"
            "  pierce import-frp /etc/frp/frps.ini > server.toml\n"
            "  pierce import-frp --kind client frpc.yaml > client.toml"
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_import, suppress=True)
    p_import.add_argument("file", type=Path, help="the frp config file (format told by content and suffix)")
    p_import.add_argument(
        "--kind",
        choices=["client", "server"],
        help="frpc (client) or frps (server); default: guess from keys",
    )
    p_import.set_defaults(func=cmd_import_frp)


def cmd_import_frp(args: argparse.Namespace) -> int:
    from pierce.frpimport import convert_file
    from pierce.frpimport.formats import Role

    try:
        result = convert_file(args.file, Role(args.kind) if args.kind else None)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(result.text)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_FAILURE if result.problems else EXIT_OK


def _client_doc(path: Path) -> dict[str, Any]:
    """client.toml, or an frpc file converted on the fly (with the warnings `pierce import-frp` gives)."""
    from pierce.frpimport import is_frp_file

    if not is_frp_file(path):
        return config.load_toml(path)
    from pierce.frpimport import convert_file  # the converter loads only for an frp file
    from pierce.frpimport.formats import Role

    result = convert_file(path, Role.CLIENT)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return result.doc


def _add_systemd_command(sub: Any) -> None:
    p_unit = sub.add_parser(
        "systemd-unit",
        help="print the systemd unit of the server or the client, starting this pierce",
        description=(
            "Print pierce-ROLE.service (shipped in the package) with ExecStart naming this pierce:\n"
            "  pierce systemd-unit client > /etc/systemd/system/pierce-client.service\n"
            "The comments at its top say where the config goes."
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_unit, suppress=True)
    p_unit.add_argument("role", choices=["server", "client"])
    p_unit.set_defaults(func=cmd_systemd_unit)


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    from pierce import systemd

    pierce = systemd.entry_point()
    if systemd.hidden_by_protect_home(pierce):
        print(
            f"warning: {pierce} is under a home directory, which the unit's ProtectHome= hides from the "
            "service: install pierce in /opt or /usr/local (see the README)",
            file=sys.stderr,
        )
    sys.stdout.write(systemd.unit(args.role, pierce))
    return EXIT_OK


def _add_status_command(sub: Any) -> None:
    p_status = sub.add_parser(
        "status",
        help="show a running client's (or, with --server, server's) proxies, clients and traffic",
        description=(
            "Print the state of a running client from its admin API (admin_port in client.toml):\n"
            "  pierce status -c client.toml\n"
            "or of a running server from its JSON API ([web] in server.toml, or --url):\n"
            "  pierce status --server -c server.toml\n"
            "  pierce status --server --url http://203.0.113.5:7500 --user admin --password-file pw\n"
            "With --json: the APIs' answers as one JSON document."
        ),
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_logging_flags(p_status, suppress=True)
    p_status.add_argument("-c", "--config", type=Path, help="the running client's (or server's) config")
    p_status.add_argument("--server", action="store_true", help="the server's state, from its [web] API")
    p_status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p_status.add_argument("--state-dir", help="the running client's state directory (its admin token)")
    p_status.add_argument("--url", help="with --server: the web API's address, http://HOST:PORT")
    p_status.add_argument("--user", help="with --server: the [web] user (default: the file's)")
    p_status.add_argument(
        "--password-file",
        type=Path,
        help="with --server: a file holding the [web] password (or set PIERCE_WEB_PASSWORD)",
    )
    p_status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    import os

    from pierce import status

    if args.server:
        password = os.environ.get("PIERCE_WEB_PASSWORD")
        if args.password_file is not None:
            try:
                password = args.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    [f"--password-file: cannot read {args.password_file}: {exc.strerror}"]
                ) from None
        endpoint = status.web_endpoint(args.config, url=args.url, user=args.user, password=password)
        result: Any = status.server_status(endpoint)
    else:
        for flag in ("url", "user", "password_file"):
            if getattr(args, flag) is not None:
                raise ConfigError([f"--{flag.replace('_', '-')}: only with --server"])
        if args.config is None:
            raise ConfigError(["status: give -c client.toml (the running client's config), or --server"])
        result = status.client_status(args.config, state_dir=args.state_dir)
    status.print_status(result, json_out=args.json)
    return EXIT_OK


def _add_ddns_command(sub: Any) -> None:
    p = sub.add_parser(
        "ddns-update",
        help="point the [ddns] name of client.toml at this host's public address, once",
        description=(
            "Send one dynamic DNS update (RFC 2136, signed with the TSIG key of [ddns] in client.toml) "
            "that points the name at --ip, or, without --ip, at the public address the pierce server's "
            'STUN responder sees (server_addr, [ddns] stun_port) and, with [ddns] ipv6 = "auto", at this '
            "host's public IPv6 address (AAAA; deleted when it has none). Nothing is sent when the primary "
            "already holds those addresses. Exit 0 when the name points there, 1 when the update failed (the "
            "server's answer, e.g. NOTAUTH or BADKEY, is printed)."
        ),
    )
    _add_logging_flags(p, suppress=True)
    p.add_argument("-c", "--config", type=Path, required=True, help="client.toml with a [ddns] table")
    p.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDR",
        help="the public address: IPv4 (the A record) and/or IPv6 (AAAA); repeat for both",
    )
    p.set_defaults(func=cmd_ddns_update)


def cmd_ddns_update(args: argparse.Namespace) -> int:
    import ipaddress

    from pierce.runtime import run

    options = config.read_key(args.config, config.ClientConfig, "ddns")  # only [ddns] must be right
    if options is None:
        raise ConfigError([f"{args.config}: ddns: missing: add a [ddns] table (see the README)"])
    families = []
    for text in args.ip:
        try:
            families.append(ipaddress.ip_address(text).version)
        except ValueError:
            raise ConfigError([f'--ip: expected an IPv4 or IPv6 address, got "{text}"']) from None
    if len(set(families)) != len(families):
        raise ConfigError(["--ip: expected at most one IPv4 and one IPv6 address"])
    server = None if args.ip else config.read_key(args.config, config.ClientConfig, "server_addr")
    if not args.ip and not server:
        raise ConfigError([f"{args.config}: server_addr: expected the pierce server (or pass --ip)"])
    return run(_ddns_update(options, args.ip, server))


async def _ddns_update(options: config.DdnsOptions, addresses: list[str], server: str | None) -> int:
    from pierce.ddns import DdnsUpdater, UpdateFailed, addresses_to_publish, stun_public_address

    absent: list[str] = []
    if server is not None:
        try:
            addresses, absent = addresses_to_publish(
                await stun_public_address(server, options.stun_port), options
            )
        except (OSError, TimeoutError) as exc:
            print(
                f"ddns-update: cannot learn the public address from {server}:{options.stun_port} (STUN): "
                f"{exc or 'no answer'}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    updater = DdnsUpdater(options)
    updater.want(*addresses, absent=absent)
    try:
        await updater.sync()
    except UpdateFailed as exc:
        print(f"ddns-update: cannot update {updater.label}: {exc.detail} ({exc.rcode})", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{updater.label} -> {' '.join(a for a in updater.wanted.values() if a is not None)}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    path: Path = args.config
    doc = config.load_toml(path)
    kind = args.kind or config.sniff_kind(doc)
    if kind is None:
        raise ConfigError(
            [
                f"{path}: cannot tell what kind of config this is; pass --kind "
                f"({', '.join(sorted(config.KINDS))})"
            ]
        )
    struct, _ = config.KINDS[kind]
    loaded = config.convert(doc, struct, str(path))
    summary = ""
    if isinstance(loaded, config.MapConfig):
        summary = f", {len(loaded.rules)} rule{'s' if len(loaded.rules) != 1 else ''}"
    print(f"{path}: OK ({kind} config{summary})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from pierce.logs import setup_logging

    args = build_parser().parse_args(argv)  # the parser is not kept: a running role never needs it again
    setup_logging(args.log_level, json_logs=args.json_logs)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except LocalError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except PierceError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except msgspec.ValidationError as exc:  # pragma: no cover - config.convert wraps these
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
