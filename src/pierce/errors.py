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


#: Where a value sits in a config document: keys and list indexes, e.g. ``("rules", 1, "target")``.
KeyPath = tuple[str | int, ...]

_BARE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def format_key_path(path: KeyPath) -> str:
    """``("rules", 1, "target")`` -> ``rules[1].target``; keys TOML could not write bare are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if part and set(part) <= _BARE_KEY else '"' + part.replace('"', '\\"') + '"'
        text += f".{key}" if text else key
    return text


class InvalidValue(ValueError):
    """A config value that a Struct's ``__post_init__`` (or a check it calls) refuses.

    ``key`` is where the value sits, relative to that Struct (``("idle_timeout",)``,
    ``("custom_domains", 2)``); ``message`` says what was expected. Config decoding puts the Struct's
    own key path and the file name in front, so ``key`` is never parsed back out of the text.
    """

    def __init__(self, key: str | KeyPath, message: str) -> None:
        self.key: KeyPath = (key,) if isinstance(key, str) else key
        self.message = message
        super().__init__(f"{format_key_path(self.key)}: {message}" if self.key else message)
