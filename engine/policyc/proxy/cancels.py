"""Cancel requests between the workers of one ``policyc proxy --workers N`` (docs/deployment.md).

A client cancels a statement by sending a CancelRequest (the proxy pid and secret key it got in
BackendKeyData) on a *new* connection, and with ``SO_REUSEPORT`` the kernel may give that
connection to any worker.  So that the request reaches the worker holding the session every
time:

* **The pid names its worker.**  Worker ``k`` of ``N`` hands out proxy pids with
  ``pid % N == k`` (:func:`new_proxy_pid`; otherwise random, never one of its live sessions).
  The pid was never secret (PostgreSQL hands out real backend pids); the 32 random bits of the
  key are what a cancel must prove, as before.
* **Each worker has an inbox**: a Unix socket ``worker-<k>.sock`` in a directory the supervisor
  creates private (mode 0700, :func:`make_cancel_dir`), the socket itself mode 0600, and every
  connection's peer checked to run as the proxy's own user (``SO_PEERCRED``).  A worker that
  starts (again, after a crash) replaces the stale socket file of its predecessor.
* **A worker forwards what is not its own** (:func:`forward`): the CancelRequest, re-encoded,
  over the owner's socket, then it waits (briefly) for the owner to close the connection once it
  has acted, so the client's cancel connection is closed after the cancel was delivered, as
  with PostgreSQL.  A missing or dead owner (a worker restarting: its sessions are gone anyway)
  only costs a log line without pid or key.
* **The inbox trusts nothing** (:class:`CancelInbox`): exactly one well-formed CancelRequest
  and then end-of-file, within a deadline, decoded by the same decoder as the network's; the
  owner then does what it does with a CancelRequest from the network (constant-time key
  comparison, end a hold or cancel upstream).  Forwarded requests are never forwarded again.

With ``--workers 1`` none of this runs: no socket, and pids as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from pathlib import Path

from policyc.errors import PolicycError, SystemError_
from policyc.proxy.codec import CancelRequest, ProtocolViolation
from policyc.proxy.codec.framing import CANCEL_REQUEST_CODE, Frame
from policyc.proxy.codec.frontend import MAX_CANCEL_KEY, MIN_CANCEL_KEY, decode_startup

log = logging.getLogger("policyc.proxy.cancels")

#: Seconds a forwarding worker gives the owner to take the request and act on it.
FORWARD_TIMEOUT = 5.0
#: Seconds the inbox gives a connection to send its request and end.
RECEIVE_TIMEOUT = 2.0
_LENGTH = struct.Struct("!i")
_MIN_PACKET = 12 + MIN_CANCEL_KEY  # length, code, pid, key
_MAX_PACKET = 12 + MAX_CANCEL_KEY
_MAX_PID = 2**31 - 1
#: sun_path holds 108 bytes with its terminating NUL
_MAX_SOCKET_PATH = 107


class CancelSocketError(PolicycError):
    """The worker's cancel socket cannot be created (something else is in its place)."""

    code = "cancel-socket"
    sqlstate = SystemError_.sqlstate


@dataclass(frozen=True)
class CancelRoutes:
    """Where the cancels of ``count`` workers go; this process is worker ``index``."""

    index: int
    count: int
    directory: Path

    def owner(self, pid: int) -> int | None:
        """The worker that issued proxy pid ``pid`` (None: no worker ever issues it)."""
        return pid % self.count if pid > 0 else None

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"


def new_proxy_pid(index: int, count: int, taken: Container[int]) -> int:
    """A random pid in 1..2**31-1 with ``pid % count == index``, not in ``taken``."""
    top = (_MAX_PID - index) // count  # q * count + index stays a positive int32
    while True:
        pid = secrets.randbelow(top + 1) * count + index
        if pid > 0 and pid not in taken:
            return pid


def make_cancel_dir(longest_name: str) -> Path:
    """A new private directory (0700, unpredictable name) for the workers' sockets, in the
    temporary directory, or in /tmp when ``$TMPDIR`` is too long for a socket path."""
    for base in (tempfile.gettempdir(), "/tmp"):  # noqa: S108 - mkdtemp: private, unique
        # mkdtemp's name: the prefix and 8 random characters
        if len(os.path.join(base, "policyc-cancel-" + "x" * 8, longest_name)) \
                <= _MAX_SOCKET_PATH:
            return Path(tempfile.mkdtemp(prefix="policyc-cancel-", dir=base))
    raise CancelSocketError("no temporary directory is short enough for a Unix socket path")


def remove_cancel_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


async def forward(routes: CancelRoutes, owner: int, request: CancelRequest) -> None:
    """Hand ``request`` to worker ``owner`` and wait (at most :data:`FORWARD_TIMEOUT`) until
    it has acted; failures are logged (never the pid or key) and swallowed."""
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(routes.socket_path(owner)))
            try:
                writer.write(request.encode())
                writer.write_eof()
                await writer.drain()
                await reader.read(1)  # the owner closes the connection once it has acted
            finally:
                writer.close()
    except (OSError, TimeoutError, ProtocolViolation) as exc:
        log.warning("worker %d: a cancel request for worker %d was not delivered (%s)",
                    routes.index, owner, type(exc).__name__)


def _peer_is_us(writer: asyncio.StreamWriter) -> bool:
    """Whether the connection's peer runs as this process's effective user (fails closed)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (AttributeError, OSError, struct.error):
        return False
    return bool(uid == os.geteuid())


async def _read_request(reader: asyncio.StreamReader) -> CancelRequest | None:
    """Exactly one CancelRequest and then end-of-file, else None."""
    head = await reader.readexactly(_LENGTH.size)
    (length,) = _LENGTH.unpack(head)
    if not _MIN_PACKET <= length <= _MAX_PACKET:
        return None
    raw = head + await reader.readexactly(length - _LENGTH.size)
    if _LENGTH.unpack_from(raw, 4)[0] != CANCEL_REQUEST_CODE or await reader.read(1):
        return None
    message = decode_startup(Frame(b"", raw))
    return message if isinstance(message, CancelRequest) else None


class CancelInbox:
    """Worker ``routes.index``'s socket: requests its siblings forward, handed to ``act``."""

    def __init__(self, routes: CancelRoutes,
                 act: Callable[[CancelRequest], Awaitable[None]]) -> None:
        self.path = routes.socket_path(routes.index)
        self._act = act
        self._server: asyncio.base_events.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        """Listen on the socket, replacing a predecessor's stale one."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise CancelSocketError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._receive, path=str(self.path),
                                                       limit=_MAX_PACKET)
        os.chmod(self.path, 0o600)  # the directory is 0700 already
        self._inode = self.path.lstat().st_ino

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            if self.path.lstat().st_ino == self._inode:  # ours, not a successor's
                self.path.unlink()

    async def _receive(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        try:
            if not _peer_is_us(writer):
                return
            async with asyncio.timeout(RECEIVE_TIMEOUT):
                request = await _read_request(reader)
            if request is not None:
                await self._act(request)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolViolation):
            pass  # as PostgreSQL with a malformed cancel: no answer
        except Exception as exc:  # one bad request never takes the worker down
            log.error("a forwarded cancel request failed: %s", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
