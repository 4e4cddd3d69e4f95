"""The proxy's audit log: fail closed on a durable local spool, drained into PostgreSQL.

Every statement's "begin" event is fdatasync'ed to the spool (:mod:`.spool`) before the
statement can matter: :meth:`AuditLog.spool_statement` queues it and returns a future that is
done once the line is durable (or failed with :class:`AuditUnavailable`); the session decides
what waits for that future — the statement itself, or, for a provably side-effect-free read,
only its answer (see :mod:`policyc.proxy.session`).

The log is a façade over parts with one job each:

* :mod:`.events` — what a spool line holds, encoded once; the rows drained from it;
* :mod:`.writer` (with :mod:`.spoolthread`) — group commit: lines become durable in batches;
* :mod:`.books` — pure bookkeeping: open, paired, ready, which segments are still live;
* :mod:`.drain` — the drainer and the schema's upkeep;
* :mod:`.sessions` — session rows and backend registration;
* :mod:`.owner` / :mod:`.connect` — whom the spool belongs to; connections only to it.

Each record carries its session's ``seq`` (assigned by the session, spooled in the begin
event, so a recovered record keeps it) and, with ``results: full``, the result as sent
(base64 in the end event); the database fills the hash chain itself.

Known limits (by design):

* A begin with no end after ``stale_after`` seconds (default one hour) is inserted with
  ``reason = 'no outcome recorded'``; if the statement finishes later, its outcome is dropped
  by ``ON CONFLICT DO NOTHING``.  Begins left by a previous run (crash) are inserted at
  ``start()`` with ``reason = 'proxy stopped before the statement completed'``; so are begins
  still open at ``close()``.  A batch whose fsync failed may still leave lines on disk: such a
  statement did not run, yet may be recorded with that reason (over-recording, never under).
* Pending events are held in memory as well as on disk, so a long outage costs memory in
  proportion to the spool.
* Text the database cannot store is made storable, never refused (see :mod:`.events`).
* A row the database rejects on its own is quarantined, never dropped (see :mod:`.drain`).

Nothing here logs statement text, parameters or claims: only ids, counts and SQLSTATEs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from policyc.proxy.audit.books import Books
from policyc.proxy.audit.connect import Connector, close_quietly
from policyc.proxy.audit.drain import DRAIN_INTERVAL, Drainer
from policyc.proxy.audit.events import begin_event, begin_line, end_event, end_line
from policyc.proxy.audit.failures import AuditUnavailable, connect_failure
from policyc.proxy.audit.owner import SpoolOwnershipError, claim, instance_id, read_identity
from policyc.proxy.audit.records import (
    SessionEnd,
    SessionRecord,
    StatementOutcome,
    StatementRecord,
)
from policyc.proxy.audit.sessions import DEAD_AFTER, HEARTBEAT_EVERY, SessionDesk
from policyc.proxy.audit.spool import RecoveredSegment, Spool
from policyc.proxy.audit.writer import LogState, Writer
from policyc.proxy.tally import Histogram

if TYPE_CHECKING:
    from policyc.proxy.config import Upstream

log = logging.getLogger("policyc.proxy.audit")

T = TypeVar("T")

_COUNTS = ("spooled", "drained", "statements_inserted", "write_batches", "io_errors",
           "full_refusals", "refused_dropped", "recovered_unfinished", "torn_lines",
           "checkpoints", "partition_runs", "upkeep_errors", "orphans_closed", "outages")


@dataclass(frozen=True)
class AuditHealth:
    """The audit log's state for ``/ready`` and ``/metrics``."""

    running: bool
    outage: bool  # the drain cannot reach the database
    spool_failing: bool  # the last spool write failed
    spool_full: bool  # statements are refused until the drain makes room
    spool_bytes: int
    spool_limit: int
    pending: int  # records not yet in the database (ready to drain, or being written)
    oldest_pending_seconds: float  # age of the oldest record ready to drain (0: none)
    flushes: Histogram
    counts: dict[str, int]

    def problem(self) -> str | None:
        """Why the trail cannot take records now (None: it can)."""
        if not self.running:
            return "the audit log is not running"
        if self.spool_failing:
            return "the audit spool cannot be written"
        if self.spool_full or self.spool_bytes >= self.spool_limit:
            return "the audit spool is at its limit"
        if self.outage:
            return "the audit database is unreachable (records wait in the spool)"
        return None


class AuditLog:
    """Durable statement audit for one proxy process; see the module docstring."""

    def __init__(self, conninfo: str, spool_dir: Path, *, proxy_name: str,
                 max_spool_bytes: int = 1 << 30, segment_bytes: int = 8 << 20,
                 drain_interval: float = DRAIN_INTERVAL, batch_size: int = 1000,
                 db_timeout: float = 5.0, stale_after: float = 3600.0,
                 checkpoint_interval: float = 60.0, lazy_delay: float = 0.002,
                 inline: bool = True, upstream: Upstream | None = None,
                 heartbeat_every: float = HEARTBEAT_EVERY,
                 dead_after: float = DEAD_AFTER) -> None:
        # spool ownership (the proxy passes its upstream; see policyc.proxy.audit.owner)
        self._upstream = upstream
        self._connector = Connector(conninfo, db_timeout)
        # the current segment is never deleted: keep it small next to the limit
        segment_bytes = max(4096, min(segment_bytes, max_spool_bytes // 8))
        self._spool = Spool(Path(spool_dir), segment_bytes)
        self._proxy_name = proxy_name
        self._state = LogState()
        self._counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self._books = Books(self._counts, stale_after=stale_after)
        self._writer = Writer(self._spool, self._state, self._counts,
                              max_spool_bytes=max_spool_bytes, lazy_delay=lazy_delay,
                              inline=inline, wake_drainer=self._wake_drainer)
        self._desk = SessionDesk(self._connector, self._writer, self._state, self._counts,
                                 proxy_name=proxy_name, heartbeat_every=heartbeat_every,
                                 dead_after=dead_after)
        self._drainer = Drainer(self._books, self._writer, self._desk, self._connector,
                                self._state, self._counts, drain_interval=drain_interval,
                                batch_size=batch_size, checkpoint_interval=checkpoint_interval)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open (and lock) the spool, make sure it belongs to the upstream (when one was
        given), recover what a previous run left, start the tasks.

        Raises :class:`AuditUnavailable` when the spool cannot be opened or is locked by
        another process, or the upstream is unreachable so its ownership cannot be checked;
        :class:`~policyc.proxy.audit.owner.SpoolOwnershipError` when it belongs to another
        database.  Nothing in the spool is changed or drained then.
        """
        state = self._state
        if state.running or state.stopping:
            raise RuntimeError("an AuditLog is started once")
        thread = self._writer.thread
        self._writer.start(asyncio.get_running_loop())
        try:
            # nothing in the directory changes before its owner is checked
            recovered = await self._io(functools.partial(self._spool.open, begin=False))
        except OSError as exc:
            thread.stop(abort=True)
            raise AuditUnavailable(f"the audit spool cannot be opened: {exc.strerror or exc}",
                                   "the proxy cannot start") from exc
        try:
            if self._upstream is not None:
                await self._claim_spool(self._upstream, recovered)
            try:
                await self._io(self._spool.begin)
                self._desk.instance = await self._io(instance_id, self._spool.directory)
            except OSError as exc:
                raise AuditUnavailable(
                    f"the audit spool cannot be written: {exc.strerror or exc}",
                    "the proxy cannot start") from exc
        except BaseException:
            thread.stop(abort=True)
            self._spool.close()  # and its lock: the spool is left as it was found
            conn, self._drainer.conn = self._drainer.conn, None
            await close_quietly(conn)
            raise
        self._books.recover(recovered)
        state.running = True
        self._drainer.start()

    async def _claim_spool(self, upstream: Upstream,
                           recovered: list[RecoveredSegment]) -> None:
        """Before anything is recovered: the spool belongs to ``upstream``'s database, or
        becomes its own if it is new."""
        where = f"{upstream.host}:{upstream.port}/{upstream.dbname}"
        try:
            conn = await self._connector.connect()
            identity = await read_identity(conn, upstream.host, upstream.port)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise AuditUnavailable(
                f"the upstream {where} is unreachable ({connect_failure(exc)}), so the audit "
                f"spool {self._spool.directory} cannot be checked to belong to it",
                "the proxy cannot start") from exc
        self._drainer.conn = conn  # the drainer's, from now on
        # records: statements (a begin, with its end when it has one) and session events;
        # an outcome whose begin was drained already still has to go where it belongs
        events = [event for seg in recovered for event in seg.events]
        undrained = sum(1 for event in events if event.get("e") != "end") or len(events)
        try:
            done = await self._io(claim, self._spool.directory, identity, self._proxy_name,
                                  undrained)
        except SpoolOwnershipError:
            log.error("audit spool %s belongs to another database: the proxy does not start",
                      self._spool.directory)
            raise
        except OSError as exc:
            raise AuditUnavailable(
                f"the audit spool's owner file cannot be written: {exc.strerror or exc}",
                "the proxy cannot start") from exc
        self._connector.owner = identity
        log.info("audit spool %s %s by %s", self._spool.directory,
                 {"claimed": "claimed", "adopted": "adopted (owner.adopt)",
                  "updated": "re-recorded", "owned": "owned"}[done], identity.describe())

    async def close(self) -> None:
        """Write what is queued, drain what the database takes, then stop everything.

        Statements begun and never finished are recorded with the "proxy stopped" reason.
        Whatever cannot be drained now stays in the spool for the next start.
        """
        state = self._state
        if not state.running:
            return
        state.closing = True
        await self._writer.wait_written(self._books)
        state.stopping = True
        drainer = self._drainer
        drainer.wake.set()
        await drainer.join(cancel=False)
        drainer.absorb_pending()
        self._books.close_out()
        if drainer.has_work:
            await drainer.drain_once()
        if drainer.dirty and not drainer.outage:
            await drainer.checkpoint()  # seal what this run drained
        await self._shutdown()

    async def abort(self) -> None:
        """Stop at once, as a crash would: nothing queued is written, nothing drained.

        Callers still waiting for durability get :class:`AuditUnavailable`.  For tests and
        for a proxy that must exit now; the next ``start`` recovers the spool.
        """
        state = self._state
        if not state.running:
            return
        state.closing = state.stopping = True
        await self._drainer.join(cancel=True)
        self._writer.abort()
        await self._shutdown()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything spooled so far that can be drained is in the database.

        Statements still waiting for their end are not waited for.  False on timeout (the
        database unreachable, say).
        """
        deadline = time.monotonic() + timeout
        drainer = self._drainer
        while time.monotonic() < deadline:
            drainer.absorb_pending()
            if drainer.idle:
                return True
            self._writer.thread.kick()
            drainer.wake.set()
            await asyncio.sleep(min(0.005, drainer.interval))
        return False

    # --- statements -----------------------------------------------------------------------
    async def begin_statement(self, rec: StatementRecord) -> None:
        """Return only once the statement's record is durable on disk."""
        await self.spool_statement(rec)

    def spool_statement(self, rec: StatementRecord,
                        outcome: StatementOutcome | None = None) -> asyncio.Future[None]:
        """Queue the statement's begin (with ``outcome``: begin and end, for a statement that
        never reaches the database) and return a future done once it is durable on disk, or
        failed with :class:`AuditUnavailable`.  Raises :class:`AuditUnavailable` at once when
        the log is not running or the spool is full.  The session decides what waits for
        the future: the statement (forwarded only once it is done), or only its answer.
        """
        if outcome is not None and outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        writer = self._writer
        line = begin_line(rec)
        end = b"" if outcome is None else end_line(outcome)
        if line is not None and end is not None:
            if outcome is None:
                future = writer.enqueue_lines(line, [rec], [len(line)], wait=True, limit=True)
            else:
                future = writer.enqueue_lines(line + end, [rec, outcome],
                                              [len(line), len(end)], wait=True, limit=True)
        else:
            events = [begin_event(rec)] + ([] if outcome is None else [end_event(outcome)])
            future = writer.enqueue(events, wait=True, limit=True)
        assert future is not None
        return future

    def finish_statement(self, outcome: StatementOutcome) -> None:
        """Queue the statement's end; it is written with the next batch."""
        if not self._state.running or self._state.stopping:
            log.warning("audit log is not running: outcome of record %s not recorded",
                        outcome.record_id)
            return
        line = end_line(outcome)
        if line is None:
            self._writer.enqueue([end_event(outcome)], wait=False, limit=False)
        else:
            self._writer.enqueue_lines(line, [outcome], [len(line)], wait=False, limit=False)

    async def record_statement(self, rec: StatementRecord, outcome: StatementOutcome) -> None:
        """Record a statement that never reaches the database (blocked, refused), durably."""
        if outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        await self.spool_statement(rec, outcome)

    def record_statement_later(self, rec: StatementRecord, outcome: StatementOutcome) -> None:
        """Queue a statement that did not run because its record could not be made durable in
        time: written with the next batch (retried while the spool fails, never refused for
        size), so its session's seqs stay contiguous.  Never raises."""
        if outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        if not self._state.running or self._state.stopping:
            log.warning("audit log is not running: record %s (seq %d) not recorded",
                        rec.record_id, rec.seq)
            return
        self._writer.enqueue([begin_event(rec), end_event(outcome)], wait=False, limit=False)

    # --- sessions -------------------------------------------------------------------------
    async def open_session(self, rec: SessionRecord, backend_pid: int | None) -> None:
        """Record an accepted session and register its upstream backend's identity.

        Raises :class:`AuditUnavailable` if the database does not take both (one transaction).
        """
        await self._desk.open_session(rec, backend_pid)

    async def refuse_session(self, rec: SessionRecord) -> None:
        """Record a refused login: in the database, else in the spool. Never raises."""
        await self._desk.refuse_session(rec)

    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None:
        """Queue the session's close; the drainer closes the row and unregisters the backend."""
        self._desk.end_session(end, backend_pid)

    # --- a reload (policyc.proxy.reload) -------------------------------------------------
    def use_conninfo(self, conninfo: str) -> None:
        """Connections opened from now on use ``conninfo`` (a new service password); those
        open stay as they are."""
        self._connector.conninfo = conninfo

    def forget_runtime(self) -> None:
        """Ask the database again which runtime features it has (apply may have upgraded it)."""
        self._desk.forget_runtime()

    def stats(self) -> dict[str, int]:
        """Counters for tests and the benchmark."""
        self._drainer.absorb_pending()
        counts = dict(self._counts)
        books = self._books
        counts.update(
            pending=counts["spooled"] - counts["drained"], open=len(books.open),
            ready=len(books.work), queued=self._writer.unwritten,
            quarantined=len(books.quarantine), bytes=self._spool.total_bytes,
            segments=len(self._spool.sizes), fsyncs=self._spool.fsyncs,
        )
        return counts

    def health(self) -> AuditHealth:
        """What readiness and ``/metrics`` need: is the trail writable, how far behind."""
        self._drainer.absorb_pending()
        books = self._books
        oldest = 0.0
        for work in books.work:  # in spool order: the first with a time is the oldest
            at = work.row.get("at") or work.row.get("started_at")
            if isinstance(at, int | float):
                oldest = max(0.0, time.time() - at)
                break
        writer = self._writer
        return AuditHealth(
            running=self._state.running and not self._state.stopping,
            outage=self._drainer.outage, spool_failing=writer.failing, spool_full=writer.full,
            spool_bytes=self._spool.total_bytes, spool_limit=writer.max_spool_bytes,
            pending=len(books.work) + writer.unwritten, oldest_pending_seconds=oldest,
            flushes=writer.flushes, counts=dict(self._counts))

    # --- internals ------------------------------------------------------------------------
    def _wake_drainer(self) -> None:
        self._drainer.wake.set()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a spool call on the spool thread, in order with its writes."""
        return await asyncio.wrap_future(self._writer.thread.call(fn, *args))

    async def _shutdown(self) -> None:
        self._writer.stop_timer()
        self._writer.thread.stop(abort=False)
        self._state.running = False
        self._spool.close()
        conn, self._drainer.conn = self._drainer.conn, None
        await close_quietly(conn)
        await self._desk.close()
