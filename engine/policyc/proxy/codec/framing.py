"""Incremental framers: feed arbitrary byte chunks, get whole messages (:class:`Frame`) out.

Framing is the only place that looks at length fields, so it is also where size limits live:
an oversized or undersized length is refused as soon as its header arrives, before any body is
buffered.  Each frame keeps its exact bytes (``raw``) so the proxy can forward a message it did
not change without re-encoding it; ``raw`` is the only copy made of a message's bytes.

The client's first packet(s) carry no type byte (StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest); :class:`FrontendFramer` frames them until a StartupMessage arrives and then
switches to typed messages by itself.  It stops at an SSLRequest/GSSENCRequest: whatever the
client sent after it must not be read in clear (CVE-2021-23214), so the caller checks
:attr:`FrontendFramer.pending` before starting TLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from policyc.proxy.codec._wire import BYTE, INT32, ProtocolViolation

# Untyped startup packet codes (the Int32 after the length).
SSL_REQUEST_CODE = 80877103  # 1234.5679
GSSENC_REQUEST_CODE = 80877104  # 1234.5680
CANCEL_REQUEST_CODE = 80877102  # 1234.5678
PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2

# Limits on the Int32 length field (which counts itself, not the type byte).
MAX_MESSAGE_LENGTH = (1 << 30) - 1  # Postgres' PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1)
MAX_STARTUP_LENGTH = 10_000 + 4  # Postgres' MAX_STARTUP_PACKET_LENGTH of payload
MIN_STARTUP_LENGTH = 8  # length + protocol code
SMALL_MESSAGE_LENGTH = 10_000  # Postgres' PQ_SMALL_MESSAGE_LIMIT
MAX_AUTH_LENGTH = 65_535 + 4  # Postgres' PG_MAX_AUTH_TOKEN_LENGTH for 'p' messages

# Frontend message types Postgres reads with the small limit, and 'p' with the auth limit.
FRONTEND_TYPE_LIMITS: dict[bytes, int] = {
    b"C": SMALL_MESSAGE_LENGTH,  # Close
    b"D": SMALL_MESSAGE_LENGTH,  # Describe
    b"H": SMALL_MESSAGE_LENGTH,  # Flush
    b"S": SMALL_MESSAGE_LENGTH,  # Sync
    b"X": SMALL_MESSAGE_LENGTH,  # Terminate
    b"c": SMALL_MESSAGE_LENGTH,  # CopyDone
    b"f": SMALL_MESSAGE_LENGTH,  # CopyFail
    b"p": MAX_AUTH_LENGTH,  # PasswordMessage / SASL responses
}


class Frame(NamedTuple):
    """One whole message: its type byte (``b""`` for an untyped startup packet) and exact bytes."""

    type: bytes
    raw: bytes

    @property
    def header_size(self) -> int:
        return len(self.type) + 4

    @property
    def payload(self) -> memoryview:
        """The body after type byte and length, without copying."""
        return memoryview(self.raw)[len(self.type) + 4 :]


Chunk = bytes | bytearray | memoryview

_new_frame = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


class _Framer:
    """Buffering and failure state shared by both directions.

    ``_need`` is how many bytes the buffered partial message needs before a scan can make
    progress, so a large message arriving in many chunks is appended, not rescanned, per chunk.
    """

    __slots__ = ("_buf", "_failed", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed = False
        self._need = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buf)

    def take_pending(self) -> bytes:
        """Remove and return the unframed bytes (e.g. to hand them to another consumer)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._need = 0
        return data

    def feed(self, data: Chunk) -> list[Frame]:
        """Add bytes; return every message now complete, in order.

        Raises :class:`ProtocolViolation` on a bad length; the framer then stays failed (every
        later call raises too), because the stream can no longer be trusted to be in sync.
        """
        if self._failed:
            raise ProtocolViolation("connection stream already failed framing")
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        try:
            frames: list[Frame] = []
            used, self._need = self._scan(data, frames)
        except ProtocolViolation:
            self._failed = True
            buf.clear()
            raise
        if used < len(data):
            with memoryview(data) as view:
                buf += view[used:]
        return frames

    def _scan(self, data: bytes, frames: list[Frame]) -> tuple[int, int]:
        """Append complete frames; return (bytes used, bytes the remaining partial needs)."""
        raise NotImplementedError


class BackendFramer(_Framer):
    """Frames server->client messages, which are always typed."""

    __slots__ = ("max_length",)

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__()
        self.max_length = max_length

    def _scan(self, data: bytes, frames: list[Frame]) -> tuple[int, int]:
        pos = 0
        end = len(data)
        limit = self.max_length
        unpack = INT32.unpack_from
        append = frames.append
        while end - pos >= 5:
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > limit:
                raise _bad_length(BYTE[data[pos]], length, limit)
            stop = pos + 1 + length
            if stop > end:
                return pos, 1 + length
            append(_new_frame(Frame, (BYTE[data[pos]], data[pos:stop])))
            pos = stop
        return pos, 5


class FrontendFramer(_Framer):
    """Frames client->server messages: untyped startup packets first, then typed messages.

    ``startup=False`` starts in typed mode (e.g. for a stream resumed after the startup phase);
    :meth:`set_typed` switches explicitly.  The framer switches by itself after a StartupMessage.
    """

    __slots__ = ("_limits", "_startup", "max_length", "max_startup_length")

    def __init__(
        self,
        max_length: int = MAX_MESSAGE_LENGTH,
        *,
        startup: bool = True,
        max_startup_length: int = MAX_STARTUP_LENGTH,
        type_limits: dict[bytes, int] | None = None,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.max_startup_length = max_startup_length
        self._startup = startup
        limits = [max_length] * 256
        for type_, limit in (FRONTEND_TYPE_LIMITS if type_limits is None else type_limits).items():
            limits[type_[0]] = min(limit, max_length)
        self._limits = limits

    @property
    def in_startup(self) -> bool:
        """True while the next message is an untyped startup packet."""
        return self._startup

    def set_typed(self) -> None:
        self._startup = False
        self._need = 0

    def _scan_startup(self, data: bytes, frames: list[Frame]) -> tuple[int, int]:
        """Frame untyped startup packets; (bytes used, bytes needed), where a need of -1 means
        the StartupMessage was framed and typed messages may follow at the position."""
        pos = 0
        end = len(data)
        unpack = INT32.unpack_from
        while self._startup:
            if end - pos < 4:
                return pos, 4
            length = unpack(data, pos)[0]
            if length < MIN_STARTUP_LENGTH or length > self.max_startup_length:
                raise ProtocolViolation(
                    f"invalid length of startup packet ({length} bytes; "
                    f"allowed {MIN_STARTUP_LENGTH} to {self.max_startup_length})"
                )
            stop = pos + length
            if stop > end:
                return pos, length
            frames.append(Frame(b"", data[pos:stop]))
            code = unpack(data, pos + 4)[0]
            pos = stop
            if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE):
                return pos, 0  # nothing may be read in clear after these
            if code >> 16 == 3:
                self._startup = False
        return pos, -1

    def _scan(self, data: bytes, frames: list[Frame]) -> tuple[int, int]:
        pos = 0
        end = len(data)
        limits = self._limits
        unpack = INT32.unpack_from
        if self._startup:
            pos, need = self._scan_startup(data, frames)
            if need >= 0:
                return pos, need
        while end - pos >= 5:
            type_ = data[pos]
            length = unpack(data, pos + 1)[0]
            limit = limits[type_]
            if length < 4 or length > limit:
                raise _bad_length(BYTE[type_], length, limit)
            stop = pos + 1 + length
            if stop > end:
                return pos, 1 + length
            frames.append(_new_frame(Frame, (BYTE[type_], data[pos:stop])))
            pos = stop
        return pos, 5


class LoginFramer(FrontendFramer):
    """Frames what a client may send before it is authenticated, and nothing else.

    Untyped startup packets (each at most ``max_startup_length`` bytes, as
    :class:`FrontendFramer`), then exactly one typed message of a type in ``allowed`` (the
    password message), whose length is checked against its limit on the header, before any of
    its body is buffered.  Any other type is refused on its type byte.  Framing stops after
    that one message: whatever the client sent behind it stays pending, unread, until the
    caller hands it (:meth:`take_pending`) to the session's own framer after authentication.
    So an unauthenticated client can make the proxy buffer at most one read chunk beyond the
    limits here, however large a message it announces.
    """

    __slots__ = ("_allowed", "_done")

    def __init__(
        self, allowed: Mapping[bytes, int], *, max_startup_length: int = MAX_STARTUP_LENGTH
    ) -> None:
        super().__init__(max(allowed.values(), default=0), max_startup_length=max_startup_length,
                         type_limits={})
        self._allowed = dict(allowed)
        self._done = False

    @property
    def done(self) -> bool:
        """True once the one typed message was framed (nothing more is framed)."""
        return self._done

    def _scan(self, data: bytes, frames: list[Frame]) -> tuple[int, int]:
        pos = 0
        if self._startup:
            pos, need = self._scan_startup(data, frames)
            if need >= 0:
                return pos, need
        if self._done:
            return pos, 0
        end = len(data)
        if end - pos < 5:
            return pos, 5
        type_ = BYTE[data[pos]]
        limit = self._allowed.get(type_)
        if limit is None:
            raise ProtocolViolation(
                f"message type {type_!r} is not allowed before authentication")
        length = INT32.unpack_from(data, pos + 1)[0]
        if length < 4 or length > limit:
            raise _bad_length(type_, length, limit)
        stop = pos + 1 + length
        if stop > end:
            return pos, 1 + length
        frames.append(Frame(type_, data[pos:stop]))
        self._done = True
        return stop, 0


def _bad_length(type_: bytes, length: int, limit: int) -> ProtocolViolation:
    return ProtocolViolation(
        f"invalid message length {length} for message type {type_!r} (allowed 4 to {limit})"
    )


# --------------------------------------------------------- the one-byte reply to SSL/GSSENC


SSL_ACCEPT = b"S"
GSSENC_ACCEPT = b"G"
ENCRYPTION_REFUSE = b"N"


def encryption_response(accept: bool, *, gss: bool = False) -> bytes:
    """The single unframed byte a server answers an SSLRequest (or GSSENCRequest) with."""
    if not accept:
        return ENCRYPTION_REFUSE
    return GSSENC_ACCEPT if gss else SSL_ACCEPT


def parse_encryption_response(data: bytes, *, gss: bool = False) -> bool:
    """Read the server's one-byte reply: True to start TLS (or GSS), False if refused.

    Pass exactly the one byte read; anything else (an ErrorResponse from a server that does not
    understand the request, or extra bytes) is a violation.
    """
    if len(data) != 1:
        raise ProtocolViolation("encryption response must be exactly one byte")
    if data == ENCRYPTION_REFUSE:
        return False
    if data == (GSSENC_ACCEPT if gss else SSL_ACCEPT):
        return True
    raise ProtocolViolation(f"unexpected encryption response {data!r}")
