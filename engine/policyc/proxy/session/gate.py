"""The record gate: what goes upstream, and which answers leave, only once records allow it.

Every client message is decided before it is forwarded, and every statement is recorded
durably in the audit log's spool before it can matter.  The durability point:

* a statement that changes nothing (``Judgement.scope`` ``none``: a provably side-effect-free
  read — a plain SELECT, VALUES, TABLE or SHOW naming no function, no locking clause, no
  SELECT INTO, no writable CTE — or BEGIN, SAVEPOINT, RELEASE, ROLLBACK [TO]) that the group
  may run as it is goes upstream as soon as its record is queued, and the database runs it
  while the record is written;
* so does a statement whose effects stay inside its transaction (``scope`` ``transaction``:
  INSERT/UPDATE/DELETE/MERGE or SELECT whose tree holds only such nodes and allow-listed
  pg_catalog functions such as ``now()``) while the session is certainly inside a
  transaction block (every earlier response in, last ReadyForQuery 'T' or 'E'): only a
  COMMIT can make such effects last, and the COMMIT waits for their records;
* for both, the answer waits: no byte of any response to that batch leaves the proxy before
  the record is durable (``Expect.gate``).  If the record cannot be made durable the answer
  is dropped, the client gets 58030 and the session ends (which rolls back its transaction);
* except the answer to BEGIN (START TRANSACTION), SAVEPOINT and RELEASE (issue #13): it may
  leave before its record is durable.  It carries nothing from the database, records become
  durable in order, and every later answer still waits for its own record (so for every
  record before it); a record that then fails still ends the session, and the transaction;
* a COMMIT/END on its own (``scope`` ``commit``) goes upstream once every earlier record of
  the session is durable, overlapping only its own record: what it makes last is recorded;
* every other statement (autocommit writes, other function calls, cursors, COPY, SET,
  PREPARE/EXECUTE, PREPARE TRANSACTION, holds, refusals ...) reaches the database only once
  its record is durable (records are made durable in order).

So no answer that carries anything from the database leaves the proxy before its
statement's record is durable, and nothing an agent does can outlive its transaction, or be
seen outside it, before its record is durable.  What the DBA's schema runs with a write
(triggers, column defaults, check constraints) is the DBA's: one that acts outside the
database (say, through dblink) would act before the record is durable, as it would act
before the COMMIT.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Final

from policyc.proxy.audit import AuditUnavailable
from policyc.proxy.audit.records import StatementOutcome, StatementRecord
from policyc.proxy.judge.cache import Judgement
from policyc.proxy.session.state import AuditSink, Expect, SessionState, Unit

#: Bytes buffered in a transport before a pump waits for it to drain.
WRITE_HIGH_WATER: Final = 1 << 20
#: The leading keywords of the transaction statements whose answer may leave before their
#: record is durable (with scope ``none``: BEGIN, START TRANSACTION, SAVEPOINT, RELEASE; not
#: ROLLBACK TO).  Read from each statement's own text as the parser gives it.
_EARLY_ANSWER_WORDS: Final = ("BEGIN", "START", "SAVEPOINT", "RELEASE")

Spooled = tuple[StatementRecord, asyncio.Future[None], Unit | None]


def answers_early(decision: Judgement | None) -> bool:
    """Is every statement of ``decision`` a BEGIN, START TRANSACTION, SAVEPOINT or RELEASE
    the group may run as it is: its answer may leave before its record is durable."""
    if decision is None or decision.scope != "none":
        return False
    statements = decision.classification.statements
    if not statements or statements[0].kind != "transaction":
        return False  # a read: the common case, decided without a scan
    return all(
        info.kind == "transaction" and info.scope == "none"
        and info.text.lstrip()[:9].upper().startswith(_EARLY_ANSWER_WORDS)
        for info in statements)


class RecordGate:
    """Queues a batch's records, and sends the batch upstream once they allow it."""

    def __init__(self, state: SessionState, audit: AuditSink,
                 upstream: asyncio.StreamWriter) -> None:
        self.state = state
        self.audit = audit
        self.upstream = upstream
        # records queued for the spool in this client batch: (record, durability, the unit
        # whose answer may wait for it when the statement goes upstream first; None: it
        # may not)
        self._spooled: list[Spooled] = []
        self._expects: list[Expect] = []  # this batch's expectations
        self._units: list[Unit] = []  # this batch's units: they start when it is sent
        # inside a transaction block for sure (see begin_batch and overlaps)
        self._in_block = False
        self._after_prior = False  # this batch overlaps a COMMIT: see overlaps and flush
        self._prior: asyncio.Future[None] | None = None  # the last record of an earlier batch
        #: a record failed after its statement was sent: the session ends
        self.failure: AuditUnavailable | None = None
        self._broken: asyncio.Future[None] | None = None  # see broken()

    def broken(self) -> asyncio.Future[None]:
        """Done when a record fails after its statement was sent (:attr:`failure`)."""
        if self._broken is None:
            self._broken = asyncio.get_running_loop().create_future()
            if self.failure is not None:
                self._broken.set_result(None)
        return self._broken

    def begin_batch(self) -> None:
        """A client batch starts: inside a transaction block for sure when every earlier
        response is in (nothing can end the block unseen) and the server said so in its
        last ReadyForQuery."""
        state = self.state
        self._in_block = not state.expected and state.transaction_status in ("T", "E")

    def expect(self, expect: Expect) -> None:
        """The server will owe ``expect``: it is this batch's, for the gate to hold."""
        self.state.expected.append(expect)
        self._expects.append(expect)

    def overlaps(self, decision: Judgement | None, approval_id: int | None) -> bool:
        """May this statement go upstream before its record is durable (see :meth:`flush`)?

        Yes for what changes nothing (a side-effect-free read, BEGIN, SAVEPOINT, ROLLBACK),
        and for a statement whose effects stay in its transaction (``scope`` transaction)
        while the session is certainly inside a transaction block: then only a later
        COMMIT can make them last, and a COMMIT goes upstream only once its record, and so
        every record before it, is durable.  Anything that may end the block ends that
        certainty for the rest of the batch.  An approved statement always waits."""
        if decision is None or approval_id is not None:
            self._in_block = False
            return False
        scope = decision.scope
        if scope == "none":
            return True
        if scope == "transaction":
            return self._in_block
        self._in_block = False
        if scope == "commit":
            # what the COMMIT makes last must be recorded first: it may overlap only its own
            # record, so nothing of this batch may come before it, and flush waits for the
            # session's last earlier record (records are durable in order)
            if self._spooled:
                return False
            self._after_prior = True
            return True
        return scope == "rollback"

    def admit(self, unit: Unit, *, overlap: bool) -> None:
        """Queue the record of a statement that will run; ``overlap``: it may go upstream
        before its record is durable (its answer may not, but see :func:`answers_early`)."""
        self._units.append(unit)
        if not overlap:
            self._in_block = False  # it may end the block: later statements are not sure
        self.spool(unit.record, overlap=unit if overlap else None)

    def spool(self, record: StatementRecord, outcome: StatementOutcome | None = None, *,
              overlap: Unit | None = None) -> None:
        """Queue ``record`` (its begin; or begin and outcome for a statement that never
        reaches the database) for the spool; :meth:`flush` decides what waits for it."""
        try:
            future = self.audit.spool_statement(record, outcome)
        except AuditUnavailable as exc:
            self._not_run(record, exc)
            raise
        self._spooled.append((record, future, overlap))

    async def spool_now(self, record: StatementRecord, outcome: StatementOutcome) -> None:
        """Record a statement that does not run, durably, now."""
        self.spool(record, outcome)
        spooled, self._spooled = self._spooled[-1:], self._spooled[:-1]
        await self._confirm(spooled, raise_first=True)

    async def abandon(self) -> None:
        """The batch failed before it was sent: its records' seqs are taken, so see them
        written (nothing of this batch went upstream; the session's end notes they did not
        complete) so the seqs keep no gap."""
        spooled, self._spooled = self._spooled, []
        if spooled:
            await self._confirm(spooled, raise_first=False)

    async def flush(self, out: list[bytes]) -> None:
        """Send this batch upstream once its records allow it.

        The durability point: a batch whose every record may overlap (see :meth:`overlaps`)
        goes upstream at once, while its records are written (the audit log's flush runs
        once this task yields), and each of its expected responses carries the batch's last
        record future as a *gate*: the server pump sends no byte of those responses to the
        client before the gate is done (records are written in order, so the last one done
        means every one written or failed, and a failure ends the session first) — unless
        every record is of a statement whose answer may leave early (:func:`answers_early`).
        Any other batch goes upstream only once each of its records is durable.
        """
        spooled, self._spooled = self._spooled, []
        expects, self._expects = self._expects, []
        after_prior, self._after_prior = self._after_prior, False
        prior = self._prior
        if spooled:
            self._prior = spooled[-1][1]
            if all(unit is not None for _record, _future, unit in spooled):
                if after_prior and prior is not None and not prior.done():
                    # a COMMIT: every record before its own must be durable first (a
                    # failure there ends the session through _overlap_done / _confirm)
                    await asyncio.wait([prior])  # never raises the record's own failure
                    await asyncio.sleep(0)  # its failure callback has set failure by now
                gate = spooled[-1][1]
                first = spooled[0][2]
                if first is None or not first.answers_early or not all(
                        unit is not None and unit.answers_early
                        for _record, _future, unit in spooled):
                    for expect in expects:
                        expect.gate = gate
                for record, future, unit in spooled:
                    future.add_done_callback(functools.partial(self._overlap_done, record, unit))
            else:
                await self._confirm(spooled, raise_first=True)
        if self.failure is not None:
            raise self.failure  # an earlier record failed: nothing more goes upstream
        if out:
            now = self.state.clock()
            for unit_ in self._units:
                unit_.started = now
            self._units.clear()
            writer = self.upstream
            writer.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()

    def _not_run(self, record: StatementRecord, exc: AuditUnavailable) -> None:
        # the statement will not run and the session ends; the record (its seq) is still
        # queued, as not run, so the session's seqs stay contiguous
        self.audit.record_statement_later(record, StatementOutcome(
            record.record_id, None, None, AuditUnavailable.sqlstate,
            note=f"not run: the audit trail was unavailable ({exc.why})"))

    async def _confirm(self, spooled: list[Spooled], *, raise_first: bool) -> None:
        """Wait until every record of ``spooled`` is durable; a record that is not gets its
        "not run" record queued, and the first failure is raised (``raise_first``)."""
        failure: AuditUnavailable | None = None
        for record, future, _unit in spooled:
            try:
                await future
            except AuditUnavailable as exc:
                self._not_run(record, exc)
                failure = failure or exc
        if failure is not None and raise_first:
            raise failure

    def _overlap_done(self, record: StatementRecord, unit: Unit | None,
                      future: asyncio.Future[None]) -> None:
        """The record of a statement already sent upstream is durable, or failed: then its
        answer is withheld (the gate fails the server pump) and the session ends."""
        exc = AuditUnavailable("the audit log was stopped") if future.cancelled() \
            else future.exception()
        if exc is None:
            return
        why = exc.why if isinstance(exc, AuditUnavailable) else type(exc).__name__
        if unit is not None:
            unit.finished = True  # its outcome is this record
        if unit is not None and unit.answers_early:
            note = (f"the audit trail was unavailable ({why}) after the statement ran; its "
                    "answer, which carries nothing from the database, had been sent, and the "
                    "session ended (rolling back any open transaction)")
        else:
            note = (f"answer withheld: the audit trail was unavailable ({why}); the statement "
                    "was sent to the database while its record was written, no byte of its "
                    "answer reached the client, and the session ended (rolling back any open "
                    "transaction)")
        self.audit.record_statement_later(record, StatementOutcome(
            record.record_id, None, None, AuditUnavailable.sqlstate, note=note))
        self._fail(exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(why))

    def _fail(self, exc: AuditUnavailable) -> None:
        """End the session for an audit failure noticed off the pumps."""
        if self.failure is None:
            self.failure = exc
        if self._broken is not None and not self._broken.done():
            self._broken.set_result(None)

