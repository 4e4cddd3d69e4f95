"""Messages with the same type byte and layout in both directions: the COPY data stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from policyc.proxy.codec._wire import Reader, message


@dataclass(frozen=True, slots=True)
class CopyData:
    """'d': a chunk of COPY data.  Hot path: forward ``frame.raw`` instead of decoding this."""

    TYPE: ClassVar[bytes] = b"d"
    data: bytes

    def encode(self) -> bytes:
        return message(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    """'c': the sender finished its COPY data."""

    TYPE: ClassVar[bytes] = b"c"

    def encode(self) -> bytes:
        return COPY_DONE


COPY_DONE = b"c\x00\x00\x00\x04"


def decode_copy_data(r: Reader) -> CopyData:
    return CopyData(r.rest())


def decode_copy_done(r: Reader) -> CopyDone:
    r.done()
    return CopyDone()
