"""Decoders of the messages every statement's run carries: Bind, Describe, Execute from the
client, CommandComplete from the server.

Each returns exactly what the strict decoder (:func:`~policyc.proxy.codec.frontend.
decode_frontend`) returns for a well-formed message, with a fraction of its calls: the
strict :class:`~policyc.proxy.codec._wire.Reader` checks bounds field by field, which at a
few thousand statements a second was a visible share of the proxy's CPU.  Anything the fast
path does not take as plainly well formed (a truncation, an odd count, a format code other
than 0 or 1, bad UTF-8, a trailing byte) goes to the strict decoder, which decodes it the
same way or refuses it with its precise error: the fast path never refuses and never
accepts anything the strict one would not.  tests/test_codec_hot.py checks the agreement
over arbitrary and mutated messages.
"""

from __future__ import annotations

import struct
from typing import Final

from policyc.proxy.codec.backend import CommandComplete, decode_backend
from policyc.proxy.codec.framing import Frame
from policyc.proxy.codec.frontend import Bind, Describe, Execute, decode_frontend

_UINT16: Final = struct.Struct("!H")
_INT32: Final = struct.Struct("!i")
_HEADER: Final = 5  # type byte and Int32 length
_NUL: Final = b"\0"


def _formats(buf: bytes, pos: int, end: int) -> tuple[tuple[int, ...], int] | None:
    """An Int16 count and that many format codes, each 0 or 1; None: let the strict path."""
    if pos + 2 > end:
        return None
    count = _UINT16.unpack_from(buf, pos)[0]
    pos += 2
    if count == 0:
        return (), pos
    if pos + 2 * count > end:
        return None
    codes = struct.unpack_from(f"!{count}h", buf, pos)
    for code in codes:
        if code != 0 and code != 1:  # noqa: PLR1714 - ints, not a membership test's hashing
            return None
    return codes, pos + 2 * count


def _bind(buf: bytes) -> Bind | None:
    end = len(buf)
    nul = buf.find(_NUL, _HEADER)
    if nul < 0:
        return None
    nul2 = buf.find(_NUL, nul + 1)
    if nul2 < 0:
        return None
    try:
        portal = buf[_HEADER:nul].decode("utf-8")
        statement = buf[nul + 1:nul2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    found = _formats(buf, nul2 + 1, end)
    if found is None:
        return None
    formats, pos = found
    if pos + 2 > end:
        return None
    count = _UINT16.unpack_from(buf, pos)[0]
    pos += 2
    if count * 4 > end - pos or (len(formats) > 1 and len(formats) != count):
        return None
    params: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > end:
            return None
        size = _INT32.unpack_from(buf, pos)[0]
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < 0 or pos + size > end:
            return None
        params.append(buf[pos:pos + size])
        pos += size
    found = _formats(buf, pos, end)
    if found is None or found[1] != end:
        return None
    return Bind(portal, statement, formats, tuple(params), found[0])


def decode_bind(frame: Frame) -> Bind:
    """A Bind frame's message; a malformed one raises the strict decoder's ProtocolViolation."""
    message = _bind(frame.raw)
    if message is None:
        strict = decode_frontend(frame)
        assert isinstance(strict, Bind)
        return strict
    return message


def _named(buf: bytes) -> tuple[str, str] | None:
    """Describe/Close's kind byte and name."""
    end = len(buf)
    if end < _HEADER + 2 or buf[-1] != 0 or buf.find(_NUL, _HEADER + 1) != end - 1:
        return None
    kind = buf[_HEADER]
    if kind != 0x50 and kind != 0x53:  # noqa: PLR1714 - 'P', 'S'
        return None
    try:
        return chr(kind), buf[_HEADER + 1:end - 1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_describe(frame: Frame) -> Describe:
    """A Describe frame's message; a malformed one raises the strict decoder's error."""
    named = _named(frame.raw)
    if named is None:
        strict = decode_frontend(frame)
        assert isinstance(strict, Describe)
        return strict
    return Describe(*named)


def decode_execute(frame: Frame) -> Execute:
    """An Execute frame's message; a malformed one raises the strict decoder's error."""
    buf = frame.raw
    end = len(buf)
    nul = buf.find(_NUL, _HEADER)
    if nul >= 0 and nul + 5 == end:
        try:
            return Execute(buf[_HEADER:nul].decode("utf-8"), _INT32.unpack_from(buf, nul + 1)[0])
        except UnicodeDecodeError:
            pass
    strict = decode_frontend(frame)
    assert isinstance(strict, Execute)
    return strict


def decode_command_complete(frame: Frame) -> CommandComplete:
    """A CommandComplete frame's message; a malformed one raises the strict decoder's error."""
    buf = frame.raw
    end = len(buf)
    if end > _HEADER and buf.find(_NUL, _HEADER) == end - 1:
        try:
            return CommandComplete(buf[_HEADER:end - 1].decode("utf-8"))
        except UnicodeDecodeError:
            pass
    strict = decode_backend(frame)
    assert isinstance(strict, CommandComplete)
    return strict
