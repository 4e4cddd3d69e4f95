"""Frontend handlers: every client message is decided before it is forwarded.

One client batch (what one read of the client gives) is handled at a time; what is to be
forwarded collects in ``out`` and the record gate sends it (see
:mod:`policyc.proxy.session.gate`).  The extended protocol's messages are handled here; the
simple protocol's Query in :mod:`policyc.proxy.session.query`.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from typing import Any, Final

from policyc.errors import InvalidAuthorization
from policyc.errors import ProtocolViolation as PgProtocolViolation
from policyc.proxy.audit.records import StatementOutcome
from policyc.proxy.codec import (
    Close,
    Frame,
    Parse,
    ProtocolViolation,
    decode_frontend,
    error_response,
)
from policyc.proxy.codec.hot import decode_bind, decode_describe, decode_execute
from policyc.proxy.judge.action import Hold
from policyc.proxy.judge.action import Refuse as Refused
from policyc.proxy.judge.cache import Judge, Judgement
from policyc.proxy.names import NameBook, Refuse, Wait, name_refusal
from policyc.proxy.session.desk import HoldDesk
from policyc.proxy.session.gate import RecordGate
from policyc.proxy.session.named import NAMED_KINDS, NO_NAMES, Names
from policyc.proxy.session.query import SimpleQuery
from policyc.proxy.session.recorder import Recorder
from policyc.proxy.session.refusals import (
    BLOCKED_SQLSTATE,
    ceiling_refusal,
    poison,
    verdict_for,
)
from policyc.proxy.session.state import Expect, Portal, Prepared, SessionClosed, SessionState

#: Extended-protocol messages: after one, only a Sync ends the batch.
_EXTENDED: Final = frozenset({b"P", b"B", b"D", b"E", b"C"})
#: Messages that ask the server to run something: the token must still be valid.
_RUNS: Final = frozenset({b"Q", b"P", b"E", b"F"})
#: Messages forwarded as they are (Flush, COPY data, done and fail).
_PASS: Final = frozenset({b"H", b"d", b"c", b"f"})

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


def param_text(value: bytes | None, binary: bool, type_oid: int = 0) -> str | None:
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


class Frontend:
    """Decides each client message and queues what goes upstream."""

    def __init__(self, state: SessionState, gate: RecordGate, recorder: Recorder,
                 desk: HoldDesk, names: Names, judge: Judge,
                 client: asyncio.StreamWriter) -> None:
        self.state = state
        self.gate = gate
        self.recorder = recorder
        self.desk = desk
        self.names = names
        self.judge = judge
        self.client = client
        self.query = SimpleQuery(state, gate, recorder, desk, names, judge)

    async def handle(self, frames: list[Frame]) -> None:
        """Decide one client batch and send it upstream once its records allow it."""
        state = self.state
        gate = self.gate
        out: list[bytes] = []
        gate.begin_batch()
        try:
            for frame in frames:
                kind = frame.type
                if kind == b"X":
                    state.end_reason = "client terminated the session"
                    raise SessionClosed
                if kind in _RUNS:
                    self._check_token()
                if kind in _EXTENDED:
                    state.unsynced = True
                elif kind in (b"Q", b"F") and state.unsynced:
                    # after an error the server skips everything up to the next Sync, a Query
                    # included (with no ReadyForQuery for it): the proxy could no longer tell
                    # which answer belongs to which record. No driver sends this.
                    raise ProtocolViolation(
                        "a simple Query inside an unfinished extended-protocol batch: send "
                        "Sync first", PgProtocolViolation.sqlstate)
                if kind == b"Q":
                    await self.query.on_query(frame, out)
                    state.batch += 1
                elif kind == b"P":
                    await self._on_parse(frame, out)
                elif kind == b"B":
                    await self._on_bind(frame, out)
                elif kind == b"E":
                    await self._on_execute(frame, out)
                elif kind == b"D":
                    out.append(frame.raw)
                    message = decode_describe(frame)
                    target = state.statements.peek(message.name) if message.kind == "S" \
                        else None
                    portal = state.portals.peek(message.name) if message.kind == "P" else None
                    gate.expect(Expect("describe", prepared=target, portal=portal))
                elif kind == b"C":
                    self._on_close(frame, out)
                elif kind == b"S":
                    out.append(frame.raw)
                    gate.expect(Expect("sync", batch=state.batch))
                    state.batch += 1
                    state.unsynced = False
                elif kind in _PASS:
                    out.append(frame.raw)
                elif kind == b"F":
                    self.query.refuse("function calls (the FunctionCall message) are not allowed",
                                      BLOCKED_SQLSTATE, out, text="<FunctionCall>")
                else:
                    raise ProtocolViolation(f"unexpected message type {kind!r} from the client")
        except Exception:
            await gate.abandon()
            raise
        await gate.flush(out)

    def _check_token(self) -> None:
        if self.state.clock() >= self.state.identity.expires_at:
            self.state.end_reason = "token expired"
            self.client.write(
                error_response(InvalidAuthorization.sqlstate,
                               "your token has expired; reconnect with a fresh one",
                               severity="FATAL")
            )
            raise SessionClosed

    def _on_close(self, frame: Frame, out: list[bytes]) -> None:
        state = self.state
        message = decode_frontend(frame)
        assert isinstance(message, Close)
        book: NameBook[Any] = state.statements if message.kind == "S" else state.portals
        too_long = name_refusal(message.name, book.kind)
        if too_long is not None:
            poison(self.gate, out, "close", (too_long.sqlstate, too_long.message))
            return
        out.append(frame.raw)
        self.gate.expect(Expect("close", on_done=book.close(message.name, state.batch)))

    async def _on_parse(self, frame: Frame, out: list[bytes]) -> None:
        state = self.state
        message = decode_frontend(frame)
        assert isinstance(message, Parse)
        decision = self.judge.judge(state.group, message.sql)
        clash = None if state.statements.check_create(
            message.name, state.batch, state.answered) is None \
            else await self.names.may_create(state.statements, message.name, out)
        if clash is not None:  # the name stays what it was: no slot of ours
            self._refuse_parse(out, message, decision, 0, clash, clash[1], refused_name=False)
            return
        # a Hold prepares: preparing is harmless, the hold happens at Execute, with parameters
        action = decision.action
        ceiling = next((found for found in (
            ceiling_refusal(info, state.timeout_ceilings, state.group)
            for info in decision.classification.statements) if found is not None),
            None) if state.timeout_ceilings else None
        if ceiling is not None:
            self._refuse_parse(out, message, decision, 0, ceiling, ceiling[1])
            return
        if isinstance(action, Refused):
            self._refuse_parse(out, message, decision, action.index,
                               (action.sqlstate, action.message), action.reason)
            return
        _slot, answered = state.statements.create(
            message.name, Prepared(message.sql, decision, param_types=message.param_types),
            state.batch)
        out.append(frame.raw)
        self.gate.expect(Expect("parse", on_done=answered))

    def _refuse_parse(self, out: list[bytes], message: Parse, decision: Judgement, index: int,
                      refused: tuple[str, str], reason: str | None, *,
                      refused_name: bool = True) -> None:
        """Record a refused Parse and send its poison.  ``refused_name``: the name now
        stands for the refused statement in the proxy's book, so later runs of it are
        refused with this reason (the server holds nothing new under it: the poison fails
        before it stores anything)."""
        record = self.recorder.record(message.sql, decision, index, "blocked", reason=reason)
        self.gate.spool(record, StatementOutcome(record.record_id, None, 0.0, refused[0]))
        if refused_name:
            slot, _answered = self.state.statements.create(
                message.name, Prepared(message.sql, decision, refused), self.state.batch)
            slot.settle("ok")
        poison(self.gate, out, "parse", refused)

    async def _on_bind(self, frame: Frame, out: list[bytes]) -> None:
        state = self.state
        message = decode_bind(frame)
        found = state.statements.lookup(message.statement, state.batch)
        if isinstance(found, Wait):
            found = await self.names.find(state.statements, message.statement, out)
        if isinstance(found, Refuse):
            prepared = Prepared("<unknown prepared statement>", None,
                                (found.sqlstate, found.message))
        else:
            prepared = found.slot.value
        clash = None if state.portals.check_create(
            message.portal, state.batch, state.answered) is None \
            else await self.names.may_create(state.portals, message.portal, out)
        if clash is not None:
            prepared = Prepared(prepared.sql, prepared.decision, clash)
        if prepared.refused is not None:
            # the portal does not exist on the server after this (a failed Bind of the
            # unnamed portal may leave the old one: it is refused by us all the same)
            slot, _answered = state.portals.create(message.portal, Portal(prepared, []),
                                                   state.batch)
            slot.settle("ok")
            poison(self.gate, out, "bind", prepared.refused)
            return
        types = prepared.param_types
        parameters = [
            param_text(value, message.param_format(i) == 1, types[i] if i < len(types) else 0)
            for i, value in enumerate(message.params)
        ]
        _slot, answered = state.portals.create(
            message.portal, Portal(prepared, parameters, message.result_formats), state.batch)
        out.append(frame.raw)
        self.gate.expect(Expect("bind", on_done=answered))

    async def _on_execute(self, frame: Frame, out: list[bytes]) -> None:
        state = self.state
        gate = self.gate
        recorder = self.recorder
        message = decode_execute(frame)
        found = state.portals.lookup(message.portal, state.batch)
        if isinstance(found, Wait):
            found = await self.names.find(state.portals, message.portal, out)
        if isinstance(found, Refuse):
            refused = (found.sqlstate, found.message)
            record = recorder.record("<Execute of an unknown portal>", None, None, "blocked",
                                     reason=found.message)
            gate.spool(record, StatementOutcome(record.record_id, None, 0.0, found.sqlstate))
            poison(gate, out, "execute", refused)
            return
        portal = found.slot.value
        if portal.prepared.refused is not None:
            # refused when it was parsed or bound (and recorded then): nothing runs
            poison(gate, out, "execute", portal.prepared.refused)
            return
        prepared = portal.prepared
        decision = prepared.decision
        verdict = "allowed"
        approval_id = None
        named = NO_NAMES
        if decision is not None and not portal.cursor and any(
                info.kind in NAMED_KINDS for info in decision.classification.statements):
            # SQL PREPARE/EXECUTE/DECLARE/FETCH/... sent through Parse: judged by what the name
            # holds when it runs, and its creations and closes booked, as in a simple query
            named = await self.names.named_statements(
                decision, out, len(decision.classification.statements))
            if named.refusal is not None:
                named.abandon()
                record = recorder.record(prepared.sql, decision, prepared.index, "blocked",
                                         parameters=portal.parameters or None,
                                         reason=named.refusal[1])
                gate.spool(record, StatementOutcome(record.record_id, None, 0.0,
                                                    named.refusal[0]))
                poison(gate, out, "execute", named.refusal)
                return
        if decision is not None and decision.verdicts:
            verdict = verdict_for(decision, prepared.index)
            if isinstance(decision.action, Hold):
                hold = await self.desk.hold(out, prepared.sql, portal.parameters or None,
                                            decision, decision.action.index)
                if not isinstance(hold, int):
                    poison(gate, out, "execute", hold)
                    return
                verdict, approval_id = "approved", hold
        record = named.enrich(prepared.index, recorder.record(
            prepared.sql, decision, prepared.index, verdict,
            parameters=portal.parameters or None, approval_id=approval_id))
        out.append(frame.raw)
        unit = recorder.unit(record, decision, overlap=gate.overlaps(decision, approval_id),
                             carry=named.carries.get(prepared.index, portal))
        unit.portal = portal
        gate.expect(Expect("execute", unit, on_done=named.effects.get(prepared.index)))
