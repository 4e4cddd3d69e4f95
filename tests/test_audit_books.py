"""The audit log's books, pure: pairing begins and ends, orphans, segment references,
staleness, recovery and batching, with an injected clock and no database or files."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from policyc.proxy.audit.books import MAX_BATCH_PAYLOAD, ORPHAN_SECONDS, Books
from policyc.proxy.audit.events import RECOVERED_REASON, STALE_REASON, begin_event, end_event
from policyc.proxy.audit.records import StatementOutcome, StatementRecord
from policyc.proxy.audit.spool import RecoveredSegment

SESSION = uuid.UUID("00000000-0000-4000-8000-000000000001")
_seqs = itertools.count(1)


def stmt(at: float | None = None) -> StatementRecord:
    return StatementRecord(uuid.uuid4(), SESSION, next(_seqs),
                           time.time() if at is None else at, "agent-7", "billing",
                           "SELECT 1", "allowed")


def outcome(rec: StatementRecord, rows: int | None = 3, **kw: Any) -> StatementOutcome:
    return StatementOutcome(rec.record_id, rows, 1.25, **kw)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def books(**kw: Any) -> Books:
    return Books({}, **kw)


def test_a_begin_and_its_end_become_one_row_and_release_both_segments() -> None:
    b = books()
    rec = stmt()
    b.absorb(rec, 1, 10, live=True)
    assert not b.work and b.refs == {1: 1}
    b.absorb(outcome(rec, rows=7), 2, 10, live=True)
    assert len(b.work) == 1 and not b.open
    work = b.work[0]
    assert (work.kind, work.row["rows"], work.segments, work.size) == ("statement", 7, (1, 2), 20)
    assert b.complete(b.take_batch(10)) == []
    assert b.refs == {} and b.counts["drained"] == 2 and b.counts["statements_inserted"] == 1


def test_an_outcome_booked_before_its_begin_is_paired() -> None:
    """A batch flushed inline can be booked before an earlier batch the spool thread wrote
    (its completion callback still queued): the outcome must wait for its begin, not be
    dropped (which left the statement without a row until it went stale)."""
    b = books()
    rec = stmt()
    b.absorb(outcome(rec, rows=7), 2, 10, live=True)
    assert not b.work  # nothing to drain yet
    b.absorb(rec, 1, 10, live=True)
    b.pair_orphans()  # what booking a written batch does after its events
    assert len(b.work) == 1
    work = b.work[0]
    assert work.row["record_id"] == str(rec.record_id) and work.row["rows"] == 7
    assert sorted(work.segments) == [1, 2]
    assert not b.open and not b.orphans
    # in a recovered spool (file order) an outcome without a begin means the begin was
    # drained before: released at once
    b.absorb(outcome(stmt()), 3, 10, live=False)
    assert not b.orphans and 3 not in b.refs


def test_a_requeued_record_keeps_its_own_outcome() -> None:
    """A begin whose write failed is queued again with its outcome; an outcome written for it
    meanwhile must not take that one's place."""
    b = books()
    rec = stmt()
    b.absorb(outcome(rec, rows=3), 1, 10, live=True)
    b.absorb(rec, 2, 10, live=True)
    b.absorb(outcome(rec, rows=None, sqlstate="58030", note="answer withheld"), 2, 10,
             live=True)
    b.pair_orphans()
    assert [(w.row["rows"], w.row["sqlstate"]) for w in b.work] == [(None, "58030")]
    assert not b.orphans and not b.open and 1 not in b.refs


def test_a_duplicate_begin_counts_once() -> None:
    b = books()
    rec = stmt()
    b.absorb(rec, 1, 10, live=True)
    b.absorb(begin_event(rec), 2, 10, live=False)  # the same line, read back
    assert list(b.open) == [str(rec.record_id)] and b.refs == {1: 1}


def test_an_orphan_is_dropped_after_a_minute_and_its_segment_released() -> None:
    mono, wall = Clock(), Clock(5000.0)
    b = books(clock=mono, wall=wall)
    b.absorb(outcome(stmt()), 4, 10, live=True)
    wall.now += 2
    b.expire_stale()
    assert b.orphans and b.refs == {4: 1}  # still waiting for its begin
    mono.now += ORPHAN_SECONDS + 1
    wall.now += 2
    b.expire_stale()
    assert not b.orphans and b.refs == {} and not b.work


def test_a_begin_without_an_outcome_goes_stale_with_a_reason() -> None:
    wall = Clock(10_000.0)
    b = books(stale_after=60.0, wall=wall)
    old, new = stmt(at=wall.now - 61), stmt(at=wall.now - 1)
    b.absorb(old, 1, 10, live=True)
    b.absorb(new, 1, 10, live=True)
    b.expire_stale()
    assert [(w.row["record_id"], w.row["reason"]) for w in b.work] == [
        (str(old.record_id), STALE_REASON)]
    assert list(b.open) == [str(new.record_id)]
    b.expire_stale()  # checked at most once a second
    assert len(b.work) == 1


def test_recovery_books_a_previous_run_and_records_unfinished_statements() -> None:
    done, cut = stmt(), stmt()
    segment = RecoveredSegment(3, [begin_event(done), end_event(outcome(done)),
                                   begin_event(cut), {"e": "what is this"}], torn=1)
    b = books()
    b.recover([segment])
    rows = {w.row["record_id"]: w.row for w in b.work}
    assert rows[str(done.record_id)]["reason"] is None
    assert rows[str(cut.record_id)]["reason"] == RECOVERED_REASON
    assert b.counts["recovered_unfinished"] == 1 and b.counts["torn_lines"] == 1
    b.complete(b.take_batch(10))
    assert b.refs == {3: 1}  # the unknown event keeps its segment, for a human


def test_close_out_records_open_begins_and_releases_orphans() -> None:
    b = books()
    running = stmt()
    b.absorb(running, 1, 10, live=True)
    b.absorb(outcome(stmt()), 2, 10, live=True)
    b.close_out()
    assert [w.row["reason"] for w in b.work] == [RECOVERED_REASON]
    assert not b.orphans and b.live_segments() == {1}


def test_a_live_session_end_asks_to_unregister_its_backend_a_recovered_one_does_not() -> None:
    sid = str(uuid.uuid4())
    event = {"e": "session_end", "session_id": sid, "ended_at": 1.0, "reason": "client",
             "end_seq": 3, "pid": 4242}
    b = books()
    b.absorb(event, 1, 10, live=True)
    b.absorb(event, 1, 10, live=False)
    assert b.complete(b.take_batch(10)) == [(4242, sid)]


def test_a_batch_stops_at_its_size_or_payload_but_takes_at_least_one() -> None:
    b = books()
    for _ in range(5):
        rec = stmt()
        b.absorb(rec, 1, 10, live=True)
        b.absorb(outcome(rec), 1, MAX_BATCH_PAYLOAD // 2, live=True)
    assert len(b.take_batch(3)) == 1  # the second would pass the payload limit
    b.work[0].size = b.work[1].size = 1
    assert len(b.take_batch(3)) == 3  # then the batch size stops it
    batch = b.take_batch(1)
    b.requeue(batch)
    assert list(b.work) == batch
