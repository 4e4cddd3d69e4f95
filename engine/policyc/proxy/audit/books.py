"""The drainer's books: which spooled events are open, paired, ready to drain, and which spool
segments still hold something undrained.  Pure: no I/O, no event loop; the clock is injected.

* A "begin" opens a statement; its "end" makes it a row to drain (:class:`Work`).  The end
  that follows its begin wins (a record re-queued after a failed write carries its own
  outcome; an earlier one is superseded); a duplicate begin is released, the first counts.
* An end booked before its begin (an **orphan**: a batch written inline can be booked before
  an earlier one the spool thread wrote, its callback still on its way) waits for that begin
  for :data:`ORPHAN_SECONDS`; a begin that arrives gets it after its batch
  (:meth:`Books.pair_orphans`), unless an end of its own follows in the same batch.  An
  orphan older than that had its begin drained before (a stale record, or a replay after a
  crash): the row exists and the outcome is dropped.  A recovered (not live) end without a
  begin is released at once for the same reason.
* Every event holds a reference on its segment (``refs``); a segment without references
  (and not the current one) may be deleted by the writer.
* Begins without an end become rows with a reason: at recovery and close
  (``RECOVERED_REASON``) and after ``stale_after`` seconds (``STALE_REASON``); if such a
  statement finishes later, its outcome is dropped by ``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from policyc.proxy.audit.events import (
    RECOVERED_REASON,
    STALE_REASON,
    Event,
    event_at,
    statement_row,
)
from policyc.proxy.audit.records import StatementOutcome, StatementRecord
from policyc.proxy.audit.spool import RecoveredSegment

log = logging.getLogger("policyc.proxy.audit")

#: How long an outcome booked before its begin waits for it.
ORPHAN_SECONDS: Final = 60.0
#: Largest JSON payload sent in one drain statement (jsonb itself stops near 256 MB).
MAX_BATCH_PAYLOAD: Final = 16 << 20

Counts = dict[str, int]


@dataclass
class Open:
    """A begin waiting for its end."""

    event: Event
    segment: int
    size: int


@dataclass
class Work:
    """One row (or session close) to drain; ``segments`` has one entry per spooled event."""

    kind: Literal["statement", "session", "session_end"]
    row: dict[str, Any]
    segments: tuple[int, ...]
    size: int
    unregister: int | None = None

    @staticmethod
    def statement(begin: Open, end: Event | None, segment: int | None, size: int,
                  note: str | None = None) -> Work:
        segments = (begin.segment,) if segment is None else (begin.segment, segment)
        return Work("statement", statement_row(begin.event, end, note), segments,
                    begin.size + size)


@dataclass
class Orphan:
    """An outcome booked before its begin, and when (monotonic)."""

    event: Event
    segment: int
    size: int
    since: float


class Books:
    """What is open, paired and ready; see the module docstring."""

    def __init__(self, counts: Counts, *, stale_after: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.counts = counts
        self.stale_after = stale_after
        self._clock = clock
        self._wall = wall
        self.open: dict[str, Open] = {}
        self.orphans: dict[str, Orphan] = {}
        self._adopt: list[str] = []  # begins of this batch that have an orphan outcome
        self.work: deque[Work] = deque()
        self.refs: dict[int, int] = {}
        self.quarantine: list[Work] = []
        self._last_stale_check = 0.0
        for name in ("spooled", "drained", "recovered_unfinished", "torn_lines"):
            counts.setdefault(name, 0)

    # --- booking durable events ---------------------------------------------------------
    def absorb(self, event: Event, segment: int, size: int, *, live: bool) -> None:
        """Account for one durable event and turn it into work when it is complete."""
        self.refs[segment] = self.refs.get(segment, 0) + 1
        self.counts["spooled"] += 1
        kind: Any
        rid: Any
        if isinstance(event, StatementRecord):
            kind, rid = "begin", event.record_key
        elif isinstance(event, StatementOutcome):
            kind, rid = "end", event.record_key
        else:
            kind, rid = event.get("e"), event.get("record_id")
        if kind == "begin" and isinstance(rid, str):
            if rid in self.open:
                self.release((segment,))  # a duplicate line: the first one counts
            else:
                self.open[rid] = Open(event, segment, size)
                if rid in self.orphans:  # paired after its batch, unless an end follows
                    self._adopt.append(rid)
        elif kind == "end" and isinstance(rid, str):
            begun = self.open.pop(rid, None)
            if begun is not None:
                superseded = self.orphans.pop(rid, None)
                if superseded is not None:
                    self.release((superseded.segment,))
                self.work.append(Work.statement(begun, event, segment, size))
            elif live:
                self.orphans[rid] = Orphan(event, segment, size, self._clock())
            else:
                self.release((segment,))  # its begin is already drained (stale or replay)
        elif kind == "session_refused" and isinstance(event, dict):
            row = {k: v for k, v in event.items() if k != "e"}
            self.work.append(Work("session", row, (segment,), size))
        elif kind == "session_end" and isinstance(event, dict):
            pid = event.get("pid")
            sid = event.get("session_id")
            unregister = pid if live and isinstance(pid, int) and isinstance(sid, str) else None
            self.work.append(Work("session_end", {
                "session_id": sid, "ended_at": event.get("ended_at"),
                "reason": event.get("reason"), "end_seq": event.get("end_seq"),
            }, (segment,), size, unregister))
        else:
            # kept on disk for a human: never drained, never deleted
            log.error("audit spool segment %d holds an unknown event; kept", segment)

    def pair_orphans(self) -> None:
        """Give begins booked after their outcome (and not followed by another) that outcome."""
        adopt, self._adopt = self._adopt, []
        for rid in adopt:
            orphan = self.orphans.get(rid)
            begun = self.open.get(rid)
            if orphan is None or begun is None:
                continue
            del self.orphans[rid], self.open[rid]
            self.work.append(Work.statement(begun, orphan.event, orphan.segment, orphan.size))

    def release(self, segments: Iterable[int]) -> None:
        for segment in segments:
            self.refs[segment] -= 1
            if not self.refs[segment]:
                del self.refs[segment]
            self.counts["drained"] += 1

    # --- recovery, staleness, close ---------------------------------------------------------
    def recover(self, recovered: list[RecoveredSegment]) -> None:
        """Book what a previous run left; its begins without an end become work."""
        for seg in recovered:
            self.counts["torn_lines"] += seg.torn
            for event in seg.events:
                self.absorb(event, seg.number, len(json.dumps(event)), live=False)
        self.counts["recovered_unfinished"] = self.recover_open(RECOVERED_REASON)
        if recovered:
            log.info("audit spool recovered %d segment(s), %d event(s) to drain",
                     len(recovered), len(self.work))

    def recover_open(self, reason: str, older_than: float | None = None) -> int:
        """Turn begins without an end into work with ``reason``; returns how many."""
        count = 0
        for rid, opened in list(self.open.items()):
            at = event_at(opened.event)
            if older_than is not None and isinstance(at, int | float) and at > older_than:
                continue
            del self.open[rid]
            self.work.append(Work.statement(opened, None, None, 0, reason))
            count += 1
        return count

    def expire_stale(self) -> None:
        """At most once a second: drop old orphans, record begins older than
        ``stale_after`` with ``STALE_REASON``."""
        now = self._wall()
        if now - self._last_stale_check < 1.0:
            return
        self._last_stale_check = now
        old = self._clock() - ORPHAN_SECONDS
        for rid, orphan in list(self.orphans.items()):
            if orphan.since < old:
                del self.orphans[rid]
                self.release((orphan.segment,))
        if self.recover_open(STALE_REASON, older_than=now - self.stale_after):
            log.warning("audit: statements without an outcome after %.0f s recorded as such",
                        self.stale_after)

    def close_out(self) -> None:
        """At close: orphans' begins were drained before; open begins are recorded as
        stopped."""
        for orphan in self.orphans.values():
            self.release((orphan.segment,))
        self.orphans.clear()
        self.recover_open(RECOVERED_REASON)

    # --- draining -------------------------------------------------------------------------
    def take_batch(self, batch_size: int) -> list[Work]:
        """The next rows to insert: at most ``batch_size``, at most
        :data:`MAX_BATCH_PAYLOAD` bytes (but at least one)."""
        batch: list[Work] = []
        size = 0
        while self.work and len(batch) < batch_size:
            if batch and size + self.work[0].size > MAX_BATCH_PAYLOAD:
                break
            work = self.work.popleft()
            batch.append(work)
            size += work.size
        return batch

    def requeue(self, batch: list[Work]) -> None:
        """Rows that were not inserted go back to the head, in order."""
        self.work.extendleft(reversed(batch))

    def complete(self, batch: list[Work]) -> list[tuple[int, str]]:
        """Rows now in the database: release their segments; returns the (backend pid,
        session id) pairs of ended sessions to unregister."""
        unregister: list[tuple[int, str]] = []
        for work in batch:
            self.release(work.segments)
            if work.kind == "statement":
                self.counts["statements_inserted"] = (
                    self.counts.get("statements_inserted", 0) + 1)
            if work.unregister is not None:
                unregister.append((work.unregister, work.row["session_id"]))
        return unregister

    def live_segments(self) -> set[int]:
        """Segments that still hold an undrained event (never deleted)."""
        return set(self.refs)
