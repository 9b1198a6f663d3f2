"""Domain names of web proxies: the one definition that config checks and the server's router share.

A domain (``custom_domains``, ``subdomain_host``, and a subdomain joined to it) is accepted when:

- it is ASCII: internationalised names are written in their ``xn--`` form;
- it is at most 253 characters, once surrounding white space and one trailing dot are dropped;
- its labels are 1 to 63 letters, digits, ``-`` and ``_``, and no label starts or ends with ``-``;
- where wildcards are allowed, it may start with one ``*.``, as in ``*.dev.example.com``.

Case does not matter: the normalised form is lower case, without the trailing dot.

A ``subdomain`` is one such label (``nas``), without ``.`` or ``*``.

Why ``_`` is allowed: host names in the strict sense (RFC 952, RFC 1123 section 2.1) have no ``_``, but
DNS names may (RFC 2181 section 11), and names with ``_`` are in real use, mostly inside networks
(container and compose service names, some Windows host names). Browsers and tools such as curl send
them in the Host header and in TLS SNI, so the router has to be able to route them, and a config check
that refused what the router serves would be the odd one out. ``-`` keeps the host name rule (not at
either end of a label) because a name like ``-x`` looks like a command-line option to many tools.
Certificate authorities do not certify names with ``_`` (CA/Browser Forum Baseline Requirements), so
automatic HTTPS (``https_auto``) refuses them separately, with its other CA rules
(`pierce.vhost.acme.check_names`).
"""

from __future__ import annotations

import re

#: Longest DNS name in its text form (RFC 1035 section 2.3.4, without the trailing dot).
MAX_DOMAIN_LENGTH = 253
#: Longest label (RFC 1035 section 2.3.4).
MAX_LABEL_LENGTH = 63
WILDCARD_PREFIX = "*."

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_EXPECTED_DOMAIN = 'a domain name like "nas.example.com"'
_EXPECTED_LABEL = 'one label like "nas"'


class InvalidDomain(ValueError):
    """A domain name or subdomain label that pierce does not accept; the message says why."""


def normalize_domain(domain: str, *, wildcard: bool = True) -> str:
    """The canonical form of a domain name (lower case, no trailing dot); raises InvalidDomain.

    ``wildcard=False`` refuses a leading ``*.`` too (for names that must be plain, such as
    ``subdomain_host``). The rules are in the module docstring.
    """
    if not isinstance(domain, str):
        raise InvalidDomain(f"expected {_EXPECTED_DOMAIN}, got {domain!r}")

    def invalid(reason: str) -> InvalidDomain:
        return InvalidDomain(f'expected {_EXPECTED_DOMAIN}, got "{domain}": {reason}')

    text = domain.strip()
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise invalid("it is empty")
    if not name.isascii():
        raise invalid("it is not ASCII; write internationalised names in their xn-- form")
    name = name.lower()
    if len(name) > MAX_DOMAIN_LENGTH:
        raise invalid(f"it is longer than {MAX_DOMAIN_LENGTH} characters")
    is_wildcard = name.startswith(WILDCARD_PREFIX)
    if is_wildcard and not wildcard:
        raise invalid('a wildcard ("*.") is not allowed here; give a plain name')
    rest = name[len(WILDCARD_PREFIX) :] if is_wildcard else name
    if "*" in rest:
        raise invalid('a wildcard is allowed only once, as the leading "*." (as in "*.dev.example.com")')
    for label in rest.split("."):
        if not label:
            raise invalid("it has an empty label (two dots in a row, or a leading dot)")
        if reason := _label_problem(label):
            raise invalid(reason)
    return name


def normalize_label(label: str) -> str:
    """A ``subdomain``: one label, in lower case; raises InvalidDomain."""
    if not isinstance(label, str):
        raise InvalidDomain(f"expected {_EXPECTED_LABEL}, got {label!r}")
    name = label.strip().lower()
    reason = (
        'a subdomain is a single label, without "." or "*"'
        if not name or "." in name or "*" in name
        else _label_problem(name)
    )
    if reason:
        raise InvalidDomain(f'expected {_EXPECTED_LABEL}, got "{label}": {reason}')
    return name


def _label_problem(label: str) -> str:
    """Why a lower-case label is not valid, or ``""``."""
    if not label.isascii():
        return f'label "{label}" is not ASCII; write internationalised names in their xn-- form'
    if len(label) > MAX_LABEL_LENGTH:
        return f'label "{label}" is longer than {MAX_LABEL_LENGTH} characters'
    if not _LABEL.fullmatch(label):
        return (
            f'label "{label}" may hold only letters, digits, "-" and "_", and must not start or end with "-"'
        )
    return ""
