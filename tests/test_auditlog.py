"""The proxy's audit log: durable before a statement runs, group commit, crash recovery,
fail closed when the spool fills, idempotent drain into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import ROOT, Database
from policyc.devcluster import free_port
from policyc.proxy.audit import (
    RECOVERED_REASON,
    STALE_REASON,
    AuditLog,
    AuditUnavailable,
)
from policyc.proxy.audit.records import SessionEnd, SessionRecord, StatementOutcome, StatementRecord
from policyc.proxy.audit.spool import PREALLOC_NAME, Spool, read_segment, segment_name

T = TypeVar("T")
SESSION = uuid.UUID("00000000-0000-4000-8000-000000000001")
_seqs = itertools.count(1)


def dead_dsn() -> str:
    """A database nobody listens on: the audit database is down."""
    return f"host=127.0.0.1 port={free_port()} dbname=nowhere user=policyc_proxy"


def stmt(text: str = "SELECT 1", **kw: Any) -> StatementRecord:
    fields: dict[str, Any] = {
        "record_id": uuid.uuid4(), "session_id": SESSION, "seq": next(_seqs),
        "at": time.time(),
        "agent": "agent-7", "group": "billing", "text": text, "decision": "allowed",
    }
    fields.update(kw)
    return StatementRecord(**fields)


def outcome(rec: StatementRecord, rows: int | None = 3, **kw: Any) -> StatementOutcome:
    return StatementOutcome(rec.record_id, rows, kw.pop("duration_ms", 1.25), **kw)


def new_log(dsn: str, spool: Path, **kw: Any) -> AuditLog:
    kw.setdefault("drain_interval", 0.01)
    kw.setdefault("db_timeout", 2.0)
    return AuditLog(dsn, spool, proxy_name="proxy-test", **kw)


def with_log(dsn: str, spool: Path, body: Callable[[AuditLog], Awaitable[T]], *,
             crash: bool = False, **kw: Any) -> T:
    """Run ``body`` against a started log; then close it, or abort it (a crash)."""

    async def main() -> T:
        log = new_log(dsn, spool, **kw)
        await log.start()
        try:
            return await body(log)
        finally:
            await (log.abort() if crash else log.close())

    return asyncio.run(main())


def lines_on_disk(spool: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(spool.glob("seg-*.jsonl")):
        out += [json.loads(line) for line in read_segment(path).splitlines() if line]
    return out


def statements(db: Database) -> dict[str, dict[str, Any]]:
    rows = db.execute(
        "SELECT record_id::text, session_id::text, seq, extract(epoch FROM at)::float8, agent, "
        "group_name, statement, parameters, fingerprint, kind, tables, phi_columns, decision, "
        "reason, rows, duration_ms, sqlstate, result_digest, result, approval_id "
        "FROM audit.statements"
    )
    keys = ("record_id", "session_id", "seq", "at", "agent", "group_name", "statement",
            "parameters", "fingerprint", "kind", "tables", "phi_columns", "decision", "reason",
            "rows", "duration_ms", "sqlstate", "result_digest", "result", "approval_id")
    return {r[0]: dict(zip(keys, r, strict=True)) for r in rows}


# --- spool only (no database) -------------------------------------------------------------
def test_begin_is_durable_before_returning(tmp_path: Path) -> None:
    rec = stmt("SELECT * FROM patients WHERE id = $1", parameters=["42"])

    async def body(log: AuditLog) -> list[dict[str, Any]]:
        await log.begin_statement(rec)
        return lines_on_disk(tmp_path)  # read right away, before anything else runs

    on_disk = with_log(dead_dsn(), tmp_path, body, crash=True)
    assert on_disk == [{
        "e": "begin", "record_id": str(rec.record_id), "session_id": str(SESSION),
        "seq": rec.seq, "at": rec.at, "agent": "agent-7", "group": "billing", "text": rec.text,
        "decision": "allowed", "parameters": ["42"], "fingerprint": None, "kind": None,
        "tables": [], "phi_columns": [], "reason": None, "approval_id": None,
    }]
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.glob("seg-*"))


def test_concurrent_callers_share_fsyncs(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> dict[str, int]:
        before = log.stats()["fsyncs"]
        await asyncio.gather(*(log.begin_statement(stmt(f"SELECT {i}")) for i in range(200)))
        stats = log.stats()
        stats["fsyncs"] -= before
        return stats

    stats = with_log(dead_dsn(), tmp_path, body, crash=True)
    assert stats["spooled"] == 200 and stats["open"] == 200
    assert stats["fsyncs"] < 50, stats
    assert len(lines_on_disk(tmp_path)) == 200


def test_second_log_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> None:
        other = new_log(dead_dsn(), tmp_path)
        with pytest.raises(AuditUnavailable, match="in use"):
            await other.start()

    with_log(dead_dsn(), tmp_path, body, crash=True)


def test_torn_trailing_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1 << 20)
    spool.open()
    spool.append(b'{"e":"end","record_id":"a"}\n')
    spool.close()
    path = tmp_path / segment_name(1)
    end = len(read_segment(path))
    with path.open("r+b") as f:
        f.seek(end)
        f.write(b'{"e":"begin","record_id":"b","text":"SELECT')  # crash mid-write
    again = Spool(tmp_path, segment_bytes=1 << 20)
    [seg] = again.open()
    again.close()
    assert (seg.number, seg.events, seg.torn) == (1, [{"e": "end", "record_id": "a"}], 1)
    assert again.current == 2


def test_segments_are_preallocated_and_read_up_to_the_zeros(tmp_path: Path) -> None:
    """Rotation renames the zero-filled next segment into place (an fdatasync then needs no
    journal commit); recovery reads each segment up to its first NUL, so the zeros after
    the last batch, or after a torn line, are never taken for events."""
    spool = Spool(tmp_path, segment_bytes=4096)
    spool.open()
    assert spool._prealloc_thread is not None
    spool._prealloc_thread.join()
    assert (tmp_path / PREALLOC_NAME).stat().st_size > 4096
    line = b'{"e":"end","record_id":"%d"}\n'
    for i in range(300):  # ~8 kB: rotates at least once
        spool.append(line % i)
        if spool._prealloc_thread is not None:
            spool._prealloc_thread.join()  # deterministic: every rotation finds one ready
    assert spool.current >= 3
    second = tmp_path / segment_name(2)
    assert second.stat().st_size > spool.sizes[2]  # the preallocated tail is still there
    with second.open("r+b") as f:  # a crash mid-write into the preallocated segment
        f.seek(spool.sizes[2])
        f.write(b'{"e":"begin","record_id":"torn"')
    spool.close()
    (tmp_path / "next.prealloc.tmp").write_bytes(b"\0" * 100)  # interrupted preallocation
    again = Spool(tmp_path, segment_bytes=4096)
    recovered = again.open()
    again.close()
    events = [e["record_id"] for seg in recovered for e in seg.events]
    assert events == [str(i) for i in range(300)]
    assert [seg.torn for seg in recovered if seg.number == 2] == [1]
    assert sum(seg.size for seg in recovered) == sum(len(line % i) for i in range(300)) + len(
        b'{"e":"begin","record_id":"torn"')
    assert not (tmp_path / "next.prealloc.tmp").exists()


def test_unstorable_text_is_made_storable(tmp_path: Path) -> None:
    rec = stmt("SELECT $1", parameters=["a\x00b", "\ud800"])

    async def body(log: AuditLog) -> None:
        await log.record_statement(rec, outcome(rec, duration_ms=float("nan")))

    with_log(dead_dsn(), tmp_path, body, crash=True)
    begin, end = lines_on_disk(tmp_path)
    assert begin["parameters"] == ["a\ufffdb", "?"] and end["duration_ms"] is None


# --- against PostgreSQL -------------------------------------------------------------------
def test_drained_rows_match_the_records_and_replay_is_idempotent(
        applied_clinic: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    recs = [
        stmt("SELECT full_name FROM patients WHERE id = $1", parameters=["7", None],
             fingerprint="fp1", kind="select", tables=("public.patients",),
             phi_columns=("public.patients.full_name",), decision="masked", approval_id=None),
        stmt("DELETE FROM claims", decision="blocked", reason="delete without WHERE",
             kind="delete", tables=("public.claims",)),
        stmt("UPDATE claims SET status = 'x' WHERE id = 1", decision="approved", approval_id=12),
    ]
    outs = [
        outcome(recs[0], rows=1, result_digest="ab" * 32, result=b"\x00kept\xff" * 3),
        outcome(recs[1], rows=None, duration_ms=0.0, sqlstate="42501"),
        outcome(recs[2], rows=1, note="approved by analyst"),
    ]

    async def write(log: AuditLog) -> None:
        await log.begin_statement(recs[0])
        log.finish_statement(outs[0])
        await log.record_statement(recs[1], outs[1])
        await log.begin_statement(recs[2])
        log.finish_statement(outs[2])
        assert not await log.flush(timeout=0.2)  # written, but the database is down

    with_log(dead_dsn(), spool, write, crash=True)  # database down: all stays in the spool
    shutil.copytree(spool, tmp_path / "copy")
    dsn = applied_clinic.dsn_as("policyc_proxy")

    async def drain(log: AuditLog) -> dict[str, int]:
        assert await log.flush()
        return log.stats()

    stats = with_log(dsn, spool, drain)
    assert stats["statements_inserted"] == 3 and stats["pending"] == 0
    rows = statements(applied_clinic)
    assert len(rows) == 3
    for rec, out in zip(recs, outs, strict=True):
        row = rows[str(rec.record_id)]
        assert row["at"] == pytest.approx(rec.at, abs=1e-6)
        assert row == {
            "record_id": str(rec.record_id), "session_id": str(rec.session_id),
            "seq": rec.seq, "at": row["at"], "agent": rec.agent, "group_name": rec.group,
            "statement": rec.text, "parameters": rec.parameters,
            "fingerprint": rec.fingerprint, "kind": rec.kind, "tables": list(rec.tables),
            "phi_columns": list(rec.phi_columns), "decision": rec.decision,
            "reason": "; ".join(r for r in (rec.reason, out.note) if r) or None,
            "rows": out.rows, "duration_ms": out.duration_ms, "sqlstate": out.sqlstate,
            "result_digest": out.result_digest, "result": out.result,
            "approval_id": rec.approval_id,
        }
    # the same spool recovered again (a crash after commit, before deletion): no duplicates
    replay = with_log(dsn, tmp_path / "copy", drain)
    assert (replay["statements_inserted"], replay["quarantined"], replay["pending"]) == (3, 0, 0)
    assert applied_clinic.execute("SELECT count(*) FROM audit.statements") == [(3,)]
    assert list(spool.glob("seg-*.jsonl")) == [spool / segment_name(2)]  # only the current


CRASHER = """
import asyncio, os, signal, sys, time, uuid
from pathlib import Path
from policyc.proxy.audit import AuditLog
from policyc.proxy.audit.records import StatementOutcome, StatementRecord

async def main():
    log = AuditLog(sys.argv[1], Path(sys.argv[2]), proxy_name="crasher")
    await log.start()
    ids = [uuid.UUID(x) for x in sys.argv[3:5]]
    session = uuid.UUID(sys.argv[5])
    for seq, rid in enumerate(ids, start=1):
        await log.begin_statement(StatementRecord(rid, session, seq, time.time(), "agent-7",
                                                  "billing", "SELECT 1", "allowed"))
    log.finish_statement(StatementOutcome(ids[1], 5, 2.5))
    await asyncio.sleep(0.05)  # the end line is written with the next batch
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_crash_recovery_records_unfinished_statements(
        applied_clinic: Database, tmp_path: Path) -> None:
    unfinished, finished, session_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, dead_dsn(), str(tmp_path), str(unfinished),
         str(finished), str(session_id)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "engine")}, capture_output=True,
        timeout=30, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    async def recover(log: AuditLog) -> dict[str, int]:
        assert await log.flush()
        return log.stats()

    stats = with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, recover)
    assert stats["recovered_unfinished"] == 1
    rows = statements(applied_clinic)
    assert rows[str(unfinished)]["reason"] == RECOVERED_REASON
    assert rows[str(unfinished)]["rows"] is None
    assert (rows[str(finished)]["reason"], rows[str(finished)]["rows"],
            rows[str(finished)]["duration_ms"]) == (None, 5, 2.5)
    # the seqs the crashed session assigned travel in the spool and survive the crash
    assert (rows[str(unfinished)]["seq"], rows[str(finished)]["seq"]) == (1, 2)
    assert {r["session_id"] for r in rows.values()} == {str(session_id)}


def test_database_down_fails_closed_when_the_spool_is_full_then_drains(
        applied_clinic: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def fill(log: AuditLog) -> tuple[int, AuditUnavailable]:
        accepted = 0
        while True:
            rec = stmt("SELECT * FROM visits WHERE patient_id = $1", parameters=["1"] * 10)
            try:
                await log.record_statement(rec, outcome(rec))
            except AuditUnavailable as exc:
                return accepted, exc
            accepted += 1

    accepted, refusal = with_log(dead_dsn(), tmp_path, fill, max_spool_bytes=40_000,
                                 segment_bytes=8_000)
    assert 50 < accepted < 200
    assert (refusal.code, refusal.sqlstate) == ("audit", "58030")
    assert "did not run" in str(refusal) and "SELECT" not in str(refusal)
    assert len(list(tmp_path.glob("seg-*.jsonl"))) > 3  # rotated while the database was down

    async def drain(log: AuditLog) -> dict[str, int]:
        assert await log.flush()
        rec = stmt()
        await log.begin_statement(rec)  # room again
        return log.stats()

    stats = with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, drain,
                     max_spool_bytes=40_000, segment_bytes=8_000)
    assert stats["statements_inserted"] == accepted
    assert applied_clinic.execute("SELECT count(*) FROM audit.statements") == [(accepted + 1,)]
    # drained segments are gone; the last statement (recorded at close) emptied the rest
    assert len(list(tmp_path.glob("seg-*.jsonl"))) == 1
    assert "unreachable" in caplog.text and "spool is full" in caplog.text
    assert "visits" not in caplog.text and "patient_id" not in caplog.text


def test_statement_without_outcome_goes_in_after_stale_after(
        applied_clinic: Database, tmp_path: Path) -> None:
    rec = stmt("SELECT pg_sleep(7200)")

    async def body(log: AuditLog) -> None:
        await log.begin_statement(rec)
        await asyncio.sleep(1.2)  # the stale check runs once a second
        assert await log.flush()
        log.finish_statement(outcome(rec, rows=1))  # finishes late: ON CONFLICT does nothing
        assert await log.flush()

    with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, body, stale_after=0.0)
    row = statements(applied_clinic)[str(rec.record_id)]
    assert (row["reason"], row["rows"]) == (STALE_REASON, None)
    assert applied_clinic.execute("SELECT count(*) FROM audit.statements") == [(1,)]


def session(**kw: Any) -> SessionRecord:
    fields: dict[str, Any] = {
        "session_id": uuid.uuid4(), "started_at": time.time(), "outcome": "open",
        "agent": "agent-7", "group": "billing", "oidc_groups": ("billing-agents",),
        "role": "billing", "claims": {"sub": "agent-7", "clinic_id": 1},
        "client_addr": "127.0.0.1", "client_port": 50000, "tls": True,
        "tls_version": "TLSv1.3",
    }
    fields.update(kw)
    return SessionRecord(**fields)


def test_open_and_end_session_register_and_unregister_the_backend(
        applied_clinic: Database, tmp_path: Path) -> None:
    rec = session()
    with applied_clinic.connect("billing") as backend:
        pid = backend.info.backend_pid
        assert backend.execute("SELECT policyc.agent()").fetchone() == (None,)

        async def open_(log: AuditLog) -> None:
            await log.open_session(rec, pid)

        with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, open_)
        assert backend.execute("SELECT policyc.agent(), policyc.claim('clinic_id')"
                               ).fetchone() == ("agent-7", "1")
        [row] = applied_clinic.execute(
            "SELECT agent, group_name, oidc_groups, role_name, claims, host(client_addr), "
            "client_port, tls, tls_version, proxy, outcome, reason, ended_at, "
            "extract(epoch FROM started_at)::float8 FROM audit.sessions WHERE session_id = %s",
            (rec.session_id,))
        assert row[:13] == ("agent-7", "billing", ["billing-agents"], "billing",
                            {"sub": "agent-7", "clinic_id": 1}, "127.0.0.1", 50000, True,
                            "TLSv1.3", "proxy-test", "open", None, None)
        assert row[13] == pytest.approx(rec.started_at, abs=1e-6)

        async def open_and_end(log: AuditLog) -> None:
            await log.open_session(rec2, pid)  # this process registered the pid
            log.end_session(SessionEnd(rec2.session_id, time.time(), "client closed", 1), pid)
            log.end_session(SessionEnd(rec2.session_id, time.time(), "again", 5), pid)
            assert await log.flush()

        rec2 = session()
        with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, open_and_end)
        assert backend.execute("SELECT policyc.agent()").fetchone() == (None,)
    assert applied_clinic.execute(
        "SELECT outcome, end_reason, ended_at IS NOT NULL, end_seq FROM audit.sessions "
        "WHERE session_id = %s", (rec2.session_id,)) == [("closed", "client closed", True, 1)]


def test_session_record_failures(applied_clinic: Database, tmp_path: Path) -> None:
    refused = session(outcome="refused", reason="token expired", agent=None, group=None,
                      claims={}, client_addr="/run/postgresql/.s.PGSQL.5432")

    async def down(log: AuditLog) -> None:
        with pytest.raises(AuditUnavailable, match="session was refused"):
            await log.open_session(session(), None)
        await log.refuse_session(refused)  # spooled, never raises

    with_log(dead_dsn(), tmp_path, down)
    assert [e["e"] for e in lines_on_disk(tmp_path)] == ["session_refused"]

    async def up(log: AuditLog) -> None:
        assert await log.flush()
        # a backend of another role than the session's group is not registered
        with pytest.raises(AuditUnavailable), applied_clinic.connect("clinician") as other:
            await log.open_session(session(), other.info.backend_pid)

    with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, up)
    assert applied_clinic.execute(
        "SELECT outcome, reason, client_addr, agent FROM audit.sessions") == [
        ("refused", "token expired", None, None)]


def test_drainer_reconnects_after_losing_its_connection(
        applied_clinic: Database, tmp_path: Path) -> None:
    async def body(log: AuditLog) -> dict[str, int]:
        first, second = stmt(), stmt()
        await log.record_statement(first, outcome(first))
        assert await log.flush()
        applied_clinic.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'policyc-proxy-audit'")
        await log.record_statement(second, outcome(second))
        assert await log.flush()
        return log.stats()

    stats = with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, body)
    assert stats["statements_inserted"] == 2
    assert applied_clinic.execute("SELECT count(*) FROM audit.statements") == [(2,)]


def test_a_row_the_database_rejects_is_quarantined_not_lost(
        applied_clinic: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = stmt()
    bad = stmt("SELECT 'Ada Lovelace'", parameters=["900-00-0001"],
               approval_id=2**70)  # bigint overflow: a data error

    async def body(log: AuditLog) -> dict[str, int]:
        await log.record_statement(bad, outcome(bad))
        await log.record_statement(good, outcome(good))
        assert await log.flush()
        return log.stats()

    dsn = applied_clinic.dsn_as("policyc_proxy")
    stats = with_log(dsn, tmp_path, body)
    assert (stats["statements_inserted"], stats["quarantined"]) == (1, 1)
    assert list(statements(applied_clinic)) == [str(good.record_id)]
    # kept on disk, and retried (and kept again) by the next run
    assert str(bad.record_id) in [e.get("record_id") for e in lines_on_disk(tmp_path)]

    async def restart(log: AuditLog) -> dict[str, int]:
        assert await log.flush()
        return log.stats()

    assert with_log(dsn, tmp_path, restart)["quarantined"] == 1
    assert str(bad.record_id) in caplog.text and "22003" in caplog.text
    assert "Lovelace" not in caplog.text and "900-00" not in caplog.text


def test_drainer_keeps_partitions_ahead_and_seals_what_it_drained(
        applied_clinic: Database, tmp_path: Path) -> None:
    """Seqs 0 (session), 1..n (statements) and end_seq form one gapless chain, which the
    proxy's own checkpoints seal; the last checkpoint comes with close()."""
    rec = session()
    recs = [stmt(f"SELECT {i}", session_id=rec.session_id, seq=i) for i in (1, 2, 3)]

    async def body(log: AuditLog) -> dict[str, int]:
        await log.open_session(rec, None)
        for r in reversed(recs):  # arrival order does not matter, positions do
            await log.record_statement(r, outcome(r))
        assert await log.flush()
        deadline = time.monotonic() + 5
        while log.stats()["checkpoints"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.end_session(SessionEnd(rec.session_id, time.time(), "client closed", 4), None)
        assert await log.flush()
        return log.stats()

    stats = with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, body,
                     checkpoint_interval=0.05)
    assert stats["partition_runs"] == 1 and stats["checkpoints"] >= 1
    assert stats["upkeep_errors"] == 0
    chain = str(rec.session_id)
    # the seal checkpoints cover the chain 0..4 without a gap; the end element (closed after
    # the last periodic checkpoint) was sealed by close()
    ranges = applied_clinic.execute(
        "SELECT (entries -> %s ->> 0)::bigint, (entries -> %s ->> 1)::bigint "
        "FROM audit.checkpoints WHERE kind = 'seal' AND entries ? %s ORDER BY id",
        (chain, chain, chain))
    assert len(ranges) >= 2 and ranges[0][0] == 0 and ranges[-1][1] == 4
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert applied_clinic.execute(
        "SELECT seq FROM audit.statements WHERE session_id = %s ORDER BY seq",
        (rec.session_id,)) == [(1,), (2,), (3,)]
    this_month = applied_clinic.execute(
        "SELECT to_regclass(format('audit.statements_%s', to_char(now() AT TIME ZONE 'UTC', "
        "'YYYY_MM'))) IS NOT NULL")
    assert this_month == [(True,)]


def test_upkeep_failures_are_logged_and_never_stop_statements(
        applied_clinic: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    applied_clinic.execute(
        "REVOKE EXECUTE ON FUNCTION audit.checkpoint(), "
        "audit.ensure_partitions(timestamptz, timestamptz) FROM policyc_proxy")
    rec = stmt("SELECT 'Ada Lovelace'")

    async def body(log: AuditLog) -> dict[str, int]:
        await log.record_statement(rec, outcome(rec))
        assert await log.flush()
        return log.stats()

    stats = with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, body,
                     checkpoint_interval=0.01)
    assert stats["statements_inserted"] == 1
    assert stats["checkpoints"] == 0 and stats["partition_runs"] == 0
    assert stats["upkeep_errors"] >= 2  # ensure_partitions, and the checkpoint at close
    assert applied_clinic.execute("SELECT count(*) FROM audit.statements") == [(1,)]
    assert "checkpoint failed (42501)" in caplog.text
    assert "creating partitions ahead failed (42501)" in caplog.text
    assert "Lovelace" not in caplog.text


def test_a_record_queued_later_keeps_its_seq(applied_clinic: Database, tmp_path: Path) -> None:
    """A statement whose record could not be made durable in time did not run; it is still
    recorded (fire and forget) so its session's seqs have no gap."""
    rec = stmt("SELECT 1", seq=41)

    async def body(log: AuditLog) -> None:
        log.record_statement_later(rec, StatementOutcome(
            rec.record_id, None, None, "58030", note="not run: the audit trail was unavailable"))
        assert await log.flush()

    with_log(applied_clinic.dsn_as("policyc_proxy"), tmp_path, body)
    row = statements(applied_clinic)[str(rec.record_id)]
    assert (row["seq"], row["sqlstate"], row["reason"]) == (
        41, "58030", "not run: the audit trail was unavailable")


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
def test_segments_rotated_and_deleted_under_load_lose_no_durable_record(
        applied_clinic: Database, tmp_path: Path, inline: bool) -> None:
    """Many sessions, tiny segments rotating every few batches, the drainer deleting drained
    segments all along, then a crash: every record that was durable reaches the database
    (drained before the crash, or recovered from a segment that was not deleted)."""
    durable: list[uuid.UUID] = []

    async def load(log: AuditLog) -> None:
        async def session(n: int) -> None:
            for i in range(60):
                rec = stmt(f"SELECT {n}, {i}", session_id=uuid.uuid4(), seq=1)
                await log.spool_statement(rec)
                durable.append(rec.record_id)
                if i % 3:
                    log.finish_statement(outcome(rec))
                await asyncio.sleep(0)

        await asyncio.gather(*(session(n) for n in range(12)))

    dsn = applied_clinic.dsn_as("policyc_proxy")
    with_log(dsn, tmp_path, load, crash=True, segment_bytes=4096, drain_interval=0.001,
             inline=inline)
    with_log(dsn, tmp_path, lambda log: log.flush(20))
    found = statements(applied_clinic)
    missing = [rid for rid in durable if str(rid) not in found]
    assert len(durable) == 720 and not missing, f"{len(missing)} durable records lost"
