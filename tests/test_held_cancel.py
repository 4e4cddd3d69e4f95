"""A CancelRequest ends a statement held for approval at once (57014), withdraws its request
and leaves the session usable; a cancel with any other key does nothing to the hold.  Real
clients: psycopg (``cancel_safe``), asyncpg (its timeout), psql (SIGINT: libpq's PQcancel),
and raw sockets for the wrong-key attacks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database
from policyc.proxy.codec import CancelRequest, Query
from proxyharness import RunningProxy, run_proxy, wait_for
from test_proxy_approvals import UPDATE_ALL, _in_thread, _pending, _policy
from test_proxy_durability import RawClient, sqlstates

HOLD = 60  # seconds: every cancel below must end the hold far sooner
QUICK = 10.0  # what "at once" allows on a loaded test machine


@pytest.fixture
def approver(applied_clinic: Database) -> Database:
    applied_clinic.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    return applied_clinic


@pytest.fixture
def proxy(approver: Database, tmp_path: Path) -> Iterator[RunningProxy]:
    with run_proxy(_policy(approver, hold=HOLD), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running


def _request_id(db: Database) -> int:
    pending = wait_for(lambda: _pending(db))
    assert pending, "the statement was not held"
    return int(pending[0][0])


def _assert_withdrawn(db: Database, request_id: int) -> None:
    """The request is closed as cancelled by the proxy, the audit trail has the held record
    and a final one, and nothing ran."""
    assert db.execute("SELECT status, decided_by FROM audit.approvals WHERE id = %s",
                      (request_id,)) == [("cancelled", "policyc-proxy")]
    query = ("SELECT decision, reason FROM audit.statements WHERE approval_id = %s "
             "ORDER BY seq")
    records = wait_for(lambda: len(db.execute(query, (request_id,))) >= 2
                       and db.execute(query, (request_id,)))
    assert [r[0] for r in records] == ["held", "blocked"], records
    assert records[1][1] == f"approval request {request_id} cancelled by the client"
    assert db.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == [(0,)]


def _cancel_while_held(approver: Database, run: Callable[[], Any],
                       cancel: Callable[[], Any]) -> tuple[BaseException | None, float, int]:
    """Run ``run`` in a thread until its statement is held, then ``cancel``: the error it
    ended with, the seconds from the cancel to that end, and the request id."""
    thread, result = _in_thread(run)
    request_id = _request_id(approver)
    started = time.monotonic()
    cancel()
    thread.join(HOLD + 10)
    assert not thread.is_alive()
    return result.get("error"), time.monotonic() - started, request_id


def test_psycopg_cancel_ends_a_simple_protocol_hold(approver: Database,
                                                    proxy: RunningProxy) -> None:
    # cancel_safe, not cancel(): libpq's blocking PQcancel keeps the GIL, and the proxy runs
    # in a thread of this process (psql below is the PQcancel client)
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        error, took, request_id = _cancel_while_held(
            approver, lambda: conn.execute(UPDATE_ALL), conn.cancel_safe)
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert error.sqlstate == "57014"
        assert took < QUICK
        assert str(error) == (f"policyc: approval request {request_id} was cancelled by the "
                              "client; the statement did not run")  # no statement text
        # the same connection goes on: reads work, and a new risky statement is held anew
        assert conn.execute("SELECT count(*) FROM claims").fetchone() is not None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    _assert_withdrawn(approver, request_id)


def test_psycopg_cancel_ends_an_extended_protocol_hold_in_a_transaction(
    approver: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("BEGIN")
        error, took, request_id = _cancel_while_held(
            approver, lambda: conn.execute("UPDATE claims SET status = %s", ("reviewed",)),
            conn.cancel_safe)
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert took < QUICK
        # as a cancelled statement in PostgreSQL: the transaction is aborted, then usable
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT %s::int", (5,)).fetchone() == (5,)
    _assert_withdrawn(approver, request_id)
    assert approver.execute("SELECT parameters FROM audit.approvals") == [(["reviewed"],)]


def test_next_statement_after_a_cancel_can_be_held_and_approved(
    approver: Database, proxy: RunningProxy
) -> None:
    """The cancel ends that hold only: no stale cancel lands on the next statement."""
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        error, _took, first = _cancel_while_held(
            approver, lambda: conn.execute(UPDATE_ALL), conn.cancel_safe)
        assert isinstance(error, psycopg.errors.QueryCanceled)
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL).rowcount)
        second = wait_for(lambda: [r for r in _pending(approver) if r[0] != first])
        assert second, "the next statement was not held"
        with approver.connect("alice") as human:
            human.execute("SELECT audit.approve(%s, 'ok')", (second[0][0],))
        thread.join(20)
        assert "error" not in result, result
        assert result["value"] > 0


def test_asyncpg_timeout_cancels_the_hold(approver: Database, proxy: RunningProxy) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def scenario() -> tuple[float, Any]:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="agent-7",
                                     database=proxy.database, ssl=False,
                                     password=proxy.token("agent-7", "billing", clinic_id=1))
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute(UPDATE_ALL, timeout=1.5)  # asyncpg sends a CancelRequest
            took = time.monotonic() - started
            return took, await conn.fetchval("SELECT $1::int + 1", 41)
        finally:
            await conn.close()

    took, answer = asyncio.run(scenario())
    assert took < QUICK and answer == 42
    request_id = int(approver.execute("SELECT max(id) FROM audit.approvals")[0][0])
    wait_for(lambda: approver.execute("SELECT status FROM audit.approvals") == [("cancelled",)])
    _assert_withdrawn(approver, request_id)


def test_psql_sigint_cancels_the_hold(approver: Database, proxy: RunningProxy) -> None:
    env = {**os.environ, "PGPASSWORD": proxy.token("agent-7", "billing", clinic_id=1)}
    agent = subprocess.Popen(
        ["psql", "-X", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1", "-p", str(proxy.port),
         "-U", "agent-7", "-d", proxy.database, "-c", UPDATE_ALL],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        request_id = _request_id(approver)
        started = time.monotonic()
        agent.send_signal(signal.SIGINT)  # psql sends a CancelRequest, as on Ctrl-C
        _out, err = agent.communicate(timeout=HOLD)
        took = time.monotonic() - started
    finally:
        agent.kill()
    assert took < QUICK
    assert f"ERROR:  57014: policyc: approval request {request_id} was cancelled" in err, err
    _assert_withdrawn(approver, request_id)


# --- wrong keys: a cancel never reaches another session's hold -------------------------------


class KeyedClient(RawClient):
    """A raw client that keeps the BackendKeyData the proxy issued it."""

    pid: int = 0
    key: bytes = b""

    def until(self, kind: bytes, timeout: float = 10) -> list[tuple[bytes, bytes]]:
        frames = super().until(kind, timeout)
        for frame_kind, payload in frames:
            if frame_kind == b"K":
                self.pid, self.key = struct.unpack("!i", payload[:4])[0], payload[4:]
        return frames


def _send_cancel(proxy: RunningProxy, pid: int, key: bytes) -> None:
    """A CancelRequest on a fresh connection; returns once the proxy has closed it."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(CancelRequest(pid, key).encode())
        with contextlib.suppress(ConnectionError):
            assert sock.recv(1) == b""  # as PostgreSQL: no answer


@contextlib.contextmanager
def _keyed(proxy: RunningProxy, application: str) -> Iterator[KeyedClient]:
    client = KeyedClient(proxy, "billing", application, clinic_id=1)
    try:
        yield client
    finally:
        client.close()


def test_a_cancel_with_any_other_key_leaves_the_hold_alone(approver: Database,
                                                            proxy: RunningProxy) -> None:
    with _keyed(proxy, "held") as held, _keyed(proxy, "bystander") as other:
        assert held.pid and other.pid and held.pid != other.pid and held.key
        held.send(Query(UPDATE_ALL).encode())
        request_id = _request_id(approver)
        assert any(k == b"N" for k, _ in held.until(b"N"))  # the NOTICE naming it
        wrong = bytes(b ^ 0xFF for b in held.key)
        for pid, key in ((held.pid, wrong),       # the right session, a wrong key
                         (held.pid, other.key),   # the right session, another's key
                         (other.pid, held.key),   # another session, this one's key
                         (other.pid, other.key)):  # another session's own valid cancel
            _send_cancel(proxy, pid, key)
        assert held.read(1.0) == [], "a cancel with a wrong key must not answer the held client"
        assert approver.execute("SELECT status FROM audit.approvals WHERE id = %s",
                                (request_id,)) == [("pending",)]
        # the bystander is unharmed and idle
        other.send(Query("SELECT 1").encode())
        assert sqlstates(other.until(b"Z")) == []
        # only the right key ends the hold
        _send_cancel(proxy, held.pid, held.key)
        frames = held.until(b"Z", timeout=QUICK)
        assert sqlstates(frames) == ["57014"]
        assert frames[-1] == (b"Z", b"I")
        held.send(Query("SELECT 7").encode())
        answer = held.until(b"Z")
        assert sqlstates(answer) == [] and any(k == b"D" for k, _ in answer)
    _assert_withdrawn(approver, request_id)


def test_a_cancel_when_nothing_is_held_still_reaches_the_server(
    approver: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn, \
            approver.connect(autocommit=False) as dba:
        dba.execute("LOCK TABLE public.claims IN ACCESS EXCLUSIVE MODE")  # the read waits
        # with a parameter: no in-band EXPLAIN first (rows_over), the read itself waits
        thread, result = _in_thread(
            lambda: conn.execute("SELECT count(*) FROM claims WHERE id > %s", (0,)))
        assert wait_for(lambda: approver.execute(
            "SELECT 1 FROM pg_locks WHERE relation = 'public.claims'::regclass "
            "AND NOT granted")), "the read never waited for the lock"
        conn.cancel_safe()
        thread.join(QUICK)
        assert not thread.is_alive()
        error = result.get("error")
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert "canceling statement due to user request" in str(error)  # the server's own
        dba.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _pending(approver) == []
