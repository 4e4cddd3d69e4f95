"""The record gate without a database: which statements' answers may leave before their
records are durable, and which responses carry a gate.

The audit sink here hands out futures the test resolves (the spool's durability); upstream is
one end of a real socket pair.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from conftest import clinic_policy
from policyc.identity import AgentIdentity
from policyc.proxy.audit import AuditUnavailable
from policyc.proxy.audit.records import SessionEnd, StatementOutcome, StatementRecord
from policyc.proxy.judge.cache import Judge
from policyc.proxy.session.gate import RecordGate, answers_early
from policyc.proxy.session.recorder import Recorder
from policyc.proxy.session.state import Expect, SessionState

POLICY = clinic_policy("clinic")
GROUP = next(g for g in POLICY.groups if g.name == "billing")
JUDGE = Judge(POLICY, 1 << 20)


@pytest.mark.parametrize(("sql", "early"), [
    ("BEGIN", True),
    ("begin isolation level serializable", True),
    ("START TRANSACTION", True),
    ("SAVEPOINT a", True),
    ("RELEASE a", True),
    ("RELEASE SAVEPOINT a", True),
    ("ROLLBACK TO SAVEPOINT a", False),  # not part of the rule decided in issue #13
    ("ROLLBACK", False),
    ("COMMIT", False),
    ("SELECT 1", False),
    ("BEGIN; SELECT 1", False),  # the SELECT's answer carries the database's rows
    ("SAVEPOINT a; RELEASE a", True),
    ("/* c */ BEGIN", True),  # the statement's own text, as the parser gives it
    ("PREPARE TRANSACTION 'x'", False),
])
def test_only_begin_savepoint_and_release_answer_before_their_record(sql: str,
                                                                     early: bool) -> None:
    assert answers_early(JUDGE.judge(GROUP, sql)) is early


class Spool:
    """Durability the test decides: each record's future, resolved by hand."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []
        self.later: list[tuple[StatementRecord, StatementOutcome]] = []

    def spool_statement(self, rec: StatementRecord,
                        outcome: StatementOutcome | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def finish_statement(self, outcome: StatementOutcome) -> None:
        pass

    def record_statement_later(self, rec: StatementRecord, outcome: StatementOutcome) -> None:
        self.later.append((rec, outcome))

    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None:
        pass


async def _batch(gate: RecordGate, recorder: Recorder, state: SessionState,
                 sql: str) -> Expect:
    """Queue ``sql`` as one simple-query batch and send it; its statement's expectation."""
    decision = JUDGE.judge(GROUP, sql)
    overlap = gate.overlaps(decision, None)
    gate.begin_batch()
    record = recorder.record(sql, decision, 0, "allowed")
    expect = Expect("stmt", recorder.unit(record, decision, overlap=overlap))
    gate.expect(expect)
    gate.expect(Expect("sync", batch=state.batch))
    state.batch += 1
    await gate.flush([sql.encode()])
    return expect


def _run(sqls: list[str], fail: int | None = None) -> tuple[list[Expect], Spool, RecordGate]:
    async def main() -> tuple[list[Expect], Spool, RecordGate]:
        identity = AgentIdentity("agent-7", ("billing-agents",), {}, 1e12, None)
        state = SessionState(uuid.uuid4(), identity, GROUP)
        spool = Spool()
        near, far = socket.socketpair()
        with near, far:
            _reader, writer = await asyncio.open_connection(sock=near)
            gate = RecordGate(state, spool, writer)
            recorder = Recorder(state, gate, None)
            expects = [await _batch(gate, recorder, state, sql) for sql in sqls]
            if fail is not None:
                spool.futures[fail].set_exception(AuditUnavailable("disk full"))
                await asyncio.sleep(0)
            for future in spool.futures:
                if not future.done():
                    future.set_result(None)
            writer.close()
        return expects, spool, gate
    return asyncio.run(main())


def test_a_later_answer_still_waits_for_its_own_record() -> None:
    """BEGIN's answer is not gated; the read sent after it waits for the read's record (the
    last of its batch: durable means BEGIN's is too, records being durable in order)."""
    (begin, read), spool, _gate = _run(["BEGIN", "SELECT id FROM patients WHERE id = 1"])
    assert begin.gate is None
    assert read.gate is spool.futures[1]


def test_savepoint_and_release_answer_early_and_a_read_between_them_does_not() -> None:
    (_begin, savepoint, read, release), spool, _gate = _run([
        "BEGIN", "SAVEPOINT a", "SELECT id FROM patients WHERE id = 1", "RELEASE a"])
    assert savepoint.gate is None and release.gate is None
    assert read.gate is spool.futures[2]


def test_a_read_s_answer_is_gated_by_its_record() -> None:
    (read,), spool, _gate = _run(["SELECT id FROM patients WHERE id = 1"])
    assert read.gate is spool.futures[0]


def test_an_early_answer_whose_record_fails_still_ends_the_session() -> None:
    (begin,), spool, gate = _run(["BEGIN"], fail=0)
    assert begin.gate is None
    assert isinstance(gate.failure, AuditUnavailable)
    [(record, outcome)] = spool.later
    assert record.text == "BEGIN" and outcome.sqlstate == AuditUnavailable.sqlstate
    assert outcome.note is not None and "carries nothing from the database" in outcome.note
