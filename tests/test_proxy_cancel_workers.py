"""Cancel requests under ``policyc proxy --workers N`` (docs/deployment.md, "Cancel requests").

A CancelRequest arrives on a new connection, which the kernel may give to any worker; the
worker that holds the session must act on it every time.  Real PostgreSQL, real clients
(psycopg's ``cancel()``/``cancel_safe()``: libpq's PQcancel; asyncpg's timeout), a real
supervisor and its worker processes.  Each scenario runs many sessions so that cancels land on
the other worker many times (with 2 workers, half of them do)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database
from policyc.proxy.cancels import CancelRoutes, new_proxy_pid
from policyc.proxy.codec import CancelRequest, Query
from proxyharness import wait_for
from test_held_cancel import KeyedClient
from test_proxy_approvals import UPDATE_ALL, _in_thread, _pending
from test_proxy_durability import sqlstates
from test_spool_ownership import agent_dsn, billing_token
from workerharness import Supervised, supervise, unix_sockets_of

WORKERS = 2
SESSIONS = 10
ENDS = 30.0  # a cancelled statement ends far sooner than this; a lost cancel never does
# every read below waits for a lock the test holds until the read is cancelled (a lost
# cancel: for ever); with a parameter the read itself waits (no in-band EXPLAIN first)
WAITING_READ = "SELECT count(*) FROM claims WHERE id > %s"


# --- pure: the pid names its worker ------------------------------------------------------------
def test_each_worker_hands_out_pids_that_name_it(tmp_path: Path) -> None:
    for count in (1, 2, 3, 7):
        routes = [CancelRoutes(k, count, tmp_path) for k in range(count)]
        for route in routes:
            taken: set[int] = set()
            for _ in range(200):
                pid = new_proxy_pid(route.index, count, taken)
                assert 0 < pid < 2**31 and pid not in taken
                assert route.owner(pid) == route.index
                taken.add(pid)
    two = CancelRoutes(1, 2, tmp_path)
    assert [two.owner(p) for p in (0, -1, -(2**31), 2**31 - 1, 2)] == [None, None, None, 1, 0]
    assert two.socket_path(0) == tmp_path / "worker-0.sock"
    # never a pid a live session has: worker 1 of 2**30 has only the pids 1 and 2**30 + 1
    assert {new_proxy_pid(1, 2**30, {1}) for _ in range(50)} == {2**30 + 1}
    assert {new_proxy_pid(0, 2**30, set()) for _ in range(50)} == {2**30}  # never 0


@pytest.fixture
def workers(applied_clinic: Database, tmp_path: Path) -> Iterator[Supervised]:
    with supervise(applied_clinic, tmp_path / "spool", WORKERS) as running:
        yield running


def _waiting(db: Database) -> int:
    """Backends waiting for the lock on public.claims now (the agents' statements began)."""
    rows = db.execute("SELECT count(*) FROM pg_locks "
                      "WHERE relation = 'public.claims'::regclass AND NOT granted")
    return int(rows[0][0])


@contextlib.contextmanager
def _claims_locked(db: Database) -> Iterator[None]:
    with db.connect(autocommit=False) as dba:
        dba.execute("LOCK TABLE public.claims IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            dba.rollback()


def _lost(errors: list[Any]) -> list[str]:
    """What each session that did not end with 57014 got instead."""
    return [repr(e) for e in errors
            if not (isinstance(e, psycopg.errors.QueryCanceled) and e.sqlstate == "57014")]


def _cancel_waiting_sessions(db: Database, port: int, sessions: int = SESSIONS) -> None:
    """``sessions`` psycopg sessions each run a read that waits for a lock; each is cancelled
    with the client's own cancel and must end with 57014 (the lock is held until after)."""
    token = billing_token(db)
    conns = [psycopg.connect(agent_dsn(db, port, token), autocommit=True)
             for _ in range(sessions)]
    try:
        with _claims_locked(db):
            running = [_in_thread(lambda c=conn: c.execute(WAITING_READ, (0,)))
                       for conn in conns]
            assert wait_for(lambda: _waiting(db) == sessions, timeout=60), \
                "the reads never waited for the lock"
            for i, conn in enumerate(conns):
                # cancel(): libpq's blocking PQcancel (the proxy is another process here);
                # cancel_safe(): the non-blocking libpq 17 API or psycopg's emulation of it
                (conn.cancel if i % 2 else conn.cancel_safe)()
            for thread, _result in running:
                thread.join(ENDS)
            errors = [result.get("error") for _thread, result in running]
            on = sorted(conn.info.backend_pid % WORKERS for conn in conns)  # proxy pids
            assert not _lost(errors), (f"{len(_lost(errors))} of {sessions} cancels were lost "
                                       f"(sessions by worker: {on}): {_lost(errors)}")
            assert all("canceling statement due to user request" in str(e) for e in errors)
        # every session goes on
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def test_every_psycopg_cancel_reaches_the_session_whatever_worker_gets_it(
        applied_clinic: Database, workers: Supervised) -> None:
    _cancel_waiting_sessions(applied_clinic, workers.port)


def test_every_asyncpg_timeout_cancels_its_statement(applied_clinic: Database,
                                                     workers: Supervised) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    db = applied_clinic
    token = billing_token(db)

    async def one() -> int:
        conn = await asyncpg.connect(host="127.0.0.1", port=workers.port, user="agent-7",
                                     database=db.name, ssl=False, password=token)
        try:
            with pytest.raises(asyncio.TimeoutError):  # asyncpg sends a CancelRequest
                await conn.fetchval("SELECT count(*) FROM claims WHERE id > $1", 0, timeout=3)
            # a lost cancel leaves the connection busy until the lock is released
            answer: int = await asyncio.wait_for(conn.fetchval("SELECT $1::int + 1", 41), ENDS)
            return answer
        finally:
            await asyncio.wait_for(conn.close(), ENDS)

    async def scenario() -> list[int]:
        return await asyncio.gather(*(one() for _ in range(SESSIONS)))

    with _claims_locked(db):
        assert asyncio.run(scenario()) == [42] * SESSIONS


# --- statements held for approval -------------------------------------------------------------


def test_a_cancel_ends_a_hold_on_any_worker(applied_clinic: Database,
                                            workers: Supervised) -> None:
    db = applied_clinic
    token = billing_token(db)
    sessions = 6
    conns = [psycopg.connect(agent_dsn(db, workers.port, token), autocommit=True)
             for _ in range(sessions)]
    try:
        held = [_in_thread(lambda c=conn: c.execute(UPDATE_ALL)) for conn in conns]
        assert wait_for(lambda: len(_pending(db)) == sessions, timeout=60), "nothing was held"
        for conn in conns:
            conn.cancel()
        for thread, _result in held:
            thread.join(ENDS)
        errors = [result.get("error") for _thread, result in held]
        assert not _lost(errors), _lost(errors)
        assert all("was cancelled by the client; the statement did not run" in str(e)
                   for e in errors)
        assert _pending(db) == []
        assert db.execute("SELECT DISTINCT status FROM audit.approvals") == [("cancelled",)]
        assert db.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") \
            == [(0,)]
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


class _Agent:
    """What :class:`KeyedClient` needs to log in to the supervised workers."""

    def __init__(self, db: Database, port: int) -> None:
        self.port, self.database, self._token = port, db.name, billing_token(db)

    def token(self, _agent: str, _group: str, **_claims: Any) -> str:
        return self._token


@contextlib.contextmanager
def _held_raw(db: Database, port: int) -> Iterator[KeyedClient]:
    """A raw session (its pid and key known) with UPDATE_ALL held for approval."""
    before = len(_pending(db))
    client = KeyedClient(_Agent(db, port), "billing", "held", clinic_id=1)  # type: ignore[arg-type]
    try:
        assert client.pid and client.key
        client.send(Query(UPDATE_ALL).encode())
        assert wait_for(lambda: len(_pending(db)) == before + 1, timeout=60), "not held"
        assert any(k == b"N" for k, _ in client.until(b"N"))  # the NOTICE naming it
        yield client
    finally:
        client.close()


def _send_cancel(port: int, pid: int, key: bytes) -> None:
    """A CancelRequest on a fresh connection; returns once the proxy has closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(CancelRequest(pid, key).encode())
        with contextlib.suppress(ConnectionError):
            assert sock.recv(1) == b""  # as PostgreSQL: no answer


def test_a_forged_key_for_another_workers_session_does_nothing(
        applied_clinic: Database, workers: Supervised) -> None:
    db = applied_clinic
    with _held_raw(db, workers.port) as held:
        wrong = bytes(b ^ 0xFF for b in held.key)
        # each on a fresh connection: about half land on the other worker and are forwarded
        for i in range(20):
            _send_cancel(workers.port, held.pid, wrong)
            _send_cancel(workers.port, held.pid, os.urandom(4))
            _send_cancel(workers.port, held.pid + 1 + i, held.key)  # its key, other pids
            _send_cancel(workers.port, held.pid, held.key + b"\0" * 4)  # a longer key
        assert held.read(1.0) == [], "a forged cancel must not answer the held client"
        assert [row[3] for row in _pending(db)] == ["pending"]
        # only the right key ends the hold, whichever worker it reaches
        _send_cancel(workers.port, held.pid, held.key)
        frames = held.until(b"Z", timeout=ENDS)
        assert sqlstates(frames) == ["57014"]
        assert frames[-1] == (b"Z", b"I")
    assert _pending(db) == []


# --- the workers' private cancel sockets ------------------------------------------------------


def _cancel_socket(pid: int) -> Path:
    sockets = unix_sockets_of(pid)
    assert len(sockets) == 1, sockets
    return sockets[0]


# connects to argv[1] and sends the hex bytes of argv[2], then waits for the close; exit 13
# when the connection is refused for lack of permission
_PROBE = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(30)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
sock.sendall(bytes.fromhex(sys.argv[2]))
sock.shutdown(socket.SHUT_WR)
sys.exit(0 if sock.recv(1) == b"" else 1)
"""


def test_the_cancel_sockets_are_private_and_read_untrusted_input(
        applied_clinic: Database, workers: Supervised) -> None:
    db = applied_clinic
    paths = {index: _cancel_socket(pid) for index, pid in workers.worker_pids().items()}
    assert len(set(paths.values())) == WORKERS
    (directory,) = {p.parent for p in paths.values()}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.geteuid()
    for path in paths.values():
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
    # another account can reach them neither through the file system nor, were the modes
    # loosened, past the worker's check of its peer's user (root: try as nobody)
    python = shutil.which("python3", path="/usr/bin:/bin")
    as_nobody = os.geteuid() == 0 and python is not None

    def probe(path: Path, packet: bytes) -> int:
        assert python is not None
        done = subprocess.run([python, "-c", _PROBE, str(path), packet.hex()], user="nobody",
                              capture_output=True, text=True, timeout=60, check=False)
        return done.returncode

    if as_nobody:
        assert probe(paths[0], b"") == 13

    with _held_raw(db, workers.port) as held:
        owner = paths[held.pid % WORKERS]
        good = CancelRequest(held.pid, held.key).encode()
        wrong = CancelRequest(held.pid, bytes(b ^ 0xFF for b in held.key)).encode()
        if as_nobody:
            directory.chmod(0o711)
            owner.chmod(0o666)
            try:
                assert probe(owner, good) == 0  # connected, sent, closed by the worker
            finally:
                directory.chmod(0o700)
                owner.chmod(0o600)
            assert held.read(1.0) == [], "another user's request was acted on"
        for junk in (b"", b"\0\0", struct.pack("!i", 1 << 30) + good[4:],  # absurd length
                     struct.pack("!i", 4), good[:10], good + b"\0",  # short, trailing bytes
                     struct.pack("!ii", 8, 80877103),  # an SSLRequest
                     Query("SELECT 1").encode(), good[:4] + b"\0" * 12, wrong,
                     os.urandom(16), good * 2):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(30)
                sock.connect(str(owner))
                with contextlib.suppress(ConnectionError):
                    sock.sendall(junk)
                    sock.shutdown(socket.SHUT_WR)
                    assert sock.recv(1) == b""
        assert held.read(1.0) == []
        assert [row[3] for row in _pending(db)] == ["pending"]
        # a well-formed request with the right key, on the owner's socket, ends the hold
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(owner))
            sock.sendall(good)
            sock.shutdown(socket.SHUT_WR)  # one request, then end-of-file
            assert sock.recv(1) == b""
        assert sqlstates(held.until(b"Z", timeout=ENDS)) == ["57014"]
    # the workers still serve
    _cancel_waiting_sessions(db, workers.port, sessions=2)


def test_a_restarted_worker_still_receives_forwarded_cancels(
        applied_clinic: Database, workers: Supervised) -> None:
    db = applied_clinic
    before = workers.worker_pids()
    path = _cancel_socket(before[1])
    os.kill(before[1], signal.SIGKILL)
    assert wait_for(lambda: len(now := workers.worker_pids()) == WORKERS
                    and now[1] != before[1] and unix_sockets_of(now[1]), timeout=60), \
        "the killed worker was not restarted with its cancel socket"
    after = workers.worker_pids()
    assert after[0] == before[0]
    assert _cancel_socket(after[1]) == path  # the same place: its siblings find it
    _cancel_waiting_sessions(db, workers.port)
