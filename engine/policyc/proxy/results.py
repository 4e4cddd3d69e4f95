"""Results kept for replay (``audit.results: full``): the wire frames the agent received.

What is kept is exactly what the client was sent for one statement: the frame that describes
the rows (a RowDescription, or a CopyOutResponse for ``COPY ... TO STDOUT``) followed by every
DataRow / CopyData frame, each as raw bytes (type byte, length, payload), concatenated and
zlib-compressed.  The SHA-256 ``result_digest`` covers the DataRow / CopyData frames only, so a
replay can recompute it from the kept frames.

With the extended protocol the RowDescription reaches the client before Execute, in answer to
a Describe of the portal; that frame is kept.  A client that only described the prepared
statement (asyncpg) got a RowDescription whose format codes are all text, as the protocol
says for statements; the kept copy carries the result formats the client asked for in Bind,
which are the formats the DataRows are really in.

Bound: a session keeps at most ``results_limit`` uncompressed bytes in all.  A result that
would go past what is left is not kept (its digest still is, and the statement's reason says
so); buffering stops the moment it would, so memory stays bounded by the limit (compressed).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Final

from policyc.proxy.codec import ProtocolViolation
from policyc.proxy.codec.backend import (
    CopyOutResponse,
    FieldDescription,
    RowDescription,
    data_row_values,
    decode_backend,
)
from policyc.proxy.codec.framing import BackendFramer, Frame

#: Raw bytes gathered before they are handed to the compressor (fewer, larger calls).
_CHUNK: Final = 64 << 10
#: A replay refuses to inflate a kept result past this (a planted "zip bomb").
MAX_INFLATED: Final = 1 << 30
#: Frames that carry result data (what the digest covers) and frames that describe it.
DATA_TYPES: Final = frozenset({b"D", b"d"})
HEADER_TYPES: Final = frozenset({b"T", b"H"})


def not_kept_reason(limit: int) -> str:
    return f"result not kept: session result limit of {limit} bytes reached"


class ResultBudget:
    """Uncompressed bytes one session may still keep."""

    __slots__ = ("kept", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = 0


class ResultCapture:
    """One statement's result frames, compressed as they come, within the session's budget."""

    __slots__ = ("_budget", "_compressor", "_out", "_pending", "_pending_bytes", "_size",
                 "dropped", "started")

    def __init__(self, budget: ResultBudget) -> None:
        self._budget = budget
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # level 1: masked rows shrink 2.5x (2.6x at level 6) at about three times the speed
        self._compressor: zlib._Compress | None = zlib.compressobj(1)
        self._out = bytearray()
        self.started = False  # the header (if any) went in first
        self.dropped = False  # over the budget: nothing more is kept

    def start(self, header: bytes | None) -> None:
        self.started = True
        if header:
            self.add(header)

    def add(self, raw: bytes) -> None:
        if self.dropped:
            return
        size = self._size + len(raw)
        if self._budget.kept + size > self._budget.limit:
            self.dropped = True
            self._pending = []
            self._out = bytearray()
            self._compressor = None
            return
        self._size = size
        self._pending.append(raw)
        self._pending_bytes += len(raw)
        if self._pending_bytes >= _CHUNK:
            self._compress()

    def _compress(self) -> None:
        if self._pending and self._compressor is not None:
            self._out += self._compressor.compress(b"".join(self._pending))
            self._pending = []
            self._pending_bytes = 0

    def finish(self) -> bytes | None:
        """The kept result, charged to the session's budget; None when dropped or empty."""
        if self.dropped or not self._size or self._compressor is None:
            return None
        self._compress()
        self._out += self._compressor.flush()
        self._compressor = None
        self._budget.kept += self._size
        return bytes(self._out)


def with_formats(row_description: bytes, result_formats: tuple[int, ...]) -> bytes:
    """A statement's RowDescription with the result format codes a Bind asked for."""
    try:
        message = decode_backend(Frame(b"T", row_description))
    except ProtocolViolation:
        return row_description
    if not isinstance(message, RowDescription):
        return row_description
    count = len(message.fields)
    if not result_formats:
        formats = (0,) * count
    elif len(result_formats) == 1:
        formats = result_formats * count
    elif len(result_formats) == count:
        formats = result_formats
    else:
        return row_description
    fields = tuple(
        FieldDescription(f.name, f.table_oid, f.column, f.type_oid, f.type_size,
                         f.type_modifier, fmt)
        for f, fmt in zip(message.fields, formats, strict=True))
    try:
        return RowDescription(fields).encode()
    except ProtocolViolation:
        return row_description


# --- reading a kept result (replay) ---------------------------------------------------------
class ResultDecodeError(ValueError):
    """A kept result that cannot be read back (corrupt, or not what the proxy wrote)."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    format: int  # 0 text, 1 binary


@dataclass
class DecodedResult:
    """A kept result: columns, rows as text (binary values as ``\\x`` hex, NULL as None)."""

    columns: list[Column] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    copy_format: int | None = None  # set for COPY ... TO STDOUT results
    copy_data: list[str] = field(default_factory=list)
    digest: str = ""  # SHA-256 of the DataRow / CopyData frames, as the proxy computes it
    data_frames: int = 0
    raw_bytes: int = 0


def inflate(blob: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(blob, MAX_INFLATED)
    except zlib.error as exc:
        raise ResultDecodeError(f"the kept result is not valid zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise ResultDecodeError(f"the kept result inflates past {MAX_INFLATED} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ResultDecodeError("the kept result is truncated or has trailing data")
    return data


def frames_of(data: bytes) -> list[Frame]:
    framer = BackendFramer(max_length=MAX_INFLATED)
    try:
        frames = framer.feed(data)
    except ProtocolViolation as exc:
        raise ResultDecodeError(f"the kept result is not protocol frames ({exc})") from None
    if framer.pending:
        raise ResultDecodeError("the kept result ends inside a frame")
    return frames


def render(value: bytes | memoryview | None, fmt: int) -> str | None:
    """A value as the agent got it: text as text, binary as ``\\x`` hex, NULL as None."""
    if value is None:
        return None
    if fmt == 1:
        return "\\x" + bytes(value).hex()
    return bytes(value).decode("utf-8", "replace")


def decode_result(blob: bytes) -> DecodedResult:
    """Read back a kept result; raises :class:`ResultDecodeError` when it is not readable."""
    data = inflate(blob)
    out = DecodedResult(raw_bytes=len(data))
    digest = hashlib.sha256()
    formats: list[int] = []
    for index, frame in enumerate(frames_of(data)):
        kind = frame.type
        if kind in DATA_TYPES:
            digest.update(frame.raw)
            out.data_frames += 1
            if kind == b"D":
                try:
                    values = data_row_values(frame)
                except ProtocolViolation as exc:
                    raise ResultDecodeError(f"a kept DataRow is malformed ({exc})") from None
                out.rows.append([render(v, formats[i] if i < len(formats) else 0)
                                 for i, v in enumerate(values)])
            else:
                fmt = out.copy_format or 0
                out.copy_data.append(render(frame.payload, fmt) or "")
        elif kind in HEADER_TYPES and index == 0:
            try:
                message = decode_backend(frame)
            except ProtocolViolation as exc:
                raise ResultDecodeError(f"the kept header is malformed ({exc})") from None
            if isinstance(message, RowDescription):
                out.columns = [Column(f.name, f.type_oid, f.format) for f in message.fields]
                formats = [f.format for f in message.fields]
            elif isinstance(message, CopyOutResponse):
                out.copy_format = message.format
        else:
            raise ResultDecodeError(f"unexpected {kind!r} frame in a kept result")
    out.digest = digest.hexdigest()
    return out
