"""The one reader of the client's socket.

The pump reads through it; while a statement is held for a human, the hold desk waits
through it (:meth:`ClientInbox.hold_until`): the client is still read, so a client that goes
away is noticed, and what it sends meanwhile waits its turn (bounded), then is what the pump
reads next.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from policyc.proxy.codec import ProtocolViolation

#: Bytes read from the client at a time.
READ_SIZE: Final = 65536
#: Bytes a client may send while one of its statements is held (they wait their turn).
MAX_HELD_BACKLOG: Final = 1 << 20


class ClientGone(Exception):
    """The client closed the connection (or it was reset) while a statement was held."""


class ClientInbox:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self._stash = bytearray()  # read while a statement was held

    def take_stash(self) -> bytes:
        """What the client sent while a statement was held (b"" if nothing): it goes first."""
        if not self._stash:
            return b""
        data = bytes(self._stash)
        self._stash.clear()
        return data

    async def read(self) -> bytes:
        """The client's next bytes (what waited its turn first); b"" when it has gone."""
        return self.take_stash() or await self.reader.read(READ_SIZE)

    async def hold_until(self, *ends: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
        """Wait until one of ``ends`` is done (returned) while reading the client: bytes it
        sends wait their turn; ClientGone when it goes away."""
        waiting: set[asyncio.Future[Any]] = set(ends)
        while True:
            reading = asyncio.ensure_future(self.reader.read(READ_SIZE))
            done, _ = await asyncio.wait({reading, *waiting},
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                return done
            try:
                data = reading.result()
            except OSError:  # reset by a client that died with our NOTICE unread
                data = b""
            if not data:
                raise ClientGone
            self._stash += data
            if len(self._stash) > MAX_HELD_BACKLOG:
                raise ProtocolViolation("too much data sent while a statement was held")
