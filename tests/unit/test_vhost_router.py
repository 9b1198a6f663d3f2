"""Domain and path routing: exact names, wildcards, locations, fall-through, errors, and properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.errors import PierceError
from pierce.vhost.router import (
    DomainRouter,
    InvalidDomain,
    InvalidLocation,
    Route,
    RouteTaken,
    candidate_domains,
    full_domain,
    location_matches,
    normalize_domain,
    normalize_host,
    normalize_location,
)


def router_of(*routes: tuple[str, str, str]) -> DomainRouter[str]:
    router: DomainRouter[str] = DomainRouter()
    for domain, location, owner in routes:
        router.add(domain, location, owner)
    return router


def test_exact_name_wins_over_wildcard() -> None:
    router = router_of(("*.example.com", "/", "wild"), ("nas.example.com", "/", "nas"))
    assert router.lookup("nas.example.com", "/") == "nas"
    assert router.lookup("ha.example.com", "/") == "wild"


def test_most_specific_wildcard_wins_at_any_depth() -> None:
    router = router_of(
        ("*.com", "/", "com"),
        ("*.example.com", "/", "example"),
        ("*.dev.example.com", "/", "dev"),
        ("*.b.dev.example.com", "/", "b"),
    )
    assert router.lookup("a.b.dev.example.com", "/") == "b"
    assert router.lookup("x.y.z.b.dev.example.com", "/") == "b"
    assert router.lookup("b.dev.example.com", "/") == "dev"
    assert router.lookup("a.c.dev.example.com", "/") == "dev"
    assert router.lookup("dev.example.com", "/") == "example"
    assert router.lookup("example.com", "/") == "com"
    assert router.lookup("example.org", "/") is None


def test_wildcard_does_not_match_its_own_parent_name() -> None:
    router = router_of(("*.dev.example.com", "/", "dev"))
    assert router.lookup("dev.example.com", "/") is None
    assert router.lookup("x.dev.example.com", "/") == "dev"


def test_candidates_go_from_the_name_to_the_shortest_wildcard() -> None:
    assert list(candidate_domains("a.b.dev.example.com")) == [
        "a.b.dev.example.com",
        "*.b.dev.example.com",
        "*.dev.example.com",
        "*.example.com",
        "*.com",
    ]


def test_longest_location_wins_on_segment_boundaries() -> None:
    router = router_of(
        ("app.example.com", "/", "site"),
        ("app.example.com", "/api", "api"),
        ("app.example.com", "/api/v2", "v2"),
    )
    assert router.lookup("app.example.com", "/") == "site"
    assert router.lookup("app.example.com", "/index.html") == "site"
    assert router.lookup("app.example.com", "/api") == "api"
    assert router.lookup("app.example.com", "/api/") == "api"
    assert router.lookup("app.example.com", "/api/x") == "api"
    assert router.lookup("app.example.com", "/api?q=1") == "api"
    assert router.lookup("app.example.com", "/api#top") == "api"
    assert router.lookup("app.example.com", "/apix") == "site"
    assert router.lookup("app.example.com", "/api/v2") == "v2"
    assert router.lookup("app.example.com", "/api/v2/users?id=3") == "v2"
    assert router.lookup("app.example.com", "/api/v20") == "api"


def test_location_matching_helper() -> None:
    assert location_matches("/", "")
    assert location_matches("/", "*")
    assert location_matches("/api", "/api")
    assert not location_matches("/api", "/API")
    assert not location_matches("/api", "/ap")
    assert not location_matches("/api", "")


def test_name_without_a_matching_location_falls_through_to_wildcard() -> None:
    router = router_of(("a.example.com", "/api", "a-api"), ("*.example.com", "/", "wild"))
    assert router.lookup("a.example.com", "/api/users") == "a-api"
    assert router.lookup("a.example.com", "/") == "wild"
    assert router.lookup("a.example.com", "/apis") == "wild"
    assert router.match("a.example.com", "/") == Route("*.example.com", "/", "wild")


def test_no_location_anywhere_is_no_route() -> None:
    router = router_of(("a.example.com", "/api", "a-api"))
    assert router.lookup("a.example.com", "/other") is None
    assert router.match("a.example.com", "/other") is None


def test_two_owners_share_one_domain_by_location() -> None:
    router = router_of(("shop.example.com", "/", "frontend"), ("shop.example.com", "/api", "backend"))
    assert router.lookup("shop.example.com", "/cart") == "frontend"
    assert router.lookup("shop.example.com", "/api/cart") == "backend"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("NAS.Example.COM", "nas.example.com"),
        ("nas.example.com:8080", "nas.example.com"),
        ("nas.example.com.", "nas.example.com"),
        ("nas.example.com.:443", "nas.example.com"),
        ("  nas.example.com  ", "nas.example.com"),
        ("[2001:DB8::1]:8080", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[broken", ""),
        ("2001:db8::1", "2001:db8::1"),
        (b"NAS.example.com:80", "nas.example.com"),
        ("", ""),
        ("ü.example.com", ""),
        ("\u212a.example.com", ""),
        ("a b.example.com", ""),
        ("*.example.com", ""),
        ("a." * 200 + "com", ""),
    ],
)
def test_host_normalisation(host: str | bytes, expected: str) -> None:
    assert normalize_host(host) == expected


def test_lookup_normalises_host_and_accepts_bytes() -> None:
    router = router_of(("NAS.example.com.", "/Files/", "nas"))
    assert router.routes() == [Route("nas.example.com", "/Files", "nas")]
    assert router.lookup("nas.EXAMPLE.com:8080", "/Files/a") == "nas"
    assert router.lookup(b"nas.example.com.", b"/Files?x") == "nas"
    assert router.lookup("nas.example.com", "/files") is None


def test_hosts_that_cannot_be_names_match_nothing() -> None:
    router = router_of(("*.example.com", "/", "wild"))
    assert router.lookup("*.example.com", "/") is None
    assert router.lookup("", "/") is None
    assert router.lookup("ü.example.com", "/") is None
    assert router.lookup(("a." * 200) + "example.com", "/") is None


def test_taken_route_keeps_its_owner_out_of_the_text_and_changes_nothing() -> None:
    router = router_of(("nas.example.com", "/", "proxy nas of client laptop"))
    with pytest.raises(RouteTaken) as caught:
        router.add_all(["other.example.com", "NAS.example.com"], ["/"], "proxy nas2 of client pc")
    assert caught.value.owner == "proxy nas of client laptop"
    assert caught.value.domain == "nas.example.com"
    assert caught.value.location == "/"
    assert "laptop" not in str(caught.value)  # refusals never say whose a domain is
    assert "nas.example.com" in str(caught.value)
    assert router.lookup("other.example.com") is None
    assert len(router) == 1


def test_same_domain_other_location_is_not_taken() -> None:
    router = router_of(("nas.example.com", "/", "a"))
    router.add("nas.example.com", "/api", "b")
    with pytest.raises(RouteTaken):
        router.add("nas.example.com", "/api/", "c")
    assert len(router) == 2


def test_add_all_routes_every_pair_once() -> None:
    router: DomainRouter[str] = DomainRouter()
    added = router.add_all(["a.example.com", "A.example.com.", "b.example.com"], ["/", "/x", "/x/"], "p")
    assert [(r.domain, r.location) for r in added] == [
        ("a.example.com", "/"),
        ("a.example.com", "/x"),
        ("b.example.com", "/"),
        ("b.example.com", "/x"),
    ]
    assert len(router) == 4


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("", "expected a domain name"),
        (".", "expected a domain name"),
        ("*", "wildcard"),
        ("a.*.example.com", "only once"),
        ("*.*.example.com", "only once"),
        ("**.example.com", "only once"),
        ("*example.com", "wildcard"),
        ("a..example.com", "empty label"),
        (".example.com", "empty label"),
        ("-a.example.com", "must not start or end"),
        ("a-.example.com", "must not start or end"),
        ("a b.example.com", "may hold only"),
        ("nas.example.com:80", "may hold only"),
        ("bücher.example", "xn--"),
        ("a" * 64 + ".example.com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
    ],
)
def test_invalid_domains_are_refused_clearly(domain: str, says: str) -> None:
    with pytest.raises(InvalidDomain, match=says):
        normalize_domain(domain)
    router: DomainRouter[str] = DomainRouter()
    with pytest.raises(InvalidDomain):
        router.add(domain, "/", "x")
    assert len(router) == 0


@pytest.mark.parametrize(
    "domain",
    [
        "example.com",
        "*.example.com",
        "a-b.example.com",
        "_acme.example.com",
        "xn--bcher-kva.example",
        "localhost",
    ],
)
def test_valid_domains(domain: str) -> None:
    assert normalize_domain(domain.upper() + ".") == domain


def test_domain_errors_are_value_errors_for_config_validation() -> None:
    assert issubclass(InvalidDomain, ValueError)
    assert issubclass(InvalidLocation, ValueError)
    assert issubclass(RouteTaken, PierceError)


@pytest.mark.parametrize(
    ("location", "expected"), [("/", "/"), ("//", "/"), ("/api/", "/api"), ("/a/b", "/a/b")]
)
def test_location_normalisation(location: str, expected: str) -> None:
    assert normalize_location(location) == expected


@pytest.mark.parametrize("location", ["", "api", "/a b", "/a?x", "/a#b", "/a\x00", "*"])
def test_invalid_locations_are_refused(location: str) -> None:
    with pytest.raises(InvalidLocation, match="location"):
        normalize_location(location)


def test_remove_one_route_and_every_route_of_an_owner() -> None:
    router = router_of(
        ("a.example.com", "/", "p1"),
        ("b.example.com", "/", "p1"),
        ("b.example.com", "/api", "p2"),
    )
    assert router.remove("B.example.com.", "/api/") == "p2"
    assert router.remove("b.example.com", "/api") is None
    assert router.remove("not a domain", "/") is None
    assert router.lookup("b.example.com", "/api") == "p1"
    removed = router.remove_value("p1")
    assert removed == [Route("a.example.com", "/", "p1"), Route("b.example.com", "/", "p1")]
    assert len(router) == 0
    assert router.routes() == []


def test_routes_are_listed_in_order() -> None:
    router = router_of(("b.example.com", "/x", "2"), ("a.example.com", "/", "1"), ("b.example.com", "/", "3"))
    assert router.routes() == [
        Route("a.example.com", "/", "1"),
        Route("b.example.com", "/", "3"),
        Route("b.example.com", "/x", "2"),
    ]


def test_full_domain_from_subdomain() -> None:
    assert full_domain("NAS", "Example.com.") == "nas.example.com"
    with pytest.raises(InvalidDomain, match="subdomain_host"):
        full_domain("nas", "")
    with pytest.raises(InvalidDomain, match="single label"):
        full_domain("a.b", "example.com")
    with pytest.raises(InvalidDomain, match="single label"):
        full_domain("*", "example.com")
    with pytest.raises(InvalidDomain, match="single label"):
        full_domain("", "example.com")
    with pytest.raises(InvalidDomain, match="wildcard"):
        full_domain("nas", "*.example.com")
    with pytest.raises(InvalidDomain, match="may hold only"):
        full_domain("-nas", "example.com")


# Properties. Labels come from a tiny alphabet so that generated names overlap often.
labels = st.sampled_from(["a", "b", "ab", "c"])
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
domains = st.tuples(st.booleans(), names).map(lambda t: f"*.{t[1]}" if t[0] else t[1])
locations = st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3).map(lambda segs: "/" + "/".join(segs))
paths = st.tuples(locations, st.sampled_from(["", "/", "x", "?q", "#f", "/b"])).map("".join)
route_specs = st.lists(st.tuples(domains, locations), max_size=12)


def reference_match(routes: list[Route[int]], host: str, path: str) -> Route[int] | None:
    """The rules written the slow way: rank every matching route by name specificity, then location."""

    def name_rank(domain: str) -> int | None:
        if domain == host:
            return 10_000
        if domain.startswith("*.") and host.endswith(domain[1:]):
            return len(domain)
        return None

    ranked = [
        ((rank, len(route.location)), route)
        for route in routes
        if (rank := name_rank(route.domain)) is not None and location_matches(route.location, path)
    ]
    return max(ranked, key=lambda item: item[0])[1] if ranked else None


@given(st.one_of(st.text(), st.binary()), st.one_of(st.text(), st.binary()))
def test_lookup_never_raises(host: str | bytes, path: str | bytes) -> None:
    router = router_of(("*.example.com", "/", "w"), ("a.example.com", "/api", "a"))
    assert router.lookup(host, path) in (None, "w", "a")


@given(route_specs, names, paths)
@settings(max_examples=300)
def test_lookup_agrees_with_the_rules_written_the_slow_way(
    specs: list[tuple[str, str]], host: str, path: str
) -> None:
    router: DomainRouter[int] = DomainRouter()
    for owner, (domain, location) in enumerate(specs):
        with contextlib.suppress(RouteTaken):
            router.add(domain, location, owner)
    assert router.match(host, path) == reference_match(router.routes(), host, path)


@given(route_specs)
def test_adding_then_removing_leaves_the_router_empty(specs: list[tuple[str, str]]) -> None:
    router: DomainRouter[int] = DomainRouter()
    added = []
    for owner, (domain, location) in enumerate(specs):
        try:
            added.append(router.add(domain, location, owner))
        except RouteTaken as taken:
            assert isinstance(taken.owner, int)
    assert len(router) == len(added) == len(router.routes())
    for route in added:
        host = "x" + route.domain[1:] if route.domain.startswith("*.") else route.domain
        assert router.lookup(host, route.location) is not None
        assert router.remove(route.domain, route.location) == route.value
    assert len(router) == 0
    assert router.routes() == []
    for domain, location in specs:
        assert router.lookup(domain.removeprefix("*."), location) is None


@given(route_specs)
def test_remove_value_removes_exactly_that_owners_routes(specs: list[tuple[str, str]]) -> None:
    router: DomainRouter[int] = DomainRouter()
    for index, (domain, location) in enumerate(specs):
        with contextlib.suppress(RouteTaken):
            router.add(domain, location, index % 2)
    before = router.routes()
    removed = router.remove_value(0)
    assert removed == [route for route in before if route.value == 0]
    assert router.routes() == [route for route in before if route.value == 1]
