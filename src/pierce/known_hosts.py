"""Server certificates pinned on first use, like SSH's known_hosts.

A client that pins nothing in its config (no ``server_fingerprint``, no ``trusted_ca_file``) records
the SHA-256 fingerprint of the certificate a server presents the first time it connects to that
``host:port``, in the file ``known_hosts`` of its state directory. Every later connection, from
``pierce client`` or ``pierce visit``, must present the same certificate: a different one is refused
(`CertificateChanged`) right after the TLS handshake, before the login is sent.

The file is text, one server a line, written by pierce and editable by hand::

    # comment
    my.vps.example:7000 3a:4f:...:e1
    [2001:db8::1]:7000 sha256:3A4F...E1

Blank lines and ``#`` comments are skipped; a fingerprint may be written in any form
`pierce.tls.normalize_fingerprint` accepts; host names are compared without regard to case. A line
that is none of these is an error naming the file and line (a damaged file must not silently unpin a
server). The file is replaced whole and atomically, mode ``0600``. Two processes recording at the same
moment may lose one of the new lines; that server is then recorded again at its next connection.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from pierce.addr import HostPort, parse_host_port
from pierce.errors import LocalError
from pierce.tls import (
    FingerprintMismatch,
    certificate_fingerprint,
    make_private_dir,
    normalize_fingerprint,
    write_private,
)

#: The file's name inside the client's state directory.
FILE_NAME = "known_hosts"
#: A file larger than this is refused (it would hold tens of thousands of servers).
MAX_FILE_SIZE = 1 << 20

_HEADER = (
    "# pierce: server certificates pinned on first use (HOST:PORT SHA-256 fingerprint).\n"
    "# To accept a server's new certificate: pierce trust --forget HOST:PORT (or delete its line).\n"
)


class KnownHostsError(LocalError):
    """The known_hosts file cannot be read or has a line that is not ``HOST:PORT FINGERPRINT``."""


class PinNotSaved(KnownHostsError):
    """A first certificate could not be recorded (full disk, read-only state directory): the check
    passed, as it does on any first use, but the next connection will be a first use again."""


class CertificateChanged(FingerprintMismatch):
    """The server presents a certificate other than the one recorded when it was first seen."""

    def __init__(self, *, server: str, expected: str, got: str, path: Path, line: int) -> None:
        self.server = server
        self.expected = expected
        self.got = got
        self.path = path
        import shlex  # only for this message

        state_dir = shlex.quote(str(path.parent))
        Exception.__init__(
            self,
            f"the certificate of server {server} has changed since it was first seen: recorded "
            f"{expected} ({path}, line {line}), now {got}. Someone may be intercepting the connection; "
            "nothing was sent. If the server's certificate changed on purpose (a new state directory "
            f"or new certificate files), accept the new one with `pierce trust --forget {server} "
            f"--state-dir {state_dir}` (or delete that line); the next connection records it",
        )


class Pin(msgspec.Struct, frozen=True):
    """One line of the file: a server and the fingerprint recorded for it."""

    server: str
    fingerprint: str
    line: int


def server_key(server: HostPort) -> str:
    """How a server is named in the file: ``host:port``, ``[v6]:port``, host names in lowercase.

    A letter whose lowercase is two characters is kept as it is (U+0130, "İ", whose lowercase "i̇" ends
    in a combining mark, which no host name holds): the name written must read back as itself.
    """
    host = "".join(low if len(low := c.lower()) == 1 else c for c in server.host)
    return str(HostPort(host, server.port))


def parse(text: str, source: str) -> dict[str, Pin]:
    """The pins in the file's `text` by server; raises `KnownHostsError` naming `source` and the line."""
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KnownHostsError(
                f"{source}, line {number}: expected HOST:PORT and a SHA-256 fingerprint, got {line!r}"
            )
        try:
            key = server_key(parse_host_port(parts[0]))
        except ValueError as exc:
            raise KnownHostsError(f"{source}, line {number}: {exc}") from None
        try:
            fingerprint = normalize_fingerprint(parts[1])
        except ValueError as exc:
            raise KnownHostsError(f"{source}, line {number}: {exc}") from None
        earlier = pins.get(key)
        if earlier is not None and earlier.fingerprint != fingerprint:
            raise KnownHostsError(
                f"{source}, line {number}: {key} is already pinned on line {earlier.line} to another "
                "certificate; keep one of the two lines"
            )
        pins.setdefault(key, Pin(key, fingerprint, number))
    return pins


class KnownHosts:
    """The known_hosts file of one state directory. Read on every check, so edits apply at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> KnownHosts:
        return cls(state_dir / FILE_NAME)

    def load(self) -> dict[str, Pin]:
        """Every pin in the file (none when it does not exist yet)."""
        return parse(self._read(), str(self.path))

    def check(self, server: HostPort, der: bytes) -> bool:
        """Accept the certificate `der` for `server`, recording it on first use.

        Returns True when it was recorded now; raises `CertificateChanged` when another certificate
        is recorded for `server`, `KnownHostsError` when the file is damaged, `PinNotSaved` (one) when
        a first certificate cannot be written.
        """
        key = server_key(server)
        got = certificate_fingerprint(der)
        text = self._read()
        pin = parse(text, str(self.path)).get(key)
        if pin is None:
            if text and not text.endswith("\n"):
                text += "\n"
            self._write((text or _HEADER) + f"{key} {got}\n")
            return True
        if pin.fingerprint != got:
            raise CertificateChanged(
                server=key, expected=pin.fingerprint, got=got, path=self.path, line=pin.line
            )
        return False

    def forget(self, server: HostPort) -> Pin | None:
        """Remove the pin of `server` (every line naming it); returns it, or None when there was none.

        Comments and the other lines are kept as they are.
        """
        key = server_key(server)
        text = self._read()
        pin = parse(text, str(self.path)).get(key)
        if pin is None:
            return None
        kept = [line for line in text.splitlines(keepends=True) if _line_server(line) != key]
        self._write("".join(kept))
        return pin

    def _read(self) -> str:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise KnownHostsError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_FILE_SIZE:
            raise KnownHostsError(f"{self.path}: larger than {MAX_FILE_SIZE} bytes; is this the right file?")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise KnownHostsError(f"{self.path}: not UTF-8 text") from None

    def _write(self, text: str) -> None:
        try:
            make_private_dir(self.path.parent)
            write_private(self.path, text.encode())
        except LocalError as exc:
            raise PinNotSaved(str(exc)) from exc


def _line_server(line: str) -> str | None:
    """The server a valid line of the file names (None for comments and blank lines)."""
    parts = line.split()
    if len(parts) != 2 or parts[0].startswith("#"):
        return None
    try:
        return server_key(parse_host_port(parts[0]))
    except ValueError:
        return None
