"""The error types of pierce, split by whose fault the error is.

`LocalError` means our side was asked to do something it cannot (bad config, port in use);
`RemoteError` means the peer misbehaved (bad frame, wrong token). Each connection task catches
`PierceError` at one boundary, logs it and carries on, so one bad peer never stops an accept loop.
"""

from __future__ import annotations


class PierceError(Exception):
    """Base of every error pierce raises on purpose."""


class LocalError(PierceError):
    """Something on our side is wrong: configuration, resources, environment."""


class RemoteError(PierceError):
    """The peer sent something we cannot accept."""


class ConfigError(LocalError):
    """A configuration file or command-line value is invalid.

    `problems` holds every problem found, each already formatted as
    ``file: key.path: what was expected``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
