"""Primitives shared by every decoder and encoder: the violation error, a strict reader, packers.

Decoders never index raw bytes themselves: they go through :class:`Reader`, whose every read
checks bounds, so a hostile length or count can only ever raise :class:`ProtocolViolation`.
Error messages name the message type and the field, never the bytes (they may carry PHI).
"""

from __future__ import annotations

import struct

from policyc.errors import CharacterNotInRepertoire, PolicycError
from policyc.errors import ProtocolViolation as PgProtocolViolation

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

MAX_INT32 = 0x7FFFFFFF

# One cached one-byte ``bytes`` per value: cheaper than slicing a type byte out of a buffer.
BYTE = tuple(bytes((i,)) for i in range(256))


class ProtocolViolation(PolicycError):
    """The peer (or a message we were asked to build) broke the PostgreSQL v3 protocol.

    ``sqlstate`` is 08P01 unless a more precise code applies (22021 for invalid UTF-8,
    0A000 for an unsupported protocol version); the proxy sends it back in an ErrorResponse.
    """

    code = "protocol"
    sqlstate = PgProtocolViolation.sqlstate

    def __init__(self, message: str, sqlstate: str = PgProtocolViolation.sqlstate) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class Reader:
    """Bounds-checked sequential reads over one message's bytes (no copies until asked)."""

    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: bytes, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)
        self.what = what

    def fail(self, problem: str) -> ProtocolViolation:
        return ProtocolViolation(f"invalid {self.what} message: {problem}")

    def _advance(self, n: int, field: str) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise self.fail(f"truncated at {field}")
        self.pos = pos + n
        return pos

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def byte(self, field: str) -> int:
        return self.buf[self._advance(1, field)]

    def int16(self, field: str) -> int:
        return int(INT16.unpack_from(self.buf, self._advance(2, field))[0])

    def uint16(self, field: str) -> int:
        return int(UINT16.unpack_from(self.buf, self._advance(2, field))[0])

    def int32(self, field: str) -> int:
        return int(INT32.unpack_from(self.buf, self._advance(4, field))[0])

    def uint32(self, field: str) -> int:
        return int(UINT32.unpack_from(self.buf, self._advance(4, field))[0])

    def skip(self, n: int, field: str) -> int:
        """Step over ``n`` bytes; return where they start."""
        return self._advance(n, field)

    def take(self, n: int, field: str) -> bytes:
        pos = self._advance(n, field)
        return self.buf[pos : pos + n]

    def rest(self) -> bytes:
        pos = self.pos
        self.pos = self.end
        return self.buf[pos:]

    def cbytes(self, field: str) -> bytes:
        """A NUL-terminated string as raw bytes (terminator consumed, not returned)."""
        pos = self.pos
        nul = self.buf.find(b"\0", pos, self.end)
        if nul < 0:
            raise self.fail(f"{field} is not NUL-terminated")
        self.pos = nul + 1
        return self.buf[pos:nul]

    def cstring(self, field: str) -> str:
        return utf8(self.cbytes(field), self.what, field)

    def value(self, field: str) -> bytes | None:
        """An Int32 length (-1 for NULL) followed by that many bytes."""
        n = self.int32(field)
        if n == -1:
            return None
        if n < 0:
            raise self.fail(f"negative length for {field}")
        return self.take(n, field)

    def formats(self, field: str) -> tuple[int, ...]:
        """An Int16 count followed by that many Int16 format codes, each 0 (text) or 1 (binary)."""
        count = self.uint16(field)
        if count * 2 > self.remaining:
            raise self.fail(f"{field} count exceeds message length")
        codes = struct.unpack_from(f"!{count}h", self.buf, self._advance(2 * count, field))
        for code in codes:
            if code not in (0, 1):
                raise self.fail(f"unsupported format code in {field}")
        return tuple(codes)

    def oids(self, field: str) -> tuple[int, ...]:
        """An Int16 count followed by that many unsigned Int32 type OIDs."""
        count = self.uint16(field)
        if count * 4 > self.remaining:
            raise self.fail(f"{field} count exceeds message length")
        return struct.unpack_from(f"!{count}I", self.buf, self._advance(4 * count, field))

    def done(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} trailing bytes")


def utf8(data: bytes, what: str, field: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(
            f"invalid {what} message: {field} is not valid UTF-8",
            sqlstate=CharacterNotInRepertoire.sqlstate,
        ) from None


# ----------------------------------------------------------------------------------- encoding


def cstr(text: str, what: str, field: str) -> bytes:
    """Encode a NUL-terminated UTF-8 string; an embedded NUL would corrupt the framing."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolViolation(f"cannot encode {what}: {field} is not valid Unicode") from None
    if b"\0" in data:
        raise ProtocolViolation(f"cannot encode {what}: {field} contains a NUL character")
    return data + b"\0"


def pack(fmt: struct.Struct, value: int, what: str, field: str) -> bytes:
    try:
        return fmt.pack(value)
    except struct.error:
        raise ProtocolViolation(f"cannot encode {what}: {field} out of range") from None


def pack_formats(codes: tuple[int, ...], what: str, field: str) -> bytes:
    for code in codes:
        if code not in (0, 1):
            raise ProtocolViolation(f"cannot encode {what}: unsupported format code in {field}")
    return pack(UINT16, len(codes), what, field) + struct.pack(f"!{len(codes)}h", *codes)


def pack_oids(oids: tuple[int, ...], what: str, field: str) -> bytes:
    head = pack(UINT16, len(oids), what, field)
    try:
        return head + struct.pack(f"!{len(oids)}I", *oids)
    except struct.error:
        raise ProtocolViolation(f"cannot encode {what}: {field} out of range") from None


def pack_value(value: bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    return INT32.pack(len(value)) + value


def message(type_: bytes, body: bytes) -> bytes:
    """Frame a typed message: type byte, Int32 length (counting itself), body."""
    if len(body) > MAX_INT32 - 4:
        raise ProtocolViolation("cannot encode message: body too large")
    return type_ + INT32.pack(len(body) + 4) + body
