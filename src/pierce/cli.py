"""Command-line interface: argument parsing only. Each command builds a config and runs one coroutine."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from pierce import __version__, config
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    p_verify = sub.add_parser("verify", help="check a config file without starting anything")
    _add_logging_flags(p_verify, suppress=True)
    p_verify.add_argument("-c", "--config", type=Path, required=True, help="the file to check")
    p_verify.add_argument("--kind", choices=sorted(config.KINDS), help="file kind (default: guess from keys)")
    p_verify.set_defaults(func=cmd_verify)
    return parser


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

    parser = build_parser()
    args = parser.parse_args(argv)
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
