"""One agent session after login: the message pump between client and database.

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
* a COMMIT/END on its own (``scope`` ``commit``) goes upstream once every earlier record of
  the session is durable, overlapping only its own record: what it makes last is recorded;
* every other statement (autocommit writes, other function calls, cursors, COPY, SET,
  PREPARE/EXECUTE, PREPARE TRANSACTION, holds, refusals ...) reaches the database only once
  its record is durable (records are made durable in order).

So no answer leaves the proxy before its statement's record is durable, and nothing an agent
does can outlive its transaction, or be seen outside it, before its record is durable.
What the DBA's schema runs with a write (triggers, column defaults, check constraints) is the
DBA's: one that acts outside the database (say, through dblink) would act before the record
is durable, as it would act before the COMMIT.

The proxy never answers for the server mid-stream: a refused statement is replaced by a
"poison" the server fails on (``SELECT 1/0`` for simple queries, a syntax error for Parse),
and that error is rewritten into ours. So the server keeps its own transaction and
pipeline semantics (an error aborts the transaction and skips to Sync) and responses stay in
order.

Server responses are matched to what was forwarded through a FIFO of expectations: each
forwarded message has exactly one completing response unless an error intervenes, after which
the server skips to the next Sync (ReadyForQuery pops everything before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from policyc.identity import AgentIdentity
from policyc.policy.model import Group, ResultRecording
from policyc.proxy.audit import AuditUnavailable
from policyc.proxy.audit.records import SessionEnd, StatementOutcome, StatementRecord
from policyc.proxy.codec import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    ErrorResponse,
    Execute,
    Frame,
    FrontendFramer,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ProtocolViolation,
    Query,
    decode_backend,
    decode_frontend,
    error_response,
    notice_response,
)
from policyc.proxy.codec.backend import command_rows
from policyc.proxy.judge.action import ROW_LIMITED_KINDS
from policyc.proxy.judge.cache import Judge, Judgement
from policyc.proxy.judge.settings import PINNED, TIMEOUTS, setting_value_reason
from policyc.proxy.judge.statement import StatementInfo
from policyc.proxy.names import Found, NameBook, Refuse, Slot, Wait, WaitAnswers, name_refusal
from policyc.proxy.results import ResultBudget, ResultCapture, not_kept_reason, with_formats
from policyc.proxy.upstream import UpstreamSession

log = logging.getLogger("policyc.proxy")

BLOCKED_SQLSTATE = "42501"
POISON_QUERY = "SELECT 1/0"
#: A refusal in the extended protocol is a Parse of this text: the server's raw parser fails
#: on it before it looks at any name, so no statement, portal or object an agent created can
#: change what the refusal does (the name given is never stored).
POISON_PARSE = "policyc refused this statement"
POISON_NAME = "policyc refused"
MAX_AUDIT_TEXT = 100_000
#: Bytes a client may send while one of its statements is held (they wait their turn).
MAX_HELD_BACKLOG = 1 << 20
#: Bytes buffered in a transport before a pump waits for it to drain.
WRITE_HIGH_WATER = 1 << 20


class AuditSink(Protocol):
    def spool_statement(self, rec: StatementRecord,
                        outcome: StatementOutcome | None = None) -> asyncio.Future[None]: ...
    def finish_statement(self, outcome: StatementOutcome) -> None: ...
    def record_statement_later(self, rec: StatementRecord,
                               outcome: StatementOutcome) -> None: ...
    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None: ...


_V = TypeVar("_V")
#: Statement kinds that create, run or close something by name.
_NAMED_KINDS = frozenset({"prepare", "execute", "deallocate", "declare_cursor", "fetch",
                          "close_cursor", "discard"})


def _sets(info: StatementInfo) -> bool:
    """Does the statement change a setting (SET, set_config): judged again against the
    role's own timeout ceilings, which the policy-wide verdict does not know."""
    return info.kind == "set" or bool(info.config_calls)


@dataclass
class _Named:
    """What :meth:`Session._named_statements` found in one query."""

    stop: int | None = None
    refusal: tuple[str, str] | None = None
    effects: dict[int, Callable[[bool], None]] = field(default_factory=dict)
    touches: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    carries: dict[int, Portal] = field(default_factory=dict)  # FETCH: the cursor's run

    def abandon(self) -> None:
        """The query will not be sent: what it would have created or closed did not happen."""
        effects, self.effects = self.effects, {}
        for effect in effects.values():
            effect(False)

    def enrich(self, index: int, record: StatementRecord) -> StatementRecord:
        """The record of a run by name carries what it runs touches."""
        found = self.touches.get(index)
        if found is None or not (found[0] or found[1]):
            return record
        return dataclasses.replace(record, tables=tuple(sorted({*record.tables, *found[0]})),
                                   phi_columns=tuple(sorted({*record.phi_columns, *found[1]})))


_NO_NAMES: Final = _Named()  # a query that names nothing (never changed)


def _both(closes: tuple[Callable[[bool], None], ...], ok: bool) -> None:
    for close in closes:
        close(ok)


class SessionClosed(Exception):
    """Raised to end the pump; the message (if any) was already sent to the client."""


@dataclass
class Unit:
    """One statement execution being audited."""

    record: StatementRecord
    started: float = 0.0
    rows: int = 0
    digest: Any = None
    finished: bool = False
    limit: int | None = None  # rows the agent may receive without an approval
    overflow: bool = False
    parameters: list[str | None] | None = None
    decision: Judgement | None = None
    capture: ResultCapture | None = None  # results: full
    header: bytes | None = None  # the RowDescription / CopyOutResponse of its own response
    portal: Portal | None = None  # extended protocol: where a described header may be
    carry: Portal | None = None  # the portal or cursor whose run this is a piece of
    budgeted: bool = False  # its rows are rows of the group's tables: they use the budget
    over_budget: bool = False  # withheld because the session's row budget was used up


@dataclass
class Expect:
    """A response the server owes us, in order."""

    kind: str  # parse | bind | describe | close | execute | stmt | sync
    unit: Unit | None = None
    rewrite: tuple[str, str] | None = None  # (sqlstate, message) replacing the server's error
    prepared: Prepared | None = None  # for Describe of a statement: learns parameter types
    portal: Portal | None = None  # for Describe of a portal: learns its RowDescription
    # a query the proxy runs for itself (an EXPLAIN): plan rows, transaction status after,
    # and the cancel that ended it
    explain: asyncio.Future[_Answer] | None = None
    explain_rows: int | None = None
    explain_error: tuple[str, str] | None = None  # a cancel or timeout that ended it
    # the response goes to the client only once this is done (its batch was sent upstream
    # before its records were durable); a failed gate ends the session instead
    gate: asyncio.Future[None] | None = None
    # told whether the server completed the message (True) or failed or skipped it (False):
    # how the proxy's belief about statement and portal names follows the server's
    on_done: Callable[[bool], None] | None = None
    batch: int = 0  # for a sync: the client batch it ends


@dataclass
class Prepared:
    sql: str
    decision: Judgement | None
    refused: tuple[str, str] | None = None  # (sqlstate, message) when the statement must not run
    param_types: tuple[int, ...] = ()
    row_description: bytes | None = None  # results: full, from a Describe of the statement
    index: int = 0  # which statement of ``decision`` this is (SQL PREPARE/DECLARE in a query)

    @property
    def runs_as_is(self) -> bool:
        """Judged runnable without a human: what SQL EXECUTE and FETCH may run by name."""
        decision = self.decision
        if self.refused is not None or decision is None or self.index >= len(decision.verdicts):
            return False
        return decision.verdicts[self.index].outcome in ("allowed", "masked")

    def touches(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(tables, PHI columns) of the statement, for the records of runs by name."""
        decision = self.decision
        if decision is None or self.index >= len(decision.audit_fields):
            return (), ()
        _kind, tables, phi = decision.audit_fields[self.index]
        return tables, phi


@dataclass
class Portal:
    prepared: Prepared
    parameters: list[str | None]
    result_formats: tuple[int, ...] = ()
    row_description: bytes | None = None  # results: full, from a Describe of the portal
    # rows it sent so far, over every Execute (max_rows) and FETCH of it: rows_over counts
    # a portal's or cursor's whole run, not each piece of it
    rows_sent: int = 0
    # a SQL cursor (DECLARE): an Execute of it fetches its rows, never runs the DECLARE again
    cursor: bool = False


#: What one of the proxy's own queries answered: plan rows, transaction status, and the
#: (sqlstate, message) of a cancel or timeout that ended it.
_Answer = tuple[int | None, str, tuple[str, str] | None]


class EstimateCancelled(Exception):
    """The client's cancel, or its own statement_timeout, ended the proxy's row estimate."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


_COMPLETES: dict[bytes, str] = {b"1": "parse", b"2": "bind", b"3": "close"}
#: Extended-protocol messages: after one, only a Sync ends the batch.
_EXTENDED = frozenset({b"P", b"B", b"D", b"E", b"C"})

_BINARY_DECODERS: dict[int, Any] = {
    16: lambda b: "true" if b == b"\x01" else "false",
    20: lambda b: str(int.from_bytes(b, "big", signed=True)),
    21: lambda b: str(int.from_bytes(b, "big", signed=True)),
    23: lambda b: str(int.from_bytes(b, "big", signed=True)),
    700: lambda b: repr(struct.unpack("!f", b)[0]),
    701: lambda b: repr(struct.unpack("!d", b)[0]),
    25: lambda b: b.decode("utf-8", "replace"),
    1043: lambda b: b.decode("utf-8", "replace"),
    1042: lambda b: b.decode("utf-8", "replace"),
    19: lambda b: b.decode("utf-8", "replace"),
    2950: lambda b: str(uuid.UUID(bytes=b)),
}


def _param_text(value: bytes | None, binary: bool, type_oid: int = 0) -> str | None:
    """A bind parameter as the audit shows it: text as sent; common binary types decoded."""
    if value is None:
        return None
    if binary:
        decoder = _BINARY_DECODERS.get(type_oid)
        if decoder is not None:
            try:
                return str(decoder(value))
            except (ValueError, struct.error):
                pass
        return "\\x" + value.hex()
    return value.decode("utf-8", "replace")


@dataclass
class Session:
    """State of one proxied session; ``run`` pumps until either side ends."""

    session_id: uuid.UUID
    identity: AgentIdentity
    group: Group
    judge: Judge
    audit: AuditSink
    upstream: UpstreamSession
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    client_framer: FrontendFramer
    results: ResultRecording = ResultRecording.DIGEST
    results_limit: int = 16 << 20  # uncompressed result bytes kept per session (results: full)
    clock: Any = time.time
    expected: deque[Expect] = field(default_factory=deque)
    # what the server holds under each prepared statement and portal name (Parse and SQL
    # PREPARE share one namespace; Bind and DECLARE another): see policyc.proxy.names
    statements: NameBook[Prepared] = field(default_factory=lambda: NameBook("statement"))
    portals: NameBook[Portal] = field(default_factory=lambda: NameBook("portal"))
    _batch: int = 0  # client batches so far (each Sync or Query ends one)
    _answered: int = -1  # the last batch the server has answered (ReadyForQuery)
    # the DBA's statement/lock/idle-in-transaction timeouts of the group role, in ms (0:
    # none): agents may lower them, never raise or disable them
    timeout_ceilings: dict[str, int] = field(default_factory=dict)
    # rows of the group's tables this session may still send (approval.budget); None: no
    # budget.  The server starts it at the budget less what the agent used in the window.
    row_budget_left: int | None = None
    _answer_waiters: list[Callable[[], None]] = field(default_factory=list)
    _unsynced: bool = False  # extended-protocol messages since the last Sync
    transaction_status: str = "I"
    end_reason: str = "client closed the connection"
    _error_sqlstate: str | None = None
    _batch_units: list[Unit] = field(default_factory=list)
    # records queued for the spool in this client batch: (record, durability, the unit whose
    # answer may wait for it when the statement goes upstream first; None: it may not)
    _spooled: list[tuple[StatementRecord, asyncio.Future[None], Unit | None]] = field(
        default_factory=list)
    _batch_expects: list[Expect] = field(default_factory=list)  # this batch's expectations
    _gates: list[asyncio.Future[None]] = field(default_factory=list)  # see server_pump
    _in_block: bool = False  # see _handle_client_frames and _overlaps
    _after_prior: bool = False  # this batch overlaps a COMMIT: see _overlaps and _flush
    _prior: asyncio.Future[None] | None = None  # the last record sent with an earlier batch
    _failure: AuditUnavailable | None = None  # a record failed after its statement was sent
    _failed: asyncio.Future[None] | None = None  # wakes run() on such a failure
    approvals: Any = None  # ApprovalBroker, or None when the policy names no approvers
    hold_seconds: int = 120
    valid_for_seconds: int = 3600
    _stash: bytearray = field(default_factory=bytearray)
    _held: asyncio.Future[None] | None = None  # set while a statement is held: cancel_hold
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _seq: int = 0  # the last statement seq this session assigned
    _budget: ResultBudget | None = None

    def __post_init__(self) -> None:
        self._budget = ResultBudget(self.results_limit)
        self._policy_tables = frozenset(str(t) for t in self.group.tables())

    # ---- client side -------------------------------------------------------------------

    async def client_pump(self, first: bytes = b"") -> None:
        data = first
        while True:
            if data:
                frames = self.client_framer.feed(data)
                if frames:
                    await self._handle_client_frames(frames)
            if self._stash:  # read while a statement was held
                data = bytes(self._stash)
                self._stash.clear()
                continue
            data = await self.client_reader.read(65536)
            if not data:
                self.end_reason = "client closed the connection"
                return

    async def _handle_client_frames(self, frames: list[Frame]) -> None:
        out: list[bytes] = []
        # inside a transaction block for sure: every earlier response is in (nothing can
        # end the block unseen) and the server said so in its last ReadyForQuery
        self._in_block = not self.expected and self.transaction_status in ("T", "E")
        try:
            for frame in frames:
                kind = frame.type
                if kind == b"X":
                    self.end_reason = "client terminated the session"
                    raise SessionClosed
                if kind in (b"Q", b"P", b"E", b"F"):
                    self._check_token()
                if kind in _EXTENDED:
                    self._unsynced = True
                elif kind in (b"Q", b"F") and self._unsynced:
                    # after an error the server skips everything up to the next Sync, a Query
                    # included (with no ReadyForQuery for it): the proxy could no longer tell
                    # which answer belongs to which record. No driver sends this.
                    raise ProtocolViolation(
                        "a simple Query inside an unfinished extended-protocol batch: send "
                        "Sync first", "08P01")
                if kind == b"Q":
                    await self._on_query(frame, out)
                    self._batch += 1
                elif kind == b"P":
                    await self._on_parse(frame, out)
                elif kind == b"B":
                    await self._on_bind(frame, out)
                elif kind == b"E":
                    await self._on_execute(frame, out)
                elif kind == b"D":
                    out.append(frame.raw)
                    message = decode_frontend(frame)
                    assert isinstance(message, Describe)
                    target = self.statements.peek(message.name) if message.kind == "S" else None
                    portal = self.portals.peek(message.name) if message.kind == "P" else None
                    self._expect(Expect("describe", prepared=target, portal=portal))
                elif kind == b"C":
                    message = decode_frontend(frame)
                    assert isinstance(message, Close)
                    book: NameBook[Any] = self.statements if message.kind == "S" else self.portals
                    too_long = name_refusal(message.name, book.kind)
                    if too_long is not None:
                        self._poison(out, "close", (too_long.sqlstate, too_long.message))
                        continue
                    out.append(frame.raw)
                    self._expect(Expect("close", on_done=book.close(message.name, self._batch)))
                elif kind == b"S":
                    out.append(frame.raw)
                    self._expect(Expect("sync", batch=self._batch))
                    self._batch += 1
                    self._unsynced = False
                elif kind in (b"H", b"d", b"c", b"f"):
                    out.append(frame.raw)
                elif kind == b"F":
                    self._refuse_simple("function calls (the FunctionCall message) are not allowed",
                                        BLOCKED_SQLSTATE, out, text="<FunctionCall>")
                else:
                    raise ProtocolViolation(f"unexpected message type {kind!r} from the client")
        except Exception:
            spooled, self._spooled = self._spooled, []
            if spooled:
                # their seqs are taken: see them written (nothing of this batch went upstream;
                # the session's end notes they did not complete) so the seqs keep no gap
                await self._confirm(spooled, raise_first=False)
            raise
        await self._flush(out)

    async def _flush(self, out: list[bytes]) -> None:
        """Send this batch upstream once its records allow it.

        The durability point: a batch whose every record is a provably side-effect-free read
        (``Judgement.side_effect_free``) goes upstream at once, while its records are written
        (the audit log's flush runs once this task yields), and each of its expected
        responses carries the batch's last record
        future as a *gate*: the server pump sends no byte of those responses to the client
        before the gate is done (records are written in order, so the last one done means
        every one written or failed, and a failure ends the session first).  Any other batch
        goes upstream only once each of its records is durable.
        """
        spooled, self._spooled = self._spooled, []
        expects, self._batch_expects = self._batch_expects, []
        after_prior, self._after_prior = self._after_prior, False
        prior = self._prior
        if spooled:
            self._prior = spooled[-1][1]
            if all(unit is not None for _record, _future, unit in spooled):
                if after_prior and prior is not None and not prior.done():
                    # a COMMIT: every record before its own must be durable first (a
                    # failure there ends the session through _overlap_done / _confirm)
                    await asyncio.wait([prior])  # never raises the record's own failure
                    await asyncio.sleep(0)  # its failure callback has set _failure by now
                gate = spooled[-1][1]
                for expect in expects:
                    expect.gate = gate
                for record, future, unit in spooled:
                    future.add_done_callback(functools.partial(self._overlap_done, record, unit))
            else:
                await self._confirm(spooled, raise_first=True)
        if self._failure is not None:
            raise self._failure  # an earlier record failed: nothing more goes upstream
        if out:
            now = self.clock()
            for unit_ in self._batch_units:
                unit_.started = now
            self._batch_units.clear()
            writer = self.upstream.writer
            writer.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()

    def _expect(self, expect: Expect) -> None:
        self.expected.append(expect)
        self._batch_expects.append(expect)

    def _check_token(self) -> None:
        if self.clock() >= self.identity.expires_at:
            self.end_reason = "token expired"
            self.client_writer.write(
                error_response("28000", "your token has expired; reconnect with a fresh one",
                               severity="FATAL")
            )
            raise SessionClosed

    def _record(self, text: str, decision: Judgement | None, index: int | None,
                verdict_decision: str, reason: str | None = None,
                parameters: list[str | None] | None = None,
                approval_id: int | None = None) -> StatementRecord:
        kind = None
        tables: tuple[str, ...] = ()
        phi: tuple[str, ...] = ()
        fingerprint = None
        if decision is not None:
            fingerprint = decision.fingerprint
            if index is not None and index < len(decision.audit_fields):
                kind, tables, phi = decision.audit_fields[index]
        if len(text) > MAX_AUDIT_TEXT:
            text = text[:MAX_AUDIT_TEXT]
            reason = (reason + "; " if reason else "") + "statement text truncated in the record"
        self._seq += 1  # assigned now, whatever becomes of the record: never skipped
        return StatementRecord(
            record_id=uuid.uuid4(), session_id=self.session_id, seq=self._seq, at=self.clock(),
            agent=self.identity.subject, group=self.group.name, text=text,
            decision=verdict_decision, parameters=parameters, fingerprint=fingerprint,
            kind=kind, tables=tables, phi_columns=phi, reason=reason, approval_id=approval_id,
        )

    def _unit(self, record: StatementRecord, decision: Judgement | None = None,
              approval_key: list[str | None] | None = None, *, overlap: bool = False,
              carry: Portal | None = None) -> Unit:
        """``approval_key`` is what an approval must match besides agent and fingerprint: the
        bind parameters, or for the simple protocol the exact query text.  ``overlap``: the
        statement may go upstream before its record is durable (its answer may not; see
        :meth:`_overlaps`)."""
        key = approval_key if approval_key is not None else record.parameters
        unit = Unit(record, decision=decision, parameters=key)
        if record.approval_id is None and record.kind in ROW_LIMITED_KINDS and \
                not self._policy_tables.isdisjoint(record.tables):  # never catalog rows
            unit.limit = self.group.approval.rows_over
            # an approval of "EXECUTE name" would not say which statement name stood for
            if unit.limit is not None and self.approvals is not None and decision is not None \
                    and record.kind != "execute":
                approved = self.approvals.cached(record.agent, self.group.name,
                                                 record.text, key)
                if approved is not None:  # a human allowed this one: no row limit
                    unit.limit = None
                    unit.record = dataclasses.replace(record, decision="approved",
                                                      approval_id=approved)
                    record = unit.record
        unit.carry = carry
        if self.row_budget_left is not None and record.approval_id is None and \
                not self._policy_tables.isdisjoint(record.tables):
            unit.budgeted = True
        self._batch_units.append(unit)
        if self.results is not ResultRecording.NONE:
            unit.digest = hashlib.sha256()
            if self.results is ResultRecording.FULL:
                assert self._budget is not None
                unit.capture = ResultCapture(self._budget)
        if not overlap:
            self._in_block = False  # it may end the block: later statements are not sure
        self._spool(record, overlap=unit if overlap else None)
        return unit

    def _spool(self, record: StatementRecord, outcome: StatementOutcome | None = None, *,
               overlap: Unit | None = None) -> None:
        """Queue ``record`` (its begin; or begin and outcome for a statement that never
        reaches the database) for the spool; ``_flush`` decides what waits for it."""
        try:
            future = self.audit.spool_statement(record, outcome)
        except AuditUnavailable as exc:
            self._not_run(record, exc)
            raise
        self._spooled.append((record, future, overlap))

    async def _spool_now(self, record: StatementRecord, outcome: StatementOutcome) -> None:
        """Record a statement that does not run, durably, now."""
        self._spool(record, outcome)
        spooled, self._spooled = self._spooled[-1:], self._spooled[:-1]
        await self._confirm(spooled, raise_first=True)

    def _not_run(self, record: StatementRecord, exc: AuditUnavailable) -> None:
        # the statement will not run and the session ends; the record (its seq) is still
        # queued, as not run, so the session's seqs stay contiguous
        self.audit.record_statement_later(record, StatementOutcome(
            record.record_id, None, None, AuditUnavailable.sqlstate,
            note=f"not run: the audit trail was unavailable ({exc.why})"))

    async def _confirm(self, spooled: list[tuple[StatementRecord, asyncio.Future[None],
                                                 Unit | None]],
                       *, raise_first: bool) -> None:
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
        self.audit.record_statement_later(record, StatementOutcome(
            record.record_id, None, None, AuditUnavailable.sqlstate,
            note=(f"answer withheld: the audit trail was unavailable ({why}); the statement "
                  "was sent to the database while its record was written, no byte of its "
                  "answer reached the client, and the session ended (rolling back any open "
                  "transaction)")))
        self._fail(exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(why))

    def _fail(self, exc: AuditUnavailable) -> None:
        """End the session for an audit failure noticed off the pumps."""
        if self._failure is None:
            self._failure = exc
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def _refusal(self, decision: Judgement, index: int) -> tuple[str, str]:
        verdict = decision.verdicts[index]
        if verdict.outcome == "needs_approval":
            shapes = ", ".join(sorted(verdict.approval_shapes)) or "policy"
            return BLOCKED_SQLSTATE, (
                f"policyc: this statement needs approval ({shapes}); approvals are not "
                "available on this proxy yet, so it was not run"
            )
        return verdict.sqlstate or BLOCKED_SQLSTATE, (
            f"policyc: statement blocked: {verdict.reason or 'not allowed by policy'}"
        )

    def _refuse_simple(self, message: str, sqlstate: str, out: list[bytes], text: str) -> None:
        record = self._record(text, None, None, "blocked", reason=message)
        self._spool(record, StatementOutcome(record.record_id, None, 0.0, sqlstate))
        out.append(Query(POISON_QUERY).encode())
        self._expect(Expect("stmt", rewrite=(sqlstate, message)))
        self._expect(Expect("sync", batch=self._batch))

    async def _on_query(self, frame: Frame, out: list[bytes]) -> None:
        message = decode_frontend(frame)
        assert isinstance(message, Query)
        sql = message.sql
        decision = self.judge.judge(self.group, sql)
        classification = decision.classification
        if classification.error is not None:
            verdict = decision.verdicts[0]
            sqlstate = verdict.sqlstate or BLOCKED_SQLSTATE
            text = f"policyc: statement refused: {verdict.reason}"
            record = self._record(sql, decision, 0, "blocked", reason=verdict.reason)
            self._spool(record, StatementOutcome(record.record_id, None, 0.0, sqlstate))
            out.append(Query(POISON_QUERY).encode())
            self._expect(Expect("stmt", rewrite=(sqlstate, text)))
            self._expect(Expect("sync", batch=self._batch))
            return
        statements = classification.statements
        if not statements:
            out.append(frame.raw)
            self._expect(Expect("stmt"))  # EmptyQueryResponse
            self._expect(Expect("sync", batch=self._batch))
            return
        stop = decision.blocked_index
        approval_id: int | None = None
        refusal: tuple[str, str] | None = None
        if stop is not None and self._holdable(decision):
            # simple protocol: the exact text stands in for parameters, so an approval never
            # covers the same statement shape with other literals
            hold = await self._hold(out, sql, [sql], decision, stop)
            if isinstance(hold, int):
                approval_id, stop = hold, None
            else:
                refusal = hold
        # statements that name prepared statements and cursors: judged by what the name
        # holds, and what they create or close followed on the server's answers
        named = _NO_NAMES if refusal is not None or not any(
            info.kind in _NAMED_KINDS or _sets(info) for info in statements) else \
            await self._named_statements(decision, out, len(statements) if stop is None
                                         else stop)
        name_refusal: tuple[str, str] | None = None
        if named.stop is not None:
            stop, name_refusal = named.stop, named.refusal
        limit = self.group.approval.rows_over
        if stop is None and approval_id is None and limit is not None and \
                self._over_estimate(decision):
            now = time.monotonic()
            estimate = self.judge.known_estimate(self.group, decision, limit, now)
            if estimate is None:
                try:
                    estimate = await self._explain(sql)
                except EstimateCancelled as cancelled:
                    # the client's cancel (or its statement_timeout) met the estimate: the
                    # statement is cancelled, as it would have been had it started
                    named.abandon()
                    self._refuse_simple(f"{cancelled.message} (while the proxy estimated "
                                        "its rows; the statement did not run)",
                                        cancelled.sqlstate, out, sql)
                    return
                if estimate is not None:
                    self.judge.note_estimate(self.group, decision, estimate, now)
            if estimate is not None and estimate > limit:
                reason = f"estimated {estimate} rows, over this group's limit of {limit}"
                hold = await self._hold(out, sql, [sql], decision, 0, reason=reason,
                                        estimated_rows=estimate)
                if isinstance(hold, int):
                    approval_id = hold
                else:
                    named.abandon()  # nothing of the query reaches the server
                    out.append(Query(POISON_QUERY).encode())
                    self._expect(Expect("stmt", rewrite=hold))
                    self._expect(Expect("sync", batch=self._batch))
                    return
        if stop is None:
            # a statement whose effects nothing outside its transaction can see goes
            # upstream while its record is written; its answer waits for it (see _flush)
            overlap = self._overlaps(decision, approval_id)
            for index, info in enumerate(statements):
                label = "approved" if approval_id else self._verdict_for(decision, index)
                record = named.enrich(index, self._record(
                    info.text, decision, index, label, approval_id=approval_id))
                self._expect(Expect("stmt", self._unit(record, decision, approval_key=[sql],
                                                       overlap=overlap,
                                                       carry=named.carries.get(index)),
                                    on_done=named.effects.get(index)))
            out.append(frame.raw)
            self._expect(Expect("sync", batch=self._batch))
            return
        if refusal is not None:
            # held and not approved: the whole query text was the request, and its outcome is
            # already recorded; nothing of it runs
            out.append(Query(POISON_QUERY).encode())
            self._expect(Expect("stmt", rewrite=refusal))
            self._expect(Expect("sync", batch=self._batch))
            return
        sqlstate, text = name_refusal or self._refusal(decision, stop)
        texts = []
        for index, info in enumerate(statements):
            verdict = decision.verdicts[index]
            if index < stop:
                record = named.enrich(index, self._record(
                    info.text, decision, index, self._verdict_for(decision, index)))
                self._expect(Expect("stmt", self._unit(record, carry=named.carries.get(index)),
                                    on_done=named.effects.get(index)))
                texts.append(info.text)
            elif index == stop:
                reason = name_refusal[1] if name_refusal else verdict.reason or text
                record = self._record(info.text, decision, index, "blocked", reason=reason)
                self._spool(record, StatementOutcome(record.record_id, None, 0.0, sqlstate))
            else:
                record = self._record(
                    info.text, decision, index, self._verdict_for(decision, index),
                    reason="not run: an earlier statement in the same query was refused")
                self._spool(record, StatementOutcome(record.record_id, None, None, None))
        texts.append(POISON_QUERY)
        out.append(Query("\n;\n".join(texts)).encode())  # a text may end in a -- comment
        self._expect(Expect("stmt", rewrite=(sqlstate, text)))
        self._expect(Expect("sync", batch=self._batch))

    async def _named_statements(self, decision: Judgement, out: list[bytes],
                                upto: int) -> _Named:
        """SQL PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/MOVE/CLOSE and DISCARD ALL among the
        first ``upto`` statements: a run by name gets the judgement of what the name holds (a
        statement that needs approval, or is refused, runs only by itself, never by name),
        and its record that statement's tables and PHI columns; a name that is unknown, or
        whose state the proxy cannot vouch for, is refused.  Creations and closes are noted
        for the server's answers (see policyc.proxy.names)."""
        named = _Named()
        for index, info in enumerate(decision.classification.statements[:upto]):
            kind = info.kind
            refusal = self._ceiling_refusal(info) if _sets(info) else None
            if refusal is not None:
                named.stop, named.refusal = index, refusal
                break
            if kind not in _NAMED_KINDS or (kind == "discard" and info.name != "all"):
                continue
            name = info.name
            if kind in ("prepare", "declare_cursor"):
                assert name is not None
                book: NameBook[Any] = self.statements if kind == "prepare" else self.portals
                refusal = await self._may_create(book, name, out)
                if refusal is None:
                    own = self.judge.judge(self.group, info.text)
                    prepared = Prepared(info.text, own)
                    value: Prepared | Portal = prepared if kind == "prepare" \
                        else Portal(prepared, [], cursor=True)
                    _slot, answered = book.create(name, value, self._batch,
                                                  holdable=info.holdable)
                    named.effects[index] = answered
            elif kind in ("execute", "fetch"):
                assert name is not None
                target: Found[Any] | Refuse = await self._find(
                    self.statements if kind == "execute" else self.portals, name, out)
                if isinstance(target, Refuse):
                    refusal = (target.sqlstate, target.message)
                else:
                    found = target.slot.value
                    prepared = found if isinstance(found, Prepared) else found.prepared
                    if not prepared.runs_as_is:
                        refusal = (BLOCKED_SQLSTATE, (
                            "policyc: statement blocked: what this name holds was refused or "
                            "needs approval; such a statement runs only by itself (its own "
                            "text, or the protocol's Execute), never through EXECUTE, FETCH "
                            "or MOVE"))
                    else:
                        named.touches[index] = prepared.touches()
                        if isinstance(found, Portal) and info.kind == "fetch":
                            named.carries[index] = found
            elif name is not None and kind in ("deallocate", "close_cursor") and \
                    (too_long := name_refusal(name, "statement" if kind == "deallocate"
                                              else "portal")) is not None:
                refusal = (too_long.sqlstate, too_long.message)
            elif kind == "deallocate":
                named.effects[index] = self.statements.close_all(self._batch) if name is None \
                    else self.statements.close(name, self._batch)
            elif kind == "close_cursor":
                named.effects[index] = self.portals.close_all(self._batch) if name is None \
                    else self.portals.close(name, self._batch)
            elif kind == "discard":
                closes = (self.statements.close_all(self._batch),
                          self.portals.close_all(self._batch))
                named.effects[index] = functools.partial(_both, closes)
            if refusal is not None:
                named.stop, named.refusal = index, refusal
                # what this query created before the refused statement still runs
                break
        return named

    def _overlaps(self, decision: Judgement | None, approval_id: int | None) -> bool:
        """May this statement go upstream before its record is durable (see _flush)?

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
            # record, so nothing of this batch may come before it, and _flush waits for the
            # session's last earlier record (records are durable in order)
            if self._spooled:
                return False
            self._after_prior = True
            return True
        return scope == "rollback"

    @staticmethod
    def _verdict_for(decision: Judgement, index: int) -> str:
        verdict = decision.verdicts[index].outcome
        return "masked" if verdict == "masked" else "allowed"

    async def _on_parse(self, frame: Frame, out: list[bytes]) -> None:
        message = decode_frontend(frame)
        assert isinstance(message, Parse)
        decision = self.judge.judge(self.group, message.sql)
        clash = None if self.statements.check_create(
            message.name, self._batch, self._answered) is None \
            else await self._may_create(self.statements, message.name, out)
        if clash is not None:  # the name stays what it was: no slot of ours
            self._refuse_parse(out, message, decision, 0, clash, clash[1], refused_name=False)
            return
        stop = decision.blocked_index
        if stop is not None and self._holdable(decision):
            stop = None  # preparing is harmless: the hold happens at Execute, with parameters
        ceiling = next((found for found in map(self._ceiling_refusal,
                                                decision.classification.statements)
                        if found is not None), None) if self.timeout_ceilings else None
        if ceiling is not None:
            self._refuse_parse(out, message, decision, 0, ceiling, ceiling[1])
            return
        if decision.classification.error is not None or stop is not None:
            index = 0 if stop is None else stop
            if decision.classification.error is not None:
                verdict = decision.verdicts[0]
                refusal = (verdict.sqlstate or BLOCKED_SQLSTATE,
                           f"policyc: statement refused: {verdict.reason}")
            else:
                refusal = self._refusal(decision, index)
            self._refuse_parse(out, message, decision, index, refusal,
                               decision.verdicts[index].reason)
            return
        _slot, answered = self.statements.create(
            message.name, Prepared(message.sql, decision, param_types=message.param_types),
            self._batch)
        out.append(frame.raw)
        self._expect(Expect("parse", on_done=answered))

    def _refuse_parse(self, out: list[bytes], message: Parse, decision: Judgement, index: int,
                      refusal: tuple[str, str], reason: str | None, *,
                      refused_name: bool = True) -> None:
        """Record a refused Parse and send its poison.  ``refused_name``: the name now
        stands for the refused statement in the proxy's book, so later runs of it are
        refused with this reason (the server holds nothing new under it: the poison fails
        before it stores anything)."""
        record = self._record(message.sql, decision, index, "blocked", reason=reason)
        self._spool(record, StatementOutcome(record.record_id, None, 0.0, refusal[0]))
        if refused_name:
            slot, _answered = self.statements.create(
                message.name, Prepared(message.sql, decision, refusal), self._batch)
            slot.settle("ok")
        self._poison(out, "parse", refusal)

    async def _on_bind(self, frame: Frame, out: list[bytes]) -> None:
        message = decode_frontend(frame)
        assert isinstance(message, Bind)
        found = self.statements.lookup(message.statement, self._batch)
        if isinstance(found, Wait):
            found = await self._find(self.statements, message.statement, out)
        if isinstance(found, Refuse):
            prepared = Prepared("<unknown prepared statement>", None,
                                (found.sqlstate, found.message))
        else:
            prepared = found.slot.value
        clash = None if self.portals.check_create(
            message.portal, self._batch, self._answered) is None \
            else await self._may_create(self.portals, message.portal, out)
        if clash is not None:
            prepared = Prepared(prepared.sql, prepared.decision, clash)
        if prepared.refused is not None:
            # the portal does not exist on the server after this (a failed Bind of the
            # unnamed portal may leave the old one: it is refused by us all the same)
            slot, _answered = self.portals.create(message.portal, Portal(prepared, []),
                                                  self._batch)
            slot.settle("ok")
            self._poison(out, "bind", prepared.refused)
            return
        types = prepared.param_types
        parameters = [
            _param_text(value, message.param_format(i) == 1, types[i] if i < len(types) else 0)
            for i, value in enumerate(message.params)
        ]
        _slot, answered = self.portals.create(
            message.portal, Portal(prepared, parameters, message.result_formats), self._batch)
        out.append(frame.raw)
        self._expect(Expect("bind", on_done=answered))

    async def _on_execute(self, frame: Frame, out: list[bytes]) -> None:
        message = decode_frontend(frame)
        assert isinstance(message, Execute)
        found = self.portals.lookup(message.portal, self._batch)
        if isinstance(found, Wait):
            found = await self._find(self.portals, message.portal, out)
        if isinstance(found, Refuse):
            refusal = (found.sqlstate, found.message)
            record = self._record("<Execute of an unknown portal>", None, None, "blocked",
                                  reason=found.message)
            self._spool(record, StatementOutcome(record.record_id, None, 0.0, found.sqlstate))
            self._poison(out, "execute", refusal)
            return
        portal = found.slot.value
        if portal.prepared.refused is not None:
            # refused when it was parsed or bound (and recorded then): nothing runs
            self._poison(out, "execute", portal.prepared.refused)
            return
        prepared = portal.prepared
        decision = prepared.decision
        verdict = "allowed"
        approval_id = None
        named = _NO_NAMES
        if decision is not None and not portal.cursor and any(
                info.kind in _NAMED_KINDS for info in decision.classification.statements):
            # SQL PREPARE/EXECUTE/DECLARE/FETCH/... sent through Parse: judged by what the name
            # holds when it runs, and its creations and closes booked, as in a simple query
            named = await self._named_statements(
                decision, out, len(decision.classification.statements))
            if named.refusal is not None:
                named.abandon()
                record = self._record(prepared.sql, decision, prepared.index, "blocked",
                                      parameters=portal.parameters or None,
                                      reason=named.refusal[1])
                self._spool(record, StatementOutcome(record.record_id, None, 0.0,
                                                     named.refusal[0]))
                self._poison(out, "execute", named.refusal)
                return
        if decision is not None and decision.verdicts:
            verdict = self._verdict_for(decision, prepared.index)
            if decision.blocked_index is not None and self._holdable(decision):
                hold = await self._hold(out, prepared.sql, portal.parameters or None,
                                        decision, decision.blocked_index)
                if not isinstance(hold, int):
                    self._poison(out, "execute", hold)
                    return
                verdict, approval_id = "approved", hold
        record = named.enrich(prepared.index, self._record(
            prepared.sql, decision, prepared.index, verdict,
            parameters=portal.parameters or None, approval_id=approval_id))
        out.append(frame.raw)
        unit = self._unit(record, decision, overlap=self._overlaps(decision, approval_id),
                          carry=named.carries.get(prepared.index, portal))
        unit.portal = portal
        self._expect(Expect("execute", unit, on_done=named.effects.get(prepared.index)))

    def _ceiling_refusal(self, info: StatementInfo) -> tuple[str, str] | None:
        """A SET of a timeout above the DBA's ceiling for the group role (the policy's own
        ceilings are judged with the statement, once)."""
        changes: list[tuple[str, tuple[str | None, ...]]] = [
            (setting, (value,)) for setting, value in info.config_calls]
        if info.kind == "set":
            changes.append((info.setting or "", info.values))
        for setting, values in changes:
            ceiling = self.timeout_ceilings.get(setting) if setting in TIMEOUTS else None
            if not ceiling:
                continue
            reason = setting_value_reason(setting, values, self.group, ceiling)
            if reason is not None:
                return BLOCKED_SQLSTATE, f"policyc: statement blocked: {reason}"
        return None

    def _poison(self, out: list[bytes], kind: str, refusal: tuple[str, str]) -> None:
        """Refuse an extended-protocol message: the server fails on the poison (an error
        aborts the transaction and skips to Sync, as the refused message's own error would)
        and the proxy rewrites that error into ``refusal``."""
        out.append(Parse(POISON_NAME, POISON_PARSE, ()).encode())
        self._expect(Expect(kind, rewrite=refusal))

    async def _may_create(self, book: NameBook[Any], name: str,
                          out: list[bytes]) -> tuple[str, str] | None:
        """None when a creation of ``name`` may be sent now; else the refusal (a name the
        server holds already).  Waits while an earlier batch's answer about it is due."""
        check = book.check_create(name, self._batch, self._answered)
        while True:
            if isinstance(check, Wait):
                await self._settle(check.slot, out)
                check = book.check_create(name, self._batch, self._answered)
                continue
            if isinstance(check, WaitAnswers):
                await self._settle_batches(out)
                check = book.check_create(name, self._batch, self._answered)
                continue
            return None if check is None else (check.sqlstate, check.message)

    async def _find(self, book: NameBook[_V], name: str, out: list[bytes]) -> Found[_V] | Refuse:
        """What a run of ``name`` sent now runs (waiting while an earlier batch's answer
        about it is due), or why it may not run."""
        found = book.lookup(name, self._batch)
        while isinstance(found, Wait):
            await self._settle(found.slot, out)
            found = book.lookup(name, self._batch)
        return found

    async def _settle_batches(self, out: list[bytes]) -> None:
        """Send what is queued and wait until the server has answered every earlier batch."""
        await self._flush(out)
        wanted = self._batch - 1
        while self._answered < wanted:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._answer_waiters.append(
                lambda w=waiter: None if w.done() else w.set_result(None))  # type: ignore[misc]
            await waiter

    async def _settle(self, slot: Slot[Any], out: list[bytes]) -> None:
        """Send what is queued (the earlier batch's Sync is in it or already sent, so the
        server will answer) and wait for the server's answer about ``slot``."""
        await self._flush(out)
        if not slot.unsettled:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.waiters.append(lambda: None if waiter.done() else waiter.set_result(None))
        await waiter

    # ---- just-in-time approval --------------------------------------------------------

    @staticmethod
    def _holdable(decision: Judgement) -> bool:
        """True when nothing is blocked outright and something needs approval."""
        verdicts = [v.outcome for v in decision.verdicts]
        return "needs_approval" in verdicts and "blocked" not in verdicts

    def _human(self) -> str | None:
        claims = self.identity.claims
        act = claims.get("act")
        human = claims.get("human") or (act.get("sub") if isinstance(act, dict) else None)
        return str(human) if human else None

    async def _hold(self, out: list[bytes], text: str,
                    parameters: list[str | None] | None, decision: Judgement,
                    index: int, *, reason: str | None = None,
                    estimated_rows: int | None = None) -> int | tuple[str, str]:
        """Hold a statement for a human (approval mode ``wait``), or refuse it at once naming
        its request (``ticket``): the approval id when it may run, else the refusal
        (sqlstate, message). Everything before it in the pipeline is sent first."""
        verdict = decision.verdicts[index]
        shapes = reason or ", ".join(sorted(verdict.approval_shapes)) or "policy"
        if self.approvals is None:
            return BLOCKED_SQLSTATE, (
                f"policyc: this statement needs approval ({shapes}) but the policy names no "
                "approvers, so it was not run")
        await self._flush(out)
        agent = self.identity.subject
        found = await self.approvals.find(agent, self.group.name, text, parameters)
        if found is not None:
            return int(found)
        if self.transaction_status in ("T", "E") and \
                self.group.approval.in_transaction == "refuse":
            return BLOCKED_SQLSTATE, (
                f"policyc: this statement needs approval ({shapes}); inside an open transaction "
                "this group's policy refuses instead of holding. Run it outside a transaction.")
        if self.group.approval.mode == "ticket":
            return await self._ticket(text, parameters, decision, index, shapes, estimated_rows)
        # from here a CancelRequest ends the hold (cancel_hold), even one that comes while the
        # request is being opened
        self._held = asyncio.get_running_loop().create_future()
        try:
            request_id = await self._open_request(text, parameters, decision, index, shapes,
                                                  estimated_rows)
            held = self._record(text, decision, index, "held",
                                reason=f"needs approval: {shapes}", parameters=parameters,
                                approval_id=request_id)
            await self._spool_now(held, StatementOutcome(held.record_id, None, None))
            self.client_writer.write(notice_response(
                f"policyc: approval request {request_id} is waiting for an approver "
                f"(up to {self.hold_seconds} s)", severity="NOTICE"))
            await self.client_writer.drain()
            status = await self._await_decision(request_id)
        finally:
            self._held = None
        if status == "approved":
            return request_id
        return await self._not_decided(text, parameters, decision, index, request_id, status)

    async def _not_decided(self, text: str, parameters: list[str | None] | None,
                           decision: Judgement, index: int, request_id: int,
                           status: str) -> tuple[str, str]:
        """Record and word the end of a hold that did not end in an approval.  A cancel by
        the client is recorded as blocked (statement records have no "cancelled"; the
        request itself is closed as cancelled) and answered as the server answers a cancel."""
        cancelled = status == "cancelled"
        sqlstate = "57014" if cancelled else BLOCKED_SQLSTATE  # 57014: query_canceled
        final = self._record(text, decision, index, "blocked" if cancelled else status,
                             parameters=parameters, approval_id=request_id,
                             reason=f"approval request {request_id} {status}"
                             + (" by the client" if cancelled else ""))
        await self._spool_now(final, StatementOutcome(final.record_id, None, None, sqlstate))
        if cancelled:
            return sqlstate, (f"policyc: approval request {request_id} was cancelled by the "
                              "client; the statement did not run")
        return sqlstate, (
            f"policyc: approval request {request_id} was {status}; the statement did not run")

    async def _open_request(self, text: str, parameters: list[str | None] | None,
                            decision: Judgement, index: int, shapes: str,
                            estimated_rows: int | None) -> int:
        """Open the approval request for a statement (what the approver will see)."""
        verdict = decision.verdicts[index]
        request_id: int = await self.approvals.request(
            session_id=self.session_id, agent=self.identity.subject, human=self._human(),
            group=self.group.name, statement=text, parameters=parameters,
            fingerprint=decision.fingerprint,
            tables=sorted(str(t) for t in verdict.tables),
            phi=sorted(str(c) for c in verdict.phi_columns), reason=f"needs approval: {shapes}",
            estimated_rows=estimated_rows, hold_seconds=self.hold_seconds,
            valid_for_seconds=self.valid_for_seconds)
        return request_id

    async def _ticket(self, text: str, parameters: list[str | None] | None,
                      decision: Judgement, index: int, shapes: str,
                      estimated_rows: int | None) -> tuple[str, str]:
        """Approval mode ``ticket``: nothing waits.  The statement is refused at once naming
        its request: the one still open for the identical statement (a retry before the
        decision opens no second request), else a new one, which closes as expired after
        ``hold``.  The identical statement runs once approved (``_hold`` finds it)."""
        request_id: int | None = await self.approvals.find_open(
            self.identity.subject, self.group.name, text, parameters)
        opened = request_id is None
        if request_id is None:
            request_id = await self._open_request(text, parameters, decision, index, shapes,
                                                  estimated_rows)
            self.approvals.expire_later(request_id, self.hold_seconds)
        why = f"needs approval: {shapes}" if opened else \
            f"needs approval: {shapes}; request {request_id} still pending"
        held = self._record(text, decision, index, "held", reason=why, parameters=parameters,
                            approval_id=request_id)
        await self._spool_now(held, StatementOutcome(held.record_id, None, None,
                                                     BLOCKED_SQLSTATE))
        said = f"opened ({shapes}; it stays open {self.hold_seconds} s)" if opened \
            else f"is still waiting for an approver ({shapes})"
        return BLOCKED_SQLSTATE, (
            f"policyc: approval request {request_id} {said}; the statement did not run. Run "
            f"the identical statement again (same text and parameters) once an approver "
            f"approves request {request_id}.")

    def cancel_hold(self) -> bool:
        """A CancelRequest with this session's key (it comes on another connection): end the
        statement held for approval now, True; False when nothing is held, and the server
        forwards the cancel upstream as before."""
        held = self._held
        if held is None:
            return False
        if not held.done():
            held.set_result(None)
        return True

    def _over_estimate(self, decision: Judgement) -> bool:
        """Worth an EXPLAIN: the group has a row limit, the query reads the policy's tables
        (catalog rows are never counted), and it can be explained in-band now (nothing
        outstanding on the session, which is idle or inside a healthy transaction)."""
        if self.group.approval.rows_over is None or self.approvals is None:
            return False
        statements = decision.classification.statements
        return (len(statements) == 1 and statements[0].kind == "select" and not self.expected
                and self.transaction_status in ("I", "T")
                and not self._policy_tables.isdisjoint(
                    str(t) for t in decision.verdicts[0].tables))

    async def _explain(self, sql: str) -> int | None:
        """The planner's row estimate for ``sql``, asked on the agent's own session (same role,
        same row filters, same search_path); None when it cannot tell.  Nothing of it reaches
        the client, and it leaves the session as it found it: outside a transaction the
        EXPLAIN is a transaction of its own; inside one it runs in a savepoint that is
        released, or rolled back and released when the EXPLAIN fails (an unknown column, a
        type error: the agent's own statement then fails with the server's real error, and
        the transaction is still the agent's to use).  The savepoint's name cannot collide:
        RELEASE and ROLLBACK TO act on the newest savepoint of a name, which is this one."""
        if self.transaction_status != "T":
            rows, _status, cancel = (await self._internal("EXPLAIN (FORMAT JSON) " + sql))[0]
            if cancel is not None:
                raise EstimateCancelled(*cancel)
            return rows
        savepoint = "SAVEPOINT policyc_estimate"
        release = "RELEASE SAVEPOINT policyc_estimate"
        answers = await self._internal(savepoint, "EXPLAIN (FORMAT JSON) " + sql, release)
        (_, saved, _), (rows, _, cancel), (_, released, _) = answers
        if saved == "T" and released == "T":
            return rows
        undo = await self._internal("ROLLBACK TO SAVEPOINT policyc_estimate", release)
        if saved != "T" or undo[-1][1] != "T":
            self.end_reason = "the proxy's row estimate left the transaction in another state"
            raise ProtocolViolation(
                "policyc: the proxy could not restore the transaction after its row estimate; "
                "the session was ended (nothing of the statement ran)", "XX000")
        if cancel is not None:
            raise EstimateCancelled(*cancel)
        return None

    async def _internal(self, *queries: str) -> list[_Answer]:
        """Run the proxy's own ``queries`` on the agent's session (pipelined): for each, the
        plan rows of an EXPLAIN (None otherwise or on error), the transaction status after
        it, and the cancel or timeout (57xxx) that ended it.  Their answers never reach the
        client (see :meth:`_explain_frame`)."""
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[_Answer]] = []
        for query in queries:
            waiter: asyncio.Future[_Answer] = loop.create_future()
            self.expected.append(Expect("explain", explain=waiter))
            self.upstream.writer.write(Query(query).encode())
            waiters.append(waiter)
        await self.upstream.writer.drain()
        return [await waiter for waiter in waiters]

    def _overflow(self, unit: Unit) -> bytes:
        """A result grew past the group's row limit: the rest is withheld and an approval
        request is opened so a human can allow it."""
        if unit.over_budget:
            budget = self.group.approval.budget
            assert budget is not None
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: this agent's row budget ({budget.rows} rows of this group's tables "
                f"per {budget.per_seconds} s, per session and per agent) is used up; the rest "
                "of the result was withheld. Ask an approver to run it, or wait."))
        limit = unit.limit
        if unit.record.kind == "execute":
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: the result has more than {limit} rows, over this group's approval "
                "threshold; the rest was withheld. An approval cannot name a statement run "
                "through EXECUTE: run the statement itself to ask for one."))
        if self.approvals is not None and unit.decision is not None:
            decision = unit.decision
            verdict = decision.verdicts[0] if decision.verdicts else None
            task = asyncio.get_running_loop().create_task(self.approvals.request(
                session_id=self.session_id, agent=self.identity.subject, human=self._human(),
                group=self.group.name, statement=unit.record.text,
                parameters=unit.parameters,
                fingerprint=decision.fingerprint,
                tables=sorted(str(t) for t in verdict.tables) if verdict else [],
                phi=sorted(str(c) for c in verdict.phi_columns) if verdict else [],
                reason=f"returned more than {limit} rows", estimated_rows=unit.rows,
                hold_seconds=self.hold_seconds, valid_for_seconds=self.valid_for_seconds))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self.approvals is None:
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: the result has more than {limit} rows, over this group's approval "
                "threshold; the rest was withheld (the policy names no approvers)"))
        return error_response(BLOCKED_SQLSTATE, (
            f"policyc: the result has more than {limit} rows, over this group's approval "
            "threshold; the rest was withheld and an approval request was opened "
            "(see `policyc approvals`). Run it again once it is approved."))

    async def _await_decision(self, request_id: int) -> str:
        """Wait for the decision while watching the client: a client that goes away cancels
        its request and nothing runs, and so does a CancelRequest (:meth:`cancel_hold`), the
        session staying usable; bytes it sends meanwhile wait their turn."""
        decision = asyncio.ensure_future(self.approvals.wait(request_id, self.hold_seconds))
        cancelled = self._held if self._held is not None else \
            asyncio.get_running_loop().create_future()
        while True:
            reading = asyncio.ensure_future(self.client_reader.read(65536))
            done, _ = await asyncio.wait({decision, reading, cancelled},
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                try:
                    data = reading.result()
                except OSError:  # reset by a client that died with our NOTICE unread
                    data = b""
                if data:
                    self._stash += data
                    if len(self._stash) > MAX_HELD_BACKLOG:
                        raise ProtocolViolation("too much data sent while a statement was held")
                    continue
                decision.cancel()
                await self.approvals.close_request(request_id, "cancelled",
                                                   "the client disconnected while held")
                self.end_reason = "client disconnected while a statement was held"
                raise SessionClosed
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            if decision not in done:  # the client cancelled: withdraw the request
                final = await self.approvals.withdraw(
                    request_id, "the client cancelled the statement while it was held")
                await decision  # woken by withdraw
                # a denial or expiry that came first stands; an approval that did stays in
                # force for a retry, but the client asked for this run to stop
                return final if final in ("denied", "expired") else "cancelled"
            return str(decision.result())

    # ---- server side -------------------------------------------------------------------

    async def server_pump(self) -> None:
        data = self.upstream.leftover
        framer = self.upstream.framer
        reader = self.upstream.reader
        writer = self.client_writer
        while True:
            if data:
                out = self._handle_server_frames(framer.feed(data))
                gates = self._gates
                if gates:
                    # part of this answers a read sent before its record was durable: no byte
                    # of it leaves before the record is (a failed record raises here)
                    self._gates = []
                    for gate in gates:
                        await gate
                    if self._failure is not None:
                        raise self._failure
                if out:
                    writer.write(out)
                    if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                        await writer.drain()
            data = await reader.read(65536)
            if not data:
                self.end_reason = "the database closed the session"
                self.client_writer.write(error_response(
                    "57P01", "policyc: the database ended this session (restart or shutdown); "
                    "reconnect", severity="FATAL"))
                raise SessionClosed

    def _finish(self, expect: Expect, sqlstate: str | None = None, rows: int | None = None,
                note: str | None = None) -> None:
        unit = expect.unit
        if unit is None or unit.finished:
            return
        unit.finished = True
        duration = (self.clock() - unit.started) * 1000.0 if unit.started else None
        digest = unit.digest.hexdigest() if unit.digest is not None and sqlstate is None else None
        result = None
        capture = unit.capture
        if capture is not None and digest is not None:
            if not capture.started:
                capture.start(self._result_header(unit))
            result = capture.finish()
            if capture.dropped:
                kept = not_kept_reason(self.results_limit)
                note = f"{note}; {kept}" if note else kept
        unit.capture = None
        self.audit.finish_statement(StatementOutcome(
            unit.record.record_id, unit.rows if rows is None else rows, duration, sqlstate,
            digest, note, result))

    @staticmethod
    def _result_header(unit: Unit) -> bytes | None:
        """What described the rows to the client: the statement's own RowDescription (simple
        protocol) or CopyOutResponse, else the portal's Describe, else the statement's."""
        if unit.header is not None:
            return unit.header
        portal = unit.portal
        if portal is None:
            return None
        if portal.row_description is not None:
            return portal.row_description
        if portal.prepared.row_description is not None:
            return with_formats(portal.prepared.row_description, portal.result_formats)
        return None

    def _handle_server_frames(self, frames: list[Frame]) -> bytes:
        out: list[bytes] = []
        expected = self.expected
        seen: Expect | None = None
        for frame in frames:
            kind = frame.type
            head = expected[0] if expected else None
            if head is not seen:
                seen = head
                if head is not None and head.gate is not None:
                    gate = head.gate
                    if not self._gates or self._gates[-1] is not gate:
                        self._gates.append(gate)
            if head is not None and head.explain is not None and kind not in {b"A", b"S"}:
                self._explain_frame(head, frame)  # asynchronous messages still go through
                continue
            if kind in {b"D", b"d"}:
                unit = head.unit if head is not None else None
                if unit is not None:
                    unit.rows += 1
                    carry = unit.carry  # a piece of a portal's run: the run counts
                    sent = unit.rows if carry is None else carry.rows_sent + 1
                    if unit.limit is not None and sent > unit.limit:
                        unit.overflow = True  # withheld: never reaches the agent
                        continue
                    if unit.budgeted:
                        left = self.row_budget_left
                        if left is not None and left <= 0:
                            unit.overflow = unit.over_budget = True
                            continue
                        self.row_budget_left = None if left is None else left - 1
                    if unit.carry is not None:
                        unit.carry.rows_sent += 1
                    if unit.digest is not None:
                        unit.digest.update(frame.raw)
                    capture = unit.capture
                    if capture is not None:
                        if not capture.started:
                            capture.start(self._result_header(unit))
                        capture.add(frame.raw)
                out.append(frame.raw)
            elif kind == b"C":
                expect = self._pop(("execute", "stmt"))
                if expect.on_done is not None:
                    expect.on_done(True)
                message = decode_backend(frame)
                assert isinstance(message, CommandComplete)
                counted = command_rows(message.tag)
                unit = expect.unit
                if unit is not None and counted is not None and not message.tag.startswith(
                        ("SELECT", "COPY", "FETCH")):
                    unit.rows = counted
                if unit is not None and unit.overflow:
                    self._finish(expect, sqlstate=BLOCKED_SQLSTATE,
                                 note="result over the row limit: rows withheld")
                    out.append(self._overflow(unit))
                    continue
                self._finish(expect)
                out.append(frame.raw)
            elif kind == b"I":
                expect = self._pop(("execute", "stmt"))
                if expect.on_done is not None:
                    expect.on_done(True)
                self._finish(expect)
                out.append(frame.raw)
            elif kind == b"s":
                expect = self._pop(("execute",))
                unit = expect.unit
                if unit is not None and unit.overflow:
                    self._finish(expect, sqlstate=BLOCKED_SQLSTATE,
                                 note="result over the row limit: rows withheld")
                    out.append(self._overflow(unit))
                    continue
                self._finish(expect, note="portal suspended")
                out.append(frame.raw)
            elif kind in (b"1", b"2", b"3"):
                # ParseComplete / BindComplete / CloseComplete; a proxy refusal is never
                # expected to complete: if one did, the session is out of step and ends
                expect = self._pop((_COMPLETES[kind],))
                if expect.rewrite is not None:
                    raise ProtocolViolation("a refused message completed on the server", "08P01")
                if expect.on_done is not None:
                    expect.on_done(True)
                out.append(frame.raw)
            elif kind in (b"T", b"n"):
                if head is not None and head.kind == "describe":
                    expected.popleft()
                    if kind == b"T" and self.results is ResultRecording.FULL:
                        if head.portal is not None:
                            head.portal.row_description = frame.raw
                        elif head.prepared is not None:
                            head.prepared.row_description = frame.raw
                elif kind == b"n":
                    raise ProtocolViolation("NoData without a Describe", "08P01")
                elif head is not None and head.unit is not None:
                    head.unit.header = frame.raw
                out.append(frame.raw)
            elif kind == b"H":
                if head is not None and head.unit is not None:
                    head.unit.header = frame.raw
                out.append(frame.raw)
            elif kind == b"E":
                head = expected.popleft() if expected else None
                error = decode_backend(frame)
                sqlstate = getattr(error, "sqlstate", None) or "XX000"
                if head is not None and head.kind == "sync":
                    # an error outside any pending message (e.g. a FATAL): keep the sync
                    expected.appendleft(head)
                    head = None
                if head is not None and head.on_done is not None:
                    head.on_done(False)
                if head is not None and head.rewrite is not None:
                    sqlstate, text = head.rewrite
                    out.append(error_response(sqlstate, text))
                else:
                    out.append(frame.raw)
                if head is not None:
                    self._finish(head, sqlstate=sqlstate)
                self._error_sqlstate = sqlstate
            elif kind == b"Z":
                batch: int | None = None
                while expected:
                    expect = expected.popleft()
                    if expect.kind == "sync":
                        batch = expect.batch
                        break
                    if expect.on_done is not None:
                        expect.on_done(False)  # skipped after an error
                    self._finish(expect, sqlstate=self._error_sqlstate,
                                 note="not run: an earlier message in the pipeline failed")
                self.transaction_status = chr(frame.raw[5])
                if batch is not None:
                    if self.transaction_status == "I":
                        self.portals.transaction_ended(batch)
                    self._answered = batch
                    waiters, self._answer_waiters = self._answer_waiters, []
                    for wake in waiters:
                        wake()
                out.append(frame.raw)
            elif kind == b"S":
                self._check_pinned(frame)
                out.append(frame.raw)
            elif kind == b"t":
                head = expected[0] if expected else None
                if head is not None and head.prepared is not None:
                    described = decode_backend(frame)
                    if isinstance(described, ParameterDescription):
                        head.prepared.param_types = tuple(described.type_oids)
                out.append(frame.raw)
            else:
                # G/H/W copy responses, c CopyDone, A/N/S async messages
                out.append(frame.raw)
        return b"".join(out)

    def _check_pinned(self, frame: Frame) -> None:
        """The server reports every change of a lexing setting (ParameterStatus): a value
        other than the pinned one means the proxy may no longer read SQL as the server does,
        whatever route changed it, so the session ends before another statement is read."""
        message = decode_backend(frame)
        if not isinstance(message, ParameterStatus):
            return
        allowed = PINNED.get(message.name.lower())
        if allowed is not None and message.value.strip().lower() not in allowed:
            self.end_reason = f"the server reported {message.name} changed from its pinned value"
            raise ProtocolViolation(
                f"policyc: {message.name} changed from its pinned value; the session was ended "
                "because the proxy can no longer read SQL as the server does", "42501")

    def _explain_frame(self, head: Expect, frame: Frame) -> None:
        """Consume the proxy's own EXPLAIN exchange; resolve its waiter at ReadyForQuery."""
        assert head.explain is not None
        if frame.type == b"D":
            message = decode_backend(frame)
            try:
                plan = json.loads(bytes(message.columns[0] or b"null"))  # type: ignore[union-attr]
                head.explain_rows = int(plan[0]["Plan"]["Plan Rows"])
            except (ValueError, KeyError, IndexError, TypeError):
                head.explain_rows = None
        elif frame.type == b"E":
            error = decode_backend(frame)
            if isinstance(error, ErrorResponse) and error.sqlstate.startswith("57"):
                # the client's cancel (or its own statement_timeout) reached the estimate
                head.explain_error = (error.sqlstate, error.message)
        elif frame.type == b"Z":
            self.expected.popleft()
            status = chr(frame.raw[5])
            self.transaction_status = status
            if not head.explain.done():
                head.explain.set_result((head.explain_rows, status, head.explain_error))
        # T, C, E, N: nothing for the client

    def _pop(self, kinds: tuple[str, ...]) -> Expect:
        if not self.expected or self.expected[0].kind not in kinds:
            got = self.expected[0].kind if self.expected else "nothing"
            raise ProtocolViolation(
                f"server response out of step (expected {'/'.join(kinds)}, pending {got})",
                "08P01")
        return self.expected.popleft()

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self, first_client_bytes: bytes = b"") -> None:
        client = asyncio.create_task(self.client_pump(first_client_bytes))
        server = asyncio.create_task(self.server_pump())
        self._failed = asyncio.get_running_loop().create_future()
        try:
            done, pending = await asyncio.wait({client, server, self._failed},
                                               return_when=asyncio.FIRST_COMPLETED)
            pending.discard(self._failed)
            done.discard(self._failed)
            for task in pending:
                task.cancel()
            errors = [task.exception() for task in done]
            if self._failure is not None and not any(
                    isinstance(exc, AuditUnavailable) for exc in errors):
                errors.append(self._failure)  # a record failed after its statement was sent
            for exc in errors:
                if isinstance(exc, ProtocolViolation):
                    self.end_reason = f"protocol violation: {exc}"
                    self.client_writer.write(error_response(exc.sqlstate, str(exc),
                                                            severity="FATAL"))
                elif isinstance(exc, AuditUnavailable):
                    self.end_reason = f"audit trail unavailable: {exc.why}"
                    self.client_writer.write(error_response(exc.sqlstate, str(exc),
                                                            severity="FATAL"))
                elif exc is not None and not isinstance(exc, SessionClosed | ConnectionError):
                    self.end_reason = f"internal error: {type(exc).__name__}"
                    log.error("session %s ended by %s", self.session_id, type(exc).__name__,
                              exc_info=exc)
                    self.client_writer.write(error_response(
                        "XX000", "policyc: internal error; the session was closed",
                        severity="FATAL"))
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            if not self._failed.done():
                self._failed.cancel()
            for expect in self.expected:
                self._finish(expect, note=f"session ended: {self.end_reason}")
            self.expected.clear()
            self.audit.end_session(
                SessionEnd(self.session_id, self.clock(), self.end_reason, self._seq + 1),
                self.upstream.backend_pid)
            for writer in (self.upstream.writer, self.client_writer):
                try:
                    if writer is self.upstream.writer:
                        writer.write(b"X\x00\x00\x00\x04")
                    writer.close()
                except (ConnectionError, RuntimeError):
                    pass
