"""Which of this host's IPv6 addresses [ddns] publishes as AAAA: the kernel's ``/proc/net/if_inet6`` table
read by `pierce.ddns.global_ipv6_addresses` / `public_ipv6`, and what `addresses_to_publish` hands on."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pierce import config
from pierce.config import DdnsOptions
from pierce.ddns import addresses_to_publish, global_ipv6_addresses, public_ipv6
from pierce.errors import ConfigError

#: address ifindex prefixlen scope flags ifname, as the kernel prints them.
TABLE = """\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000021122fffe334455 02 40 20 80     eth0
fd770000000000000000000000000010 02 40 00 80     eth0
20010db8000000000000000000000010 02 40 00 80     eth0
2a0b4e07007700000000000000000099 02 40 00 01     eth0
2a0b4e07007700000000000000000030 02 40 00 a0     eth0
2a0b4e07007700000000000000000031 02 40 00 88     eth0
2a0b4e0700770000021122fffe3344zz 02 40 00 00     eth0
2a0b4e07007700000000000000000020 02 40 00 00     eth0
2a0b4e07007700000000000000000010 02 40 00 80     eth0
2a0b4e07007700000000000000000040 02 40 00 c0     eth0
"""


def test_only_stable_global_addresses_count_hand_configured_first() -> None:
    # Not: loopback, link-local, ULA, documentation (not global), temporary (0x01), deprecated (0x20),
    # failed DAD (0x08), a malformed line. Tentative (0x40) counts: it is valid once DAD ends.
    found = [str(ip) for ip in global_ipv6_addresses(TABLE)]
    assert found == ["2a0b:4e07:77::10", "2a0b:4e07:77::40", "2a0b:4e07:77::20"]
    assert not ipaddress.IPv6Address("2001:db8::10").is_global


def test_public_ipv6_keeps_the_published_one_while_it_is_there(tmp_path: Path) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(TABLE)
    assert public_ipv6(table=table) == "2a0b:4e07:77::10"
    assert public_ipv6(prefer="2a0b:4e07:77::20", table=table) == "2a0b:4e07:77::20"
    assert public_ipv6(prefer="2a0b:4e07:77::99", table=table) == "2a0b:4e07:77::10"  # temporary: not kept
    table.write_text(TABLE.splitlines()[1] + "\n")
    assert public_ipv6(table=table) is None


def options(**extra: object) -> DdnsOptions:
    return DdnsOptions(
        server="192.0.2.53", zone="example.com", name="home", key_name="k", key_secret="c2VjcmV0", **extra
    )  # type: ignore[arg-type]


def test_addresses_to_publish_follows_the_ipv6_setting() -> None:
    # STUN over IPv6 (the pierce server reached over IPv6) already is the public IPv6 address.
    assert addresses_to_publish("2a0b::1", options()) == (["2a0b::1"], [])
    # ipv6 = "off": the AAAA record is left alone.
    assert addresses_to_publish("198.51.100.7", options(ipv6="off")) == (["198.51.100.7"], [])
    addresses, absent = addresses_to_publish("198.51.100.7", options())
    assert addresses[0] == "198.51.100.7" and (len(addresses) == 2) != (absent == ["AAAA"])


def test_ipv6_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match=r'ddns\.ipv6: expected "auto" or "off", got "yes"'):
        config.convert(
            {"server_addr": "x", "ddns": {**vars_of(options()), "ipv6": "yes"}}, config.ClientConfig, "c.toml"
        )


def vars_of(o: DdnsOptions) -> dict[str, object]:
    return {f: getattr(o, f) for f in o.__struct_fields__}
