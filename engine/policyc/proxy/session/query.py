"""The simple protocol's Query: judged as a whole, held, estimated, run or refused from the
first statement that must not run (what comes before it still runs, as the server would)."""

from __future__ import annotations

import time

from policyc.proxy.audit.records import StatementOutcome
from policyc.proxy.codec import Frame, Query, decode_frontend
from policyc.proxy.judge.action import Hold, Refuse, Run
from policyc.proxy.judge.cache import Judge
from policyc.proxy.session.desk import EstimateCancelled, HoldDesk
from policyc.proxy.session.gate import RecordGate
from policyc.proxy.session.named import NAMED_KINDS, NO_NAMES, Names
from policyc.proxy.session.recorder import Recorder
from policyc.proxy.session.refusals import (
    POISON_QUERY,
    poison_query,
    sets,
    verdict_for,
)
from policyc.proxy.session.state import Expect, SessionState


class SimpleQuery:
    def __init__(self, state: SessionState, gate: RecordGate, recorder: Recorder,
                 desk: HoldDesk, names: Names, judge: Judge) -> None:
        self.state = state
        self.gate = gate
        self.recorder = recorder
        self.desk = desk
        self.names = names
        self.judge = judge

    def refuse(self, message: str, sqlstate: str, out: list[bytes], text: str) -> None:
        """Record ``text`` as refused (it never runs) and answer the whole Query with it."""
        record = self.recorder.record(text, None, None, "blocked", reason=message)
        self.gate.spool(record, StatementOutcome(record.record_id, None, 0.0, sqlstate))
        poison_query(self.gate, out, (sqlstate, message), self.state.batch)

    async def on_query(self, frame: Frame, out: list[bytes]) -> None:
        state = self.state
        gate = self.gate
        recorder = self.recorder
        group = state.group
        message = decode_frontend(frame)
        assert isinstance(message, Query)
        sql = message.sql
        decision = self.judge.judge(group, sql)
        classification = decision.classification
        action = decision.action
        if classification.error is not None:
            assert isinstance(action, Refuse)
            record = recorder.record(sql, decision, 0, "blocked", reason=action.reason)
            gate.spool(record, StatementOutcome(record.record_id, None, 0.0, action.sqlstate))
            poison_query(gate, out, (action.sqlstate, action.message), state.batch)
            return
        statements = classification.statements
        if not statements:
            out.append(frame.raw)
            gate.expect(Expect("stmt"))  # EmptyQueryResponse
            gate.expect(Expect("sync", batch=state.batch))
            return
        stop = None if isinstance(action, Run) else action.index
        approval_id: int | None = None
        held_refusal: tuple[str, str] | None = None
        if isinstance(action, Hold):
            # simple protocol: the exact text stands in for parameters, so an approval never
            # covers the same statement shape with other literals
            hold = await self.desk.hold(out, sql, [sql], decision, action.index)
            if isinstance(hold, int):
                approval_id, stop = hold, None
            else:
                held_refusal = hold
        # statements that name prepared statements and cursors: judged by what the name
        # holds, and what they create or close followed on the server's answers
        named = NO_NAMES if held_refusal is not None or not any(
            info.kind in NAMED_KINDS or sets(info) for info in statements) else \
            await self.names.named_statements(decision, out, len(statements) if stop is None
                                              else stop)
        name_refusal: tuple[str, str] | None = None
        if named.stop is not None:
            stop, name_refusal = named.stop, named.refusal
        limit = group.approval.rows_over
        if stop is None and approval_id is None and limit is not None and \
                self.desk.over_estimate(decision):
            now = time.monotonic()
            estimate = self.judge.known_estimate(group, decision, limit, now)
            if estimate is None:
                try:
                    estimate = await self.desk.explain(sql)
                except EstimateCancelled as cancelled:
                    # the client's cancel (or its statement_timeout) met the estimate: the
                    # statement is cancelled, as it would have been had it started
                    named.abandon()
                    self.refuse(f"{cancelled.message} (while the proxy estimated "
                                "its rows; the statement did not run)",
                                cancelled.sqlstate, out, sql)
                    return
                if estimate is not None:
                    self.judge.note_estimate(group, decision, estimate, now)
            if estimate is not None and estimate > limit:
                reason = f"estimated {estimate} rows, over this group's limit of {limit}"
                hold = await self.desk.hold(out, sql, [sql], decision, 0, reason=reason,
                                            estimated_rows=estimate)
                if isinstance(hold, int):
                    approval_id = hold
                else:
                    named.abandon()  # nothing of the query reaches the server
                    poison_query(gate, out, hold, state.batch)
                    return
        if stop is None:
            # a statement whose effects nothing outside its transaction can see goes
            # upstream while its record is written; its answer waits for it (see the gate)
            overlap = gate.overlaps(decision, approval_id)
            for index, info in enumerate(statements):
                label = "approved" if approval_id else verdict_for(decision, index)
                record = named.enrich(index, recorder.record(
                    info.text, decision, index, label, approval_id=approval_id))
                gate.expect(Expect("stmt", recorder.unit(record, decision, approval_key=[sql],
                                                         overlap=overlap,
                                                         carry=named.carries.get(index)),
                                   on_done=named.effects.get(index)))
            out.append(frame.raw)
            gate.expect(Expect("sync", batch=state.batch))
            return
        if held_refusal is not None:
            # held and not approved: the whole query text was the request, and its outcome is
            # already recorded; nothing of it runs
            poison_query(gate, out, held_refusal, state.batch)
            return
        if name_refusal is None:
            assert isinstance(action, Refuse)  # a Hold either ran or returned above
            name_refusal = (action.sqlstate, action.message)
        sqlstate, text = name_refusal
        texts = []
        for index, info in enumerate(statements):
            verdict = decision.verdicts[index]
            if index < stop:
                record = named.enrich(index, recorder.record(
                    info.text, decision, index, verdict_for(decision, index)))
                gate.expect(Expect("stmt", recorder.unit(record, carry=named.carries.get(index)),
                                   on_done=named.effects.get(index)))
                texts.append(info.text)
            elif index == stop:
                reason = name_refusal[1] if name_refusal else verdict.reason or text
                record = recorder.record(info.text, decision, index, "blocked", reason=reason)
                gate.spool(record, StatementOutcome(record.record_id, None, 0.0, sqlstate))
            else:
                record = recorder.record(
                    info.text, decision, index, verdict_for(decision, index),
                    reason="not run: an earlier statement in the same query was refused")
                gate.spool(record, StatementOutcome(record.record_id, None, None, None))
        texts.append(POISON_QUERY)
        out.append(Query("\n;\n".join(texts)).encode())  # a text may end in a -- comment
        gate.expect(Expect("stmt", rewrite=(sqlstate, text)))
        gate.expect(Expect("sync", batch=state.batch))
