"""Domain names: one set of rules (pierce.domains) for config checks and the server's router."""

from __future__ import annotations

import pytest

from pierce import config
from pierce.domains import InvalidDomain, normalize_domain, normalize_label
from pierce.errors import ConfigError
from pierce.proxies.http import HttpProxyConfig
from pierce.vhost.router import DomainRouter, full_domain

VALID = [
    ("example.com", "example.com"),
    ("NAS.Example.COM.", "nas.example.com"),
    ("  nas.example.com  ", "nas.example.com"),
    ("localhost", "localhost"),
    ("*.dev.example.com", "*.dev.example.com"),
    ("a-b.example.com", "a-b.example.com"),
    ("a--b.example.com", "a--b.example.com"),
    ("_acme.example.com", "_acme.example.com"),
    ("my_service.internal", "my_service.internal"),
    ("a_.example.com", "a_.example.com"),
    ("_.example.com", "_.example.com"),
    ("123.example.com", "123.example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    (".".join(["a" * 62] * 4) + ".a", ".".join(["a" * 62] * 4) + ".a"),  # 253 characters
]

INVALID = [
    ("", "it is empty"),
    (".", "it is empty"),
    ("a.com..", "empty label"),
    ("a..b.com", "empty label"),
    (".a.com", "empty label"),
    ("-a.example.com", "must not start or end"),
    ("a-.example.com", "must not start or end"),
    ("a b.example.com", "may hold only"),
    ("a.example.com:80", "may hold only"),
    ("a/b.example.com", "may hold only"),
    ("bücher.example", "xn--"),
    ("a" * 64 + ".com", "longer than 63"),
    (".".join(["a" * 62] * 4) + ".ab", "longer than 253"),
    ("*", "wildcard"),
    ("*example.com", "wildcard"),
    ("a.*.example.com", "only once"),
    ("*.*.example.com", "only once"),
]


@pytest.mark.parametrize(("domain", "normal"), VALID)
def test_valid_domains_are_normalised(domain: str, normal: str) -> None:
    assert normalize_domain(domain) == normal


@pytest.mark.parametrize(("domain", "why"), INVALID)
def test_invalid_domains_say_why(domain: str, why: str) -> None:
    with pytest.raises(InvalidDomain, match=why) as info:
        normalize_domain(domain)
    assert str(info.value).startswith(f'expected a domain name like "nas.example.com", got "{domain}": ')


def test_wildcards_can_be_refused() -> None:
    assert normalize_domain("*.example.com") == "*.example.com"
    with pytest.raises(InvalidDomain, match="wildcard"):
        normalize_domain("*.example.com", wildcard=False)


@pytest.mark.parametrize(
    ("label", "normal"), [("nas", "nas"), ("NAS", "nas"), ("my_app", "my_app"), ("a-1", "a-1")]
)
def test_valid_labels(label: str, normal: str) -> None:
    assert normalize_label(label) == normal


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("", "single label"),
        ("a.b", "single label"),
        ("*", "single label"),
        ("-a", "must not start or end"),
        ("a-", "must not start or end"),
        ("a b", "may hold only"),
        ("é", "xn--"),
        ("a" * 64, "longer than 63"),
    ],
)
def test_invalid_labels_say_why(label: str, why: str) -> None:
    with pytest.raises(InvalidDomain, match=why):
        normalize_label(label)


def config_accepts(custom_domains: list[str], subdomain: str = "") -> bool:
    proxy = {"type": "http", "name": "w", "local_port": 80, "custom_domains": custom_domains}
    if subdomain:
        proxy["subdomain"] = subdomain
    try:
        config.convert({"server_addr": "h", "token": "t", "proxies": [proxy]}, config.ClientConfig, "c")
    except ConfigError:
        return False
    return True


def router_accepts(domain: str) -> bool:
    try:
        DomainRouter[str]().add(domain, "/", "p")
    except InvalidDomain:
        return False
    return True


@pytest.mark.parametrize("domain", [d for d, _ in VALID] + [d for d, _ in INVALID])
def test_config_and_router_agree_on_custom_domains(domain: str) -> None:
    assert config_accepts([domain]) == router_accepts(domain)


@pytest.mark.parametrize("subdomain", ["nas", "my_app", "NAS", "a.b", "-a", "a b", "*"])
def test_config_and_router_agree_on_subdomains(subdomain: str) -> None:
    try:
        full_domain(subdomain, "example.com")
    except InvalidDomain:
        router = False
    else:
        router = True
    assert config_accepts([], subdomain) == router


@pytest.mark.parametrize("host", ["example.com", "*.example.com", "my_host.lan", "a..b"])
def test_config_and_router_agree_on_subdomain_host(host: str) -> None:
    try:
        config.convert({"token": "Kq7vB2mN9pL4sR8tW3zY6c", "subdomain_host": host}, config.ServerConfig, "s")
    except ConfigError:
        in_config = False
    else:
        in_config = True
    try:
        full_domain("nas", host)
    except InvalidDomain:
        in_router = False
    else:
        in_router = True
    assert in_config == in_router


def test_config_keeps_the_normalised_domain() -> None:
    proxy = {"type": "http", "name": "w", "local_port": 80, "custom_domains": ["NAS.Example.com."]}
    cfg = config.convert({"server_addr": "h", "token": "t", "proxies": [proxy]}, config.ClientConfig, "c")
    assert isinstance(cfg.proxies[0], HttpProxyConfig)
    assert cfg.proxies[0].custom_domains == ["nas.example.com"]
