"""Data chunks on encrypted data connections, sans-I/O.

asyncio's TLS transport cannot half-close (it has no ``write_eof``), so once a TLS work or visitor
connection carries data, the bytes travel in chunks: a 4-byte big-endian length, then that many bytes.
A chunk of length 0 is the end-of-data marker: "no more data this way". That keeps half-close working
through encrypted tunnels, and when both markers have crossed the connection is clean and can carry the
next visitor. Plain (unencrypted) data connections skip this and are relayed as raw sockets.

`chunk` turns data into the pieces to write; `ChunkDecoder` takes received bytes and returns the data
they carry. The decoder also says how many bytes it wants next (`ChunkDecoder.wanted`), so a reader that
asks for exactly that never splits a chunk's payload and the decoder hands its input back uncopied.
"""

from __future__ import annotations

import struct

from pierce.protocol.errors import ProtocolError

#: Bytes in a chunk's length prefix.
CHUNK_HEADER_SIZE = 4
#: The largest chunk a peer may announce; larger writes are split.
MAX_DATA_CHUNK = 1024 * 1024
#: The chunk that ends one direction of data.
END_OF_DATA = b"\0\0\0\0"
#: Data up to this size goes out with its header as one piece (one 16 KiB TLS record).
ONE_RECORD = 16 * 1024 - CHUNK_HEADER_SIZE

#: The length prefix, for writers that frame small data themselves (see `chunk`).
CHUNK_HEADER = struct.Struct(">I")
_HEADER = CHUNK_HEADER


def chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    """The pieces to write for ``data`` (non-empty: an empty chunk would end the stream)."""
    n = len(data)
    if not n:
        raise ValueError("an empty chunk is the end-of-data marker; send END_OF_DATA for that")
    if n <= ONE_RECORD:
        # Header and data in one write: one TLS record instead of two (requests, keystrokes).
        return [_HEADER.pack(n) + data]
    if n <= MAX_DATA_CHUNK:
        return [_HEADER.pack(n), data]
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    for i in range(0, n, MAX_DATA_CHUNK):
        piece = view[i : i + MAX_DATA_CHUNK]
        pieces += (_HEADER.pack(len(piece)), piece)
    return pieces


class ChunkDecoder:
    """Turns received bytes back into data, one direction of one connection.

    `feed` returns the data pieces in order and raises `ProtocolError` for a chunk over `max_chunk` or
    bytes after the end-of-data marker. After the marker `ended` is true.
    """

    def __init__(self, max_chunk: int = MAX_DATA_CHUNK) -> None:
        self.max_chunk = max_chunk
        #: Payload bytes of the current chunk still to come (0 between chunks).
        self.left = 0
        self.ended = False
        self._header = bytearray()

    @property
    def wanted(self) -> int:
        """Bytes that complete the current header or payload; 0 once the stream has ended."""
        if self.ended:
            return 0
        return self.left or CHUNK_HEADER_SIZE - len(self._header)

    @property
    def in_header(self) -> bool:
        """True between chunks (the next bytes are a length prefix)."""
        return not self.ended and not self.left

    @property
    def at_boundary(self) -> bool:
        """True when no chunk is partly read: nothing of a header or payload is pending."""
        return not self.left and not self._header

    def header(self, header: bytes) -> None:
        """A whole length prefix, read exactly (``wanted`` bytes between chunks): the fast path."""
        if self.ended or self.left or self._header or len(header) != CHUNK_HEADER_SIZE:
            self.feed(header)  # not at a boundary: the general path says what is wrong
            return
        (length,) = _HEADER.unpack(header)
        if length > self.max_chunk:
            raise ProtocolError(f"data chunk of {length} bytes exceeds {self.max_chunk}")
        self.left = length
        self.ended = length == 0

    def feed(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """The data carried by ``data``; the input itself when it is all payload (no copy)."""
        n = len(data)
        if n and self.ended:
            raise ProtocolError("data after the end-of-data marker")
        if n <= self.left:
            self.left -= n
            return [data] if n else []
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        pos = 0
        while pos < n:
            if self.ended:
                raise ProtocolError("data after the end-of-data marker")
            if self.left:
                take = min(self.left, n - pos)
                out.append(view[pos : pos + take])
                self.left -= take
                pos += take
                continue
            take = min(CHUNK_HEADER_SIZE - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == CHUNK_HEADER_SIZE:
                (length,) = _HEADER.unpack(self._header)
                self._header.clear()
                if length > self.max_chunk:
                    raise ProtocolError(f"data chunk of {length} bytes exceeds {self.max_chunk}")
                self.left = length
                self.ended = length == 0
        return out
