"""Several proxy instances sharing one database (runtime 0.5.0): an ended session never
unregisters a backend pid another instance registered since, and the sessions of an instance
that crashed are closed (by its next run, or by any instance once its heartbeat is old).
Two or three in-process audit logs against one real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Database, apply_at_runtime, clinic_policy
from policyc import audittrail
from policyc.apply import apply_policy
from policyc.proxy.audit import AuditLog
from policyc.proxy.audit.records import SessionEnd, SessionRecord, StatementOutcome, StatementRecord
from policyc.proxy.audit.sessions import ORPHANED_REASON


def session(agent: str = "agent-7") -> SessionRecord:
    return SessionRecord(uuid.uuid4(), time.time(), "open", agent=agent, group="billing",
                         role="billing", claims={"sub": agent, "clinic_id": 1},
                         client_addr="127.0.0.1", client_port=50000)


def new_log(db: Database, spool: Path, name: str, **kw: Any) -> AuditLog:
    kw.setdefault("drain_interval", 0.01)
    kw.setdefault("db_timeout", 2.0)
    return AuditLog(db.dsn_as("policyc_proxy"), spool, proxy_name=name, **kw)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def session_state(db: Database, rec: SessionRecord) -> tuple[Any, ...]:
    [row] = db.execute("SELECT outcome, end_reason FROM audit.sessions WHERE session_id = %s",
                       (rec.session_id,))
    return row


async def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_an_ended_session_never_unregisters_another_instances_registration(
        applied_clinic: Database, tmp_path: Path) -> None:
    """Instance A's session ended on backend pid P; before A's drainer unregisters it, PostgreSQL
    gave P to a session instance B opened (here: B registers the same live pid).  A must
    remove only its own registration, never B's."""
    first, second = session("agent-a"), session("agent-b")
    with applied_clinic.connect("billing") as backend:
        pid = backend.info.backend_pid

        async def body() -> None:
            a = new_log(applied_clinic, tmp_path / "a", "proxy-a")
            b = new_log(applied_clinic, tmp_path / "b", "proxy-b")
            await a.start()
            await b.start()
            try:
                await a.open_session(first, pid)
                await b.open_session(second, pid)  # the pid, reused, now B's session's
                a.end_session(SessionEnd(first.session_id, time.time(), "client closed", 1),
                              pid)
                assert await a.flush()
            finally:
                await a.close()
                await b.close()

        run(body)
        assert backend.execute("SELECT policyc.agent()").fetchone() == ("agent-b",)
    assert session_state(applied_clinic, first) == ("closed", "client closed")
    assert session_state(applied_clinic, second) == ("open", None)


def test_a_crashed_instances_sessions_are_closed_by_a_live_one(
        applied_clinic: Database, tmp_path: Path) -> None:
    crashed, alive, own = session(), session(), session()

    async def body() -> None:
        a = new_log(applied_clinic, tmp_path / "a", "proxy-a", heartbeat_every=0.1)
        b = new_log(applied_clinic, tmp_path / "b", "proxy-b", heartbeat_every=0.1,
                    dead_after=1.0)
        c = new_log(applied_clinic, tmp_path / "c", "proxy-c", heartbeat_every=0.1)
        for log in (a, b, c):
            await log.start()
        try:
            await a.open_session(crashed, None)
            await b.open_session(own, None)
            await c.open_session(alive, None)
            await a.abort()  # a crash: its heartbeat stops
            await wait_until(lambda: session_state(applied_clinic, crashed)[0] == "closed")
            await asyncio.sleep(1.5)  # c keeps beating: its session stays open
            assert b.stats()["orphans_closed"] == 1
        finally:
            for log in (a, b, c):
                await log.close()

    run(body)
    assert session_state(applied_clinic, crashed) == ("closed", ORPHANED_REASON)
    assert session_state(applied_clinic, alive) == ("open", None)
    assert session_state(applied_clinic, own) == ("open", None)
    with applied_clinic.connect() as conn:
        assert audittrail.verify(conn) == []


def test_a_restarted_instance_closes_what_its_crashed_run_left_open(
        applied_clinic: Database, tmp_path: Path) -> None:
    """After a crash, the next run on the same spool drains what the spool kept (a close
    recorded before the crash wins), then closes the rest of its earlier run's sessions,
    after the last statement each recorded."""
    spool = tmp_path / "spool"
    left_open, ended = session(), session()
    rec = StatementRecord(uuid.uuid4(), left_open.session_id, 1, time.time(), "agent-7",
                          "billing", "SELECT 1", "allowed")

    async def crash() -> None:
        log = new_log(applied_clinic, spool, "proxy-a", drain_interval=3600.0)
        await log.start()
        await log.open_session(left_open, None)
        await log.open_session(ended, None)
        log.end_session(SessionEnd(ended.session_id, time.time(), "client closed", 1), None)
        await log.spool_statement(rec)  # durable, with the close riding along
        log.finish_statement(StatementOutcome(rec.record_id, 1, 0.5))
        await log.abort()

    async def restart() -> None:
        log = new_log(applied_clinic, spool, "proxy-a", heartbeat_every=0.1)
        await log.start()
        try:
            await wait_until(lambda: session_state(applied_clinic, left_open)[0] == "closed")
            assert log.stats()["orphans_closed"] == 1
        finally:
            await log.close()

    run(crash)
    assert session_state(applied_clinic, left_open) == ("open", None)
    run(restart)
    assert session_state(applied_clinic, ended) == ("closed", "client closed")
    assert session_state(applied_clinic, left_open) == ("closed", ORPHANED_REASON)
    assert applied_clinic.execute(
        "SELECT end_seq FROM audit.sessions WHERE session_id = %s",
        (left_open.session_id,)) == [(2,)]  # after its one statement
    with applied_clinic.connect() as conn:
        assert audittrail.verify(conn) == []


def test_upgrade_from_0_4_0_keeps_the_trail_verifiable_and_old_runtimes_work(
        clinic_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy on a database still at runtime 0.4.0 records and closes sessions as before
    (no instance rows, the unconditional unregister); after the upgrade every row verifies."""
    policy = clinic_policy(clinic_db.name)
    apply_at_runtime(clinic_db, policy, "0.4.0", monkeypatch)
    rec = session()
    stmt = StatementRecord(uuid.uuid4(), rec.session_id, 1, time.time(), "agent-7", "billing",
                           "SELECT 1", "allowed")
    with clinic_db.connect("billing") as backend:
        pid = backend.info.backend_pid

        async def body() -> None:
            log = new_log(clinic_db, tmp_path / "spool", "proxy-old")
            await log.start()
            try:
                await log.open_session(rec, pid)
                await log.record_statement(stmt, StatementOutcome(stmt.record_id, 1, 0.5))
                log.end_session(SessionEnd(rec.session_id, time.time(), "client closed", 2),
                                pid)
                assert await log.flush()
            finally:
                await log.close()

        run(body)
        assert backend.execute("SELECT policyc.agent()").fetchone() == (None,)
    assert session_state(clinic_db, rec) == ("closed", "client closed")
    assert clinic_db.execute("SELECT to_regclass('policyc.proxy_sessions')") == [(None,)]
    with clinic_db.connect() as conn:
        apply_policy(conn, policy)
    assert clinic_db.execute(
        "SELECT to_regprocedure('policyc.unregister_session(int, uuid)') IS NOT NULL, "
        "to_regclass('policyc.proxy_sessions') IS NOT NULL") == [(True, True)]
    clinic_db.execute("SELECT audit.checkpoint()")  # whatever is left to seal
    assert clinic_db.execute("SELECT count(*) FROM audit.statements WHERE session_id = %s",
                             (rec.session_id,)) == [(1,)]
    with clinic_db.connect() as conn:
        assert audittrail.verify(conn) == []
