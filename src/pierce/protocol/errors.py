"""Errors raised when the peer breaks the wire protocol. They are the peer's fault: `RemoteError`."""

from __future__ import annotations

from typing import ClassVar

from pierce.errors import RemoteError
from pierce.protocol.messages import ErrorCode


class ProtocolError(RemoteError):
    """The peer broke the wire protocol; the connection cannot continue.

    `code` is what to put in the `Error` message sent to the peer before closing.
    """

    code: ClassVar[ErrorCode] = ErrorCode.BAD_MESSAGE


class Refused(RemoteError):
    """A refusal with a code the other side hears (`Error`, `ProxyRefused`) and a reason for people.

    Raised where a peer refused us (a login, a visit) and where we refuse a peer's request (a proxy the
    server will not open); either way the code and the reason travel together.
    """

    def __init__(self, code: ErrorCode, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the current limit allows."""


class MalformedFrame(ProtocolError):
    """A frame was empty, was not MessagePack, or did not decode into a known message."""


class UnexpectedMessage(ProtocolError):
    """A well-formed message arrived where the protocol does not allow it."""

    def __init__(self, got: object, expected: str) -> None:
        self.got = got
        self.expected = expected
        super().__init__(f"expected {expected}, got {type(got).__name__}")
