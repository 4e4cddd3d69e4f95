"""The drainer: spooled records into PostgreSQL, and the upkeep of the audit schema.

A drainer task books written batches (:class:`~policyc.proxy.audit.books.Books`), pairs
"begin" and "end" events and inserts finished statements in one
``INSERT ... SELECT FROM jsonb_to_recordset($1) ON CONFLICT (record_id, at) DO NOTHING`` per
batch, through the proxy's own connection (so an agent's rollback cannot erase them, and a
replay after a crash never duplicates a row).  A segment file is deleted once it is not the
current one and every event in it is in the database.  While the database is unreachable the
spool grows (the writer refuses new statements past ``max_spool_bytes``).

A session's close sets ``end_seq`` together with the rest of the close; the first close
recorded wins.  A row the database rejects on its own (a data or integrity error) is
quarantined: logged by record id and SQLSTATE, kept on disk and retried at the next start,
never dropped.

Upkeep on the drain connection: ``audit.ensure_partitions()`` when the drainer starts and
every six hours, and ``audit.checkpoint()`` every ``checkpoint_interval`` seconds when
something was drained since the last one, and once at close after the last drain.  Their
failures are logged (SQLSTATE only) and retried a minute later; they never hold up a
statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

import psycopg

from policyc.proxy.audit.books import Books, Counts, Work
from policyc.proxy.audit.connect import STATEMENT_TIMEOUT, Connector, close_quietly
from policyc.proxy.audit.events import rows_json
from policyc.proxy.audit.failures import sqlstate_of
from policyc.proxy.audit.sessions import UNLIST_SESSIONS, SessionDesk
from policyc.proxy.audit.writer import LogState, Writer

log = logging.getLogger("policyc.proxy.audit")

_MAX_BACKOFF: Final = 5.0
PARTITIONS_EVERY: Final = 6 * 3600.0
UPKEEP_RETRY: Final = 60.0
#: How often the drainer inserts what the spool holds (it starts early after
#: ``DRAIN_AFTER_BATCHES`` written batches).  Every drain is a commit (a WAL flush on the
#: database's disk, often the spool's disk too) and a round trip on the event loop; records
#: are durable in the spool meanwhile, so draining in larger, rarer batches costs only how
#: soon auditors see them.
DRAIN_INTERVAL: Final = 0.2

INSERT_STATEMENTS: Final = """
INSERT INTO audit.statements (record_id, session_id, seq, at, agent, group_name, statement,
    parameters, fingerprint, kind, tables, phi_columns, decision, reason, rows, duration_ms,
    sqlstate, result_digest, result, approval_id)
SELECT r.record_id, r.session_id, r.seq, to_timestamp(r.at), r.agent, r.group_name, r.statement,
    r.parameters, r.fingerprint, r.kind, r.tables, r.phi_columns, r.decision, r.reason, r.rows,
    r.duration_ms, r.sqlstate, r.result_digest, decode(r.result, 'base64'), r.approval_id
  FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (record_id uuid, session_id uuid,
    seq bigint, at double precision, agent text, group_name text, statement text,
    parameters jsonb, fingerprint text, kind text, tables text[], phi_columns text[],
    decision text, reason text, rows bigint, duration_ms double precision, sqlstate text,
    result_digest text, result text, approval_id bigint)) WITH ORDINALITY AS r
 ORDER BY r.ordinality
ON CONFLICT (record_id, at) DO NOTHING
"""

CLOSE_SESSIONS: Final = """
UPDATE audit.sessions s
   SET ended_at = to_timestamp(r.ended_at), end_reason = r.reason, outcome = 'closed',
       end_seq = r.end_seq
  FROM jsonb_to_recordset(%s::jsonb) AS r(session_id uuid, ended_at double precision,
    reason text, end_seq bigint)
 WHERE s.session_id = r.session_id AND s.ended_at IS NULL AND s.outcome = 'open'
"""

ENSURE_PARTITIONS: Final = "SELECT audit.ensure_partitions()"
CHECKPOINT: Final = "SELECT audit.checkpoint()"


class Drainer:
    """Drains the books into the database and keeps the audit schema up; see the module
    docstring."""

    def __init__(self, books: Books, writer: Writer, desk: SessionDesk, connector: Connector,
                 state: LogState, counts: Counts, *, drain_interval: float, batch_size: int,
                 checkpoint_interval: float) -> None:
        self.books = books
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.wake = asyncio.Event()
        self.outage = False
        self.draining = False
        self.dirty = False  # something drained since the last checkpoint
        self.interval = drain_interval
        self._writer = writer
        self._desk = desk
        self._connector = connector
        self._state = state
        self._counts = counts
        self._batch_size = max(1, batch_size)
        self._checkpoint_interval = max(0.0, checkpoint_interval)  # 0: only at close
        self._task: asyncio.Task[None] | None = None
        # upkeep (monotonic deadlines): partitions ahead of need, checkpoints sealing chains
        self._next_partitions = 0.0
        self._next_checkpoint = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="policyc-audit-drainer")
        self.wake.set()

    async def join(self, *, cancel: bool) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if cancel:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            await task

    def absorb_pending(self) -> None:
        """Take the batches written since last time into the books; start early when a
        batch's worth of rows is ready."""
        self._writer.absorb_into(self.books)
        if len(self.books.work) >= self._batch_size and not self.outage:
            self.wake.set()

    @property
    def has_work(self) -> bool:
        """Rows ready to insert, or ended backends to unregister."""
        return bool(self.books.work) or self._desk.unregister_due

    @property
    def idle(self) -> bool:
        """Nothing written is unbooked, nothing ready is undrained."""
        return not (self._writer.unwritten or self.draining or self.books.work
                    or self._desk.unregister_due)

    # --- the loop ---------------------------------------------------------------------------
    async def _loop(self) -> None:
        backoff = 0.0
        while not self._state.stopping:
            if backoff:
                await self._sleep_unless_stopping(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self.wake.wait()
            self.wake.clear()
            if self._state.stopping:
                return
            self.absorb_pending()
            self.books.expire_stale()
            drained = await self.drain_once()
            backoff = 0.0 if drained else min(max(backoff * 2, 0.1), _MAX_BACKOFF)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._state.stopping and (left := deadline - time.monotonic()) > 0:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.wake.wait()

    async def drain_once(self) -> bool:
        """Drain all ready work; False when the database is unreachable."""
        self.draining = True
        self.absorb_pending()
        try:
            if time.monotonic() >= self._next_partitions:
                await self._ensure_partitions()  # before inserting into them
            drained = await self._drain_all()
            if drained:
                await self._instances_upkeep()
            if (drained and self.dirty and self._checkpoint_interval
                    and time.monotonic() >= self._next_checkpoint):
                await self.checkpoint()
            return drained
        finally:
            self.draining = False

    # --- upkeep -----------------------------------------------------------------------------
    async def _ensure_partitions(self) -> None:
        ok = await self._upkeep(ENSURE_PARTITIONS, "creating partitions ahead")
        self._next_partitions = time.monotonic() + (PARTITIONS_EVERY if ok else UPKEEP_RETRY)
        if ok:
            self._counts["partition_runs"] += 1

    async def checkpoint(self) -> None:
        ok = await self._upkeep(CHECKPOINT, "checkpoint")
        interval = self._checkpoint_interval
        retry = min(interval, UPKEEP_RETRY) if interval else UPKEEP_RETRY
        self._next_checkpoint = time.monotonic() + (interval if ok else retry)
        if ok:
            self.dirty = False
            self._counts["checkpoints"] += 1

    async def _upkeep(self, sql: str, what: str) -> bool:
        """Run one upkeep call on the drain connection; failures are logged, never raised."""
        try:
            conn = await self._connect()
            async with asyncio.timeout(STATEMENT_TIMEOUT):
                await conn.execute(sql)
            return True
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._counts["upkeep_errors"] += 1
            log.warning("audit %s failed (%s); retrying later", what, sqlstate_of(exc))
            if not isinstance(exc, psycopg.DatabaseError) or isinstance(
                    exc, psycopg.OperationalError):
                dropped, self.conn = self.conn, None
                await close_quietly(dropped)
            return False

    async def _instances_upkeep(self) -> None:
        """Heartbeat and closing crashed instances' sessions (see
        :mod:`policyc.proxy.audit.sessions`); failures are logged, never raised."""
        try:
            await self._desk.upkeep(await self._connect(), drained=True)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._counts["upkeep_errors"] += 1
            log.warning("audit instance upkeep failed (%s); retrying later", sqlstate_of(exc))

    # --- draining -------------------------------------------------------------------------
    async def _drain_all(self) -> bool:
        books = self.books
        if not (books.work or self._desk.unregister_due):
            await self._delete_drained()
            return True
        try:
            conn = await self._connect()
            budget = len(books.work)  # then delete segments, even under a steady stream
            while books.work and budget > 0:
                batch = books.take_batch(self._batch_size)
                budget -= len(batch)
                try:
                    async with asyncio.timeout(STATEMENT_TIMEOUT):
                        await self._insert(conn, batch)
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    await self._insert_each(conn, batch, exc)
                except BaseException:
                    books.requeue(batch)
                    raise
                else:
                    self._complete(batch)
            await self._desk.unregister_ended(conn)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._note_outage(exc)
            return False
        if self.outage:
            self.outage = False
            log.warning("audit database reachable again; spool draining")
        await self._delete_drained()
        return True

    async def _insert(self, conn: psycopg.AsyncConnection[Any], batch: list[Work]) -> None:
        statements = sorted((w.row for w in batch if w.kind == "statement"),
                            key=lambda r: (r.get("at") or 0.0, r.get("seq") or 0))
        sessions = [w.row for w in batch if w.kind == "session"]
        # a session closes once: the first end recorded wins (UPDATE ... FROM would pick any)
        closes = list({w.row["session_id"]: w.row for w in reversed(batch)
                       if w.kind == "session_end"}.values())
        async with conn.transaction():
            if sessions:
                await conn.execute(await self._desk.insert_sql(conn), (rows_json(sessions),))
            if statements:
                await conn.execute(INSERT_STATEMENTS, (rows_json(statements),))
            if closes:
                await conn.execute(CLOSE_SESSIONS, (rows_json(closes),))
                if await self._desk.supports_instances(conn):
                    await conn.execute(UNLIST_SESSIONS, (rows_json(closes),))

    async def _insert_each(self, conn: psycopg.AsyncConnection[Any], batch: list[Work],
                           cause: Exception) -> None:
        """The database rejected a batch: insert row by row, quarantine what it rejects."""
        log.error("audit batch of %d rejected (%s); retrying row by row", len(batch),
                  sqlstate_of(cause))
        for index, work in enumerate(batch):
            try:
                async with asyncio.timeout(STATEMENT_TIMEOUT):
                    await self._insert(conn, [work])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                self.books.quarantine.append(work)
                log.error("audit %s row %s rejected (%s); kept in the spool", work.kind,
                          work.row.get("record_id") or work.row.get("session_id"),
                          sqlstate_of(exc))
            except BaseException:
                self.books.requeue(batch[index:])
                raise
            else:
                self._complete([work])

    def _complete(self, batch: list[Work]) -> None:
        if batch:
            self.dirty = True
        self._desk.ended(self.books.complete(batch))

    async def _delete_drained(self) -> None:
        writer = self._writer
        writer.thread.snapshot()
        live = self.books.live_segments()
        spool = writer.spool
        if all(n in live or n == spool.current for n in list(spool.sizes)):
            return
        try:
            # decided on the spool thread: a batch written (or absorbed) after this snapshot
            # keeps its segment even though ``live`` does not know it yet
            await asyncio.wrap_future(writer.thread.call(writer.thread.delete_unreferenced,
                                                         live))
        except OSError as exc:
            log.warning("audit spool: drained segment not removed (%s)",
                        exc.strerror or type(exc).__name__)
        if writer.full and spool.total_bytes < writer.max_spool_bytes:
            writer.full = False
            log.warning("audit spool has room again: accepting statements")

    async def _note_outage(self, exc: BaseException) -> None:
        if not self.outage:
            self.outage = True
            self._counts["outages"] += 1
            log.error("audit database unreachable (%s); spooling to disk and retrying",
                      sqlstate_of(exc))
        conn, self.conn = self.conn, None
        await close_quietly(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await self._connector.connect()
        return self.conn
