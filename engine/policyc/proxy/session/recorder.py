"""What a statement's record and its audited unit start as."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any, Final

from policyc.policy.model import ResultRecording
from policyc.proxy.audit.records import StatementRecord
from policyc.proxy.judge.action import ROW_LIMITED_KINDS
from policyc.proxy.judge.cache import Judgement
from policyc.proxy.results import ResultCapture
from policyc.proxy.session.gate import RecordGate, answers_early
from policyc.proxy.session.state import Portal, SessionState, Unit

MAX_AUDIT_TEXT: Final = 100_000


class Recorder:
    """Numbers and words statement records; starts the units of statements that run."""

    def __init__(self, state: SessionState, gate: RecordGate, approvals: Any) -> None:
        self.state = state
        self.gate = gate
        self.approvals = approvals  # ApprovalBroker, or None when the policy names no approvers

    def record(self, text: str, decision: Judgement | None, index: int | None,
               verdict_decision: str, reason: str | None = None,
               parameters: list[str | None] | None = None,
               approval_id: int | None = None) -> StatementRecord:
        state = self.state
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
        state.seq += 1  # assigned now, whatever becomes of the record: never skipped
        state.metrics.statement(verdict_decision, kind, state.group.name, state.identity.subject)
        return StatementRecord(
            record_id=uuid.uuid4(), session_id=state.session_id, seq=state.seq,
            at=state.clock(), agent=state.identity.subject, group=state.group.name, text=text,
            decision=verdict_decision, parameters=parameters, fingerprint=fingerprint,
            kind=kind, tables=tables, phi_columns=phi, reason=reason, approval_id=approval_id,
        )

    def unit(self, record: StatementRecord, decision: Judgement | None = None,
             approval_key: list[str | None] | None = None, *, overlap: bool = False,
             carry: Portal | None = None) -> Unit:
        """``approval_key`` is what an approval must match besides agent and fingerprint: the
        bind parameters, or for the simple protocol the exact query text.  ``overlap``: the
        statement may go upstream before its record is durable (its answer may not; see
        :meth:`RecordGate.overlaps`)."""
        state = self.state
        group = state.group
        key = approval_key if approval_key is not None else record.parameters
        unit = Unit(record, decision=decision, parameters=key)
        if record.approval_id is None and record.kind in ROW_LIMITED_KINDS and \
                not state.policy_tables.isdisjoint(record.tables):  # never catalog rows
            unit.limit = group.approval.rows_over
            # an approval of "EXECUTE name" would not say which statement name stood for
            if unit.limit is not None and self.approvals is not None and decision is not None \
                    and record.kind != "execute":
                approved = self.approvals.cached(record.agent, group.name, record.text, key)
                if approved is not None:  # a human allowed this one: no row limit
                    unit.limit = None
                    unit.record = dataclasses.replace(record, decision="approved",
                                                      approval_id=approved)
                    state.metrics.relabel(record.decision, "approved", record.kind,
                                          record.group, record.agent)
                    record = unit.record
        unit.carry = carry
        if state.row_budget_left is not None and record.approval_id is None and \
                not state.policy_tables.isdisjoint(record.tables):
            unit.budgeted = True
        if state.results is not ResultRecording.NONE:
            unit.digest = hashlib.sha256()
            if state.results is ResultRecording.FULL:
                unit.capture = ResultCapture(state.budget)
        unit.answers_early = overlap and answers_early(decision)
        self.gate.admit(unit, overlap=overlap)
        return unit
