"""The response router: sans-I/O, fed the server's frames, it returns the bytes for the
client and keeps what happened in the session's state.

Server responses are matched to what was forwarded through a FIFO of expectations: each
forwarded message has exactly one completing response unless an error intervenes, after which
the server skips to the next Sync (ReadyForQuery pops everything before it).

What a feed does besides the bytes: units finish (their outcomes go to the audit sink), the
gates of responses that may not leave before their records are durable are collected in
:attr:`Router.gates` (the pump awaits them before it writes), ReadyForQuery sets the
transaction status and wakes whoever waits for a client batch's answer, a pinned setting
reported changed raises, a result over the row limit or the row budget is rewritten into the
refusal ``overflow`` words, and the proxy's own EXPLAIN exchanges are consumed (their answer
goes to the expectation's callback, nothing to the client).  No socket, no task, no await:
tests drive it with scripted frames.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Protocol

from policyc.errors import InsufficientPrivilege, InternalError
from policyc.errors import ProtocolViolation as PgProtocolViolation
from policyc.policy.model import ResultRecording
from policyc.proxy.audit.records import StatementOutcome
from policyc.proxy.codec import (
    ErrorResponse,
    Frame,
    ParameterDescription,
    ParameterStatus,
    ProtocolViolation,
    decode_backend,
    error_response,
)
from policyc.proxy.codec.backend import command_rows
from policyc.proxy.codec.hot import decode_command_complete
from policyc.proxy.judge.settings import PINNED
from policyc.proxy.results import not_kept_reason, with_formats
from policyc.proxy.session.refusals import BLOCKED_SQLSTATE
from policyc.proxy.session.state import Expect, SessionState, Unit


class OutcomeSink(Protocol):
    def finish_statement(self, outcome: StatementOutcome) -> None: ...


_COMPLETES: dict[bytes, str] = {b"1": "parse", b"2": "bind", b"3": "close"}
_ROWS = (b"D", b"d")
_ROWS_DONE = ("execute", "stmt")
_EXECUTE = ("execute",)
_NOT_EXPLAINED = (b"A", b"S")  # asynchronous messages go through even during an EXPLAIN


class Router:
    """The expected-response FIFO of one session (``state.expected``), fed server frames."""

    def __init__(self, state: SessionState, audit: OutcomeSink,
                 overflow: Callable[[Unit], bytes]) -> None:
        self.state = state
        self.audit = audit
        # the refusal that replaces a result over the row limit or budget (the hold desk's)
        self.overflow = overflow
        # gates of the responses fed since the pump last took them: none of those bytes
        # may leave before each is done
        self.gates: list[asyncio.Future[None]] = []
        self.error_sqlstate: str | None = None  # the last error: what skipped units report

    def feed(self, frames: list[Frame]) -> bytes:
        """The bytes for the client of ``frames``."""
        out: list[bytes] = []
        state = self.state
        expected = state.expected
        seen: Expect | None = None
        for frame in frames:
            kind = frame.type
            head = expected[0] if expected else None
            if head is not seen:
                seen = head
                if head is not None and head.gate is not None:
                    gate = head.gate
                    if not self.gates or self.gates[-1] is not gate:
                        self.gates.append(gate)
            if head is not None and head.explain is not None and kind not in _NOT_EXPLAINED:
                self._explain_frame(head, frame)  # asynchronous messages still go through
                continue
            if kind in _ROWS:
                unit = head.unit if head is not None else None
                if unit is not None:
                    unit.rows += 1
                    carry = unit.carry  # a piece of a portal's run: the run counts
                    sent = unit.rows if carry is None else carry.rows_sent + 1
                    if unit.limit is not None and sent > unit.limit:
                        unit.overflow = True  # withheld: never reaches the agent
                        continue
                    if unit.budgeted:
                        left = state.row_budget_left
                        if left is not None and left <= 0:
                            unit.overflow = unit.over_budget = True
                            continue
                        state.row_budget_left = None if left is None else left - 1
                    if carry is not None:
                        carry.rows_sent += 1
                    if unit.digest is not None:
                        unit.digest.update(frame.raw)
                    capture = unit.capture
                    if capture is not None:
                        if not capture.started:
                            capture.start(self.result_header(unit))
                        capture.add(frame.raw)
                out.append(frame.raw)
            elif kind == b"C":
                expect = self._pop(_ROWS_DONE)
                if expect.on_done is not None:
                    expect.on_done(True)
                message = decode_command_complete(frame)
                counted = command_rows(message.tag)
                unit = expect.unit
                if unit is not None and counted is not None and not message.tag.startswith(
                        ("SELECT", "COPY", "FETCH")):
                    unit.rows = counted
                if unit is not None and unit.overflow:
                    self.finish(expect, sqlstate=BLOCKED_SQLSTATE,
                                note="result over the row limit: rows withheld")
                    out.append(self.overflow(unit))
                    continue
                self.finish(expect)
                out.append(frame.raw)
            elif kind == b"I":
                expect = self._pop(_ROWS_DONE)
                if expect.on_done is not None:
                    expect.on_done(True)
                self.finish(expect)
                out.append(frame.raw)
            elif kind == b"s":
                expect = self._pop(_EXECUTE)
                unit = expect.unit
                if unit is not None and unit.overflow:
                    self.finish(expect, sqlstate=BLOCKED_SQLSTATE,
                                note="result over the row limit: rows withheld")
                    out.append(self.overflow(unit))
                    continue
                self.finish(expect, note="portal suspended")
                out.append(frame.raw)
            elif kind in _COMPLETES:
                # ParseComplete / BindComplete / CloseComplete; a proxy refusal is never
                # expected to complete: if one did, the session is out of step and ends
                expect = self._pop((_COMPLETES[kind],))
                if expect.rewrite is not None:
                    raise ProtocolViolation("a refused message completed on the server",
                                            PgProtocolViolation.sqlstate)
                if expect.on_done is not None:
                    expect.on_done(True)
                out.append(frame.raw)
            elif kind in (b"T", b"n"):
                if head is not None and head.kind == "describe":
                    expected.popleft()
                    if kind == b"T" and state.results is ResultRecording.FULL:
                        if head.portal is not None:
                            head.portal.row_description = frame.raw
                        elif head.prepared is not None:
                            head.prepared.row_description = frame.raw
                elif kind == b"n":
                    raise ProtocolViolation("NoData without a Describe",
                                            PgProtocolViolation.sqlstate)
                elif head is not None and head.unit is not None:
                    head.unit.header = frame.raw
                out.append(frame.raw)
            elif kind == b"H":
                if head is not None and head.unit is not None:
                    head.unit.header = frame.raw
                out.append(frame.raw)
            elif kind == b"E":
                out.append(self._error(frame))
            elif kind == b"Z":
                self._ready(frame)
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

    def _error(self, frame: Frame) -> bytes:
        """An ErrorResponse: it fails the message it answers (rewritten into the proxy's
        refusal when that message was a poison); the server then skips to the Sync."""
        expected = self.state.expected
        head = expected.popleft() if expected else None
        error = decode_backend(frame)
        sqlstate = getattr(error, "sqlstate", None) or InternalError.sqlstate
        if head is not None and head.kind == "sync":
            # an error outside any pending message (e.g. a FATAL): keep the sync
            expected.appendleft(head)
            head = None
        out = frame.raw
        if head is not None:
            if head.on_done is not None:
                head.on_done(False)
            if head.rewrite is not None:
                sqlstate, text = head.rewrite
                out = error_response(sqlstate, text)
            self.finish(head, sqlstate=sqlstate)
        self.error_sqlstate = sqlstate
        return out

    def _ready(self, frame: Frame) -> None:
        """ReadyForQuery: everything before its Sync was skipped after an error; the client
        batch it ends is answered."""
        state = self.state
        expected = state.expected
        batch: int | None = None
        while expected:
            expect = expected.popleft()
            if expect.kind == "sync":
                batch = expect.batch
                break
            if expect.on_done is not None:
                expect.on_done(False)  # skipped after an error
            self.finish(expect, sqlstate=self.error_sqlstate,
                        note="not run: an earlier message in the pipeline failed")
        state.transaction_status = chr(frame.raw[5])
        if batch is not None:
            if state.transaction_status == "I":
                state.portals.transaction_ended(batch)
            state.answered = batch
            waiters, state.answer_waiters = state.answer_waiters, []
            for wake in waiters:
                wake()

    def finish(self, expect: Expect, sqlstate: str | None = None, rows: int | None = None,
               note: str | None = None) -> None:
        """Hand the outcome of ``expect``'s unit (if any, once) to the audit sink."""
        unit = expect.unit
        if unit is None or unit.finished:
            return
        unit.finished = True
        state = self.state
        duration: float | None = None
        if unit.started:
            ended = state.clock()
            duration = (ended - unit.started) * 1000.0
            state.metrics.ran(unit.started - unit.record.at, ended - unit.started)
        digest = unit.digest.hexdigest() if unit.digest is not None and sqlstate is None else None
        result = None
        capture = unit.capture
        if capture is not None and digest is not None:
            if not capture.started:
                capture.start(self.result_header(unit))
            result = capture.finish()
            if capture.dropped:
                kept = not_kept_reason(state.results_limit)
                note = f"{note}; {kept}" if note else kept
        unit.capture = None
        self.audit.finish_statement(StatementOutcome(
            unit.record.record_id, unit.rows if rows is None else rows, duration, sqlstate,
            digest, note, result))

    @staticmethod
    def result_header(unit: Unit) -> bytes | None:
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

    def _check_pinned(self, frame: Frame) -> None:
        """The server reports every change of a lexing setting (ParameterStatus): a value
        other than the pinned one means the proxy may no longer read SQL as the server does,
        whatever route changed it, so the session ends before another statement is read."""
        message = decode_backend(frame)
        if not isinstance(message, ParameterStatus):
            return
        allowed = PINNED.get(message.name.lower())
        if allowed is not None and message.value.strip().lower() not in allowed:
            self.state.end_reason = \
                f"the server reported {message.name} changed from its pinned value"
            raise ProtocolViolation(
                f"policyc: {message.name} changed from its pinned value; the session was ended "
                "because the proxy can no longer read SQL as the server does",
                InsufficientPrivilege.sqlstate)

    def _explain_frame(self, head: Expect, frame: Frame) -> None:
        """Consume the proxy's own EXPLAIN exchange; answer its waiter at ReadyForQuery."""
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
            self.state.expected.popleft()
            status = chr(frame.raw[5])
            self.state.transaction_status = status
            head.explain((head.explain_rows, status, head.explain_error))
        # T, C, E, N: nothing for the client

    def _pop(self, kinds: tuple[str, ...]) -> Expect:
        expected = self.state.expected
        if not expected or expected[0].kind not in kinds:
            got = expected[0].kind if expected else "nothing"
            raise ProtocolViolation(
                f"server response out of step (expected {'/'.join(kinds)}, pending {got})",
                PgProtocolViolation.sqlstate)
        return expected.popleft()
