"""Plain HTTP/1.1 heads read at C speed, for the recorder's fast path; anything else is llhttp's.

The recorder (`pierce.inspect.record`) meets most messages at a boundary with their whole head in one
piece of bytes, and most heads are plain: a common method, an origin-form target, ``HTTP/1.1``, well-formed
fields, a body framed by one ``Content-Length`` (or none), the connection kept alive. For those one compiled
regex (:data:`REQUEST_HEAD`, :data:`RESPONSE_HEAD`) checks the whole head, finds its end and picks out what
frames the message; the fields themselves are kept as the raw head and split only when they are shown
(:func:`fields`).

What the patterns do not match, the recorder hands from its first byte to the llhttp parser
(`pierce.vhost.http_parse.MessageParser`), which reads it as it always did, malformed or not. So the fast
path must never take a head llhttp would refuse or read differently: each pattern accepts a subset of what
llhttp accepts (tests/unit/test_inspect_fast_path.py feeds both the same streams, valid and mutated, and
compares what they recorded). What sends a message to llhttp: a
partial head, a start line other than ``METHOD /target HTTP/1.1`` (methods in :data:`METHODS`) or
``HTTP/1.1 NNN reason`` with NNN 200 to 599, a field line with bytes a token or a value may not hold,
obs-fold, ``Transfer-Encoding``, ``Upgrade``, a ``Connection`` (or ``Proxy-Connection``) other than
``keep-alive``, a ``Content-Length`` that is repeated or not 1 to 18 digits, and a head of more than
:data:`MAX_FAST_FIELDS` fields or about :data:`MAX_FAST_HEAD` bytes.
"""

from __future__ import annotations

import re

#: Heads longer than this (bytes, from the start line to the empty line) go to llhttp ...
MAX_FAST_HEAD = 16 * 1024 - 128
#: ... and heads with more fields than this. Within both, the recorder keeps a head whole: what it
#: counts of the fields (names, values and 4 bytes each) is at most the head's length plus its fields.
MAX_FAST_FIELDS = 100
#: Request methods the fast path reads (CONNECT and the rest go to llhttp).
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")

# RFC 9110 tchar for names; values: HTAB, SP, VCHAR and obs-text (llhttp refuses other controls).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]++"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*+"


def _fields(length_group: int) -> bytes:
    """Field lines, then the empty line. Most names do not begin like a field llhttp frames or ends a
    message by (one character class says so); the others are Content-Length (once: a second one finds
    group ``length_group``, its value, set; 1 to 18 digits), Connection or Proxy-Connection of keep-alive,
    or any other name but Transfer-Encoding and Upgrade."""
    return (
        rb"(?:(?![CcPpTtUu])" + _TOKEN + rb":" + _VALUE + rb"\r\n"
        rb"|(?i:content-length):(?(" + str(length_group).encode() + rb")(?!)"
        rb"|[ \t]*+(?P<length>[0-9]{1,18})[ \t]*+\r\n)"
        rb"|(?i:(?:proxy-)?connection):[ \t]*+(?i:keep-alive)[ \t]*+\r\n"
        rb"|(?!(?i:content-length|(?:proxy-)?connection|transfer-encoding|upgrade):)"
        + _TOKEN
        + rb":"
        + _VALUE
        + rb"\r\n"
        rb"){0," + str(MAX_FAST_FIELDS).encode() + rb"}+\r\n"
    )


#: Matches a plain request head from its first byte (``match(data, pos, pos + MAX_FAST_HEAD)``): groups
#: ``method``, ``target`` and ``length`` (the Content-Length, None without); no match: llhttp reads it.
REQUEST_HEAD = re.compile(
    rb"(?P<method>" + b"|".join(METHODS) + rb") (?P<target>/[!-~]*+) HTTP/1\.1\r\n" + _fields(3)
)
#: The same for a response head: groups ``status`` and ``length``.
RESPONSE_HEAD = re.compile(rb"HTTP/1\.1 (?P<status>[2-5][0-9][0-9]) " + _VALUE + rb"\r\n" + _fields(2))
_FIELD_LINE = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*)\r\n")


def fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a head the fast path read, as llhttp gives them (leading whitespace of a
    value dropped, trailing kept)."""
    return _FIELD_LINE.findall(raw, raw.index(b"\n") + 1)


def request_line(raw: bytes) -> tuple[bytes, bytes]:
    """Method and target of a request head the fast path read."""
    method, target, _ = raw[: raw.index(b"\r\n")].split(b" ")
    return method, target


def reason(raw: bytes) -> bytes:
    """The reason phrase of a response head the fast path read."""
    return raw[13 : raw.index(b"\r\n")]
