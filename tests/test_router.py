"""The response router, driven by scripted server frames: no socket, no database.

Each test queues what the proxy forwarded (expectations), feeds the frames a server would
answer with, and checks the client's bytes and what the router noted (outcomes, rows,
transaction status, answered batches, captured descriptions, gates).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator

import pytest

from conftest import clinic_policy
from policyc.identity import AgentIdentity
from policyc.policy.model import Group, ResultRecording
from policyc.proxy.audit.records import StatementOutcome, StatementRecord
from policyc.proxy.codec import (
    BindComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyOutResponse,
    DataRow,
    ErrorResponse,
    FieldDescription,
    NoData,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ProtocolViolation,
    ReadyForQuery,
    RowDescription,
    decode_backend,
    error_response,
)
from policyc.proxy.codec.framing import BackendFramer
from policyc.proxy.results import ResultCapture
from policyc.proxy.session.router import Router
from policyc.proxy.session.state import Answer, Expect, Portal, Prepared, SessionState, Unit

T = RowDescription((FieldDescription("id", type_oid=23),)).encode()
PLAN = T
T_COPY = CopyOutResponse(0, (0,)).encode()


def row(value: str) -> bytes:
    return DataRow((value.encode(),)).encode()


def ready(status: str = "I") -> bytes:
    return ReadyForQuery(status).encode()


def done(tag: str) -> bytes:
    return CommandComplete(tag).encode()


class Outcomes:
    """The audit sink's side the router talks to: outcomes, in order."""

    def __init__(self) -> None:
        self.got: list[StatementOutcome] = []

    def finish_statement(self, outcome: StatementOutcome) -> None:
        self.got.append(outcome)


GROUP: Group = next(g for g in clinic_policy("clinic").groups if g.name == "billing")


def state(results: ResultRecording = ResultRecording.DIGEST) -> SessionState:
    identity = AgentIdentity("agent-7", ("billing-agents",), {}, 1e12, None)
    return SessionState(uuid.uuid4(), identity, GROUP, results=results, clock=lambda: 100.0)


def unit(text: str = "SELECT id FROM patients", *, limit: int | None = None) -> Unit:
    record = StatementRecord(uuid.uuid4(), uuid.uuid4(), 1, 0.0, "agent-7", "billing", text,
                             "allowed", kind="select", tables=("public.patients",))
    return Unit(record, started=99.0, digest=hashlib.sha256(), limit=limit)


class Rig:
    def __init__(self, results: ResultRecording = ResultRecording.DIGEST) -> None:
        self.state = state(results)
        self.audit = Outcomes()
        self.overflows: list[Unit] = []
        self.router = Router(self.state, self.audit, self.overflow)

    def overflow(self, unit: Unit) -> bytes:
        self.overflows.append(unit)
        return error_response("42501", "policyc: over the limit")

    def expect(self, *expects: Expect) -> None:
        self.state.expected.extend(expects)

    def feed(self, *messages: bytes) -> bytes:
        return self.router.feed(BackendFramer().feed(b"".join(messages)))


def kinds(data: bytes) -> list[bytes]:
    return [frame.type for frame in BackendFramer().feed(data)]


def errors(data: bytes) -> list[tuple[str, str]]:
    found = []
    for frame in BackendFramer().feed(data):
        if frame.type == b"E":
            message = decode_backend(frame)
            assert isinstance(message, ErrorResponse)
            found.append((message.sqlstate, message.message))
    return found


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield Rig()


def test_a_simple_query_passes_through_and_its_unit_finishes(rig: Rig) -> None:
    read = unit()
    rig.expect(Expect("stmt", read), Expect("sync", batch=0))
    woken: list[bool] = []
    rig.state.answer_waiters.append(lambda: woken.append(True))
    answer = [T, row("1"), row("2"), done("SELECT 2"), ready("I")]
    assert rig.feed(*answer) == b"".join(answer)
    [outcome] = rig.audit.got
    digest = hashlib.sha256(row("1") + row("2")).hexdigest()
    assert (outcome.record_id, outcome.rows, outcome.sqlstate, outcome.result_digest) == \
        (read.record.record_id, 2, None, digest)
    assert outcome.duration_ms == pytest.approx(1000.0)
    assert read.header == T
    assert not rig.state.expected and rig.state.answered == 0 and woken == [True]
    assert rig.state.transaction_status == "I"


def test_an_extended_batch_completes_each_message_and_learns_names(rig: Rig) -> None:
    said: list[tuple[str, bool]] = []
    execute = unit()
    rig.expect(Expect("parse", on_done=lambda ok: said.append(("parse", ok))),
               Expect("bind", on_done=lambda ok: said.append(("bind", ok))),
               Expect("execute", execute), Expect("sync", batch=3))
    answer = [ParseComplete().encode(), BindComplete().encode(), row("1"), done("SELECT 1"),
              ready("T")]
    assert rig.feed(*answer) == b"".join(answer)
    assert said == [("parse", True), ("bind", True)]
    assert [o.rows for o in rig.audit.got] == [1]
    assert rig.state.answered == 3 and rig.state.transaction_status == "T"


def test_an_error_skips_to_the_sync_and_what_it_skipped_did_not_run(rig: Rig) -> None:
    said: list[tuple[str, bool]] = []
    first, second = unit(), unit()
    rig.expect(Expect("parse", on_done=lambda ok: said.append(("parse", ok))),
               Expect("bind", on_done=lambda ok: said.append(("bind", ok))),
               Expect("execute", first), Expect("execute", second), Expect("sync", batch=0))
    failed = error_response("42P01", "relation does not exist")
    out = rig.feed(ParseComplete().encode(), failed, ready("I"))
    assert kinds(out) == [b"1", b"E", b"Z"]
    assert said == [("parse", True), ("bind", False)]
    notes = [(o.record_id, o.sqlstate, o.note) for o in rig.audit.got]
    skipped = "not run: an earlier message in the pipeline failed"
    assert notes == [(first.record.record_id, "42P01", skipped),
                     (second.record.record_id, "42P01", skipped)]
    assert not rig.state.expected and rig.state.answered == 0


def test_a_pipeline_of_two_batches_is_answered_batch_by_batch(rig: Rig) -> None:
    one, two = unit(), unit()
    rig.expect(Expect("stmt", one), Expect("sync", batch=0),
               Expect("stmt", two), Expect("sync", batch=1))
    assert kinds(rig.feed(T, row("1"), done("SELECT 1"), ready("I"), T)) == \
        [b"T", b"D", b"C", b"Z", b"T"]
    assert rig.state.answered == 0 and [o.rows for o in rig.audit.got] == [1]
    assert kinds(rig.feed(done("SELECT 0"), ready("I"))) == [b"C", b"Z"]
    assert rig.state.answered == 1 and [o.rows for o in rig.audit.got] == [1, 0]


def test_rows_over_the_limit_are_withheld_and_the_end_is_rewritten(rig: Rig) -> None:
    limited = unit(limit=2)
    rig.expect(Expect("stmt", limited), Expect("sync", batch=0))
    out = rig.feed(T, row("1"), row("2"), row("3"), row("4"), done("SELECT 4"), ready("I"))
    assert kinds(out) == [b"T", b"D", b"D", b"E", b"Z"]
    assert errors(out) == [("42501", "policyc: over the limit")]
    assert rig.overflows == [limited]
    [outcome] = rig.audit.got
    assert (outcome.rows, outcome.sqlstate, outcome.result_digest, outcome.note) == \
        (4, "42501", None, "result over the row limit: rows withheld")


def test_a_portal_s_run_counts_against_the_limit_across_its_pieces(rig: Rig) -> None:
    portal = Portal(Prepared("SELECT id FROM patients", None), [], rows_sent=2)
    piece = unit(limit=3)
    piece.carry = portal
    rig.expect(Expect("execute", piece), Expect("sync", batch=0))
    out = rig.feed(row("3"), row("4"), PortalSuspended().encode(), ready("T"))
    assert kinds(out) == [b"D", b"E", b"Z"] and portal.rows_sent == 3


def test_a_row_budget_is_spent_row_by_row_then_withholds(rig: Rig) -> None:
    rig.state.row_budget_left = 1
    spent = unit()
    spent.budgeted = True
    rig.expect(Expect("stmt", spent), Expect("sync", batch=0))
    out = rig.feed(T, row("1"), row("2"), done("SELECT 2"), ready("I"))
    assert kinds(out) == [b"T", b"D", b"E", b"Z"]
    assert spent.over_budget and rig.state.row_budget_left == 0


def test_a_poison_s_error_is_rewritten_into_the_refusal(rig: Rig) -> None:
    rig.expect(Expect("stmt", rewrite=("42501", "policyc: statement blocked: no")),
               Expect("sync", batch=0))
    out = rig.feed(error_response("22012", "division by zero"), ready("I"))
    assert errors(out) == [("42501", "policyc: statement blocked: no")]
    assert rig.router.error_sqlstate == "42501"


def test_a_refused_message_that_completes_ends_the_session(rig: Rig) -> None:
    rig.expect(Expect("parse", rewrite=("42501", "refused")), Expect("sync", batch=0))
    with pytest.raises(ProtocolViolation) as raised:
        rig.feed(ParseComplete().encode())
    assert raised.value.sqlstate == "08P01"


def test_describe_learns_parameter_types_and_keeps_the_row_description() -> None:
    rig = Rig(ResultRecording.FULL)
    prepared = Prepared("SELECT id FROM patients WHERE id = $1", None)
    portal = Portal(prepared, ["1"])
    rig.expect(Expect("describe", prepared=prepared), Expect("describe", portal=portal),
               Expect("describe"), Expect("sync", batch=0))
    out = rig.feed(ParameterDescription((23,)).encode(), T, T, NoData().encode(), ready())
    assert kinds(out) == [b"t", b"T", b"T", b"n", b"Z"]
    assert prepared.param_types == (23,)
    assert prepared.row_description == T and portal.row_description == T


def test_row_descriptions_are_kept_only_when_results_are_recorded_in_full(rig: Rig) -> None:
    prepared = Prepared("SELECT 1", None)
    rig.expect(Expect("describe", prepared=prepared), Expect("sync", batch=0))
    rig.feed(ParameterDescription(()).encode(), T, ready())
    assert prepared.row_description is None


def test_no_data_without_a_describe_is_out_of_step(rig: Rig) -> None:
    rig.expect(Expect("execute", unit()), Expect("sync", batch=0))
    with pytest.raises(ProtocolViolation):
        rig.feed(NoData().encode())


def test_copy_out_rows_are_counted_and_its_header_kept() -> None:
    rig = Rig(ResultRecording.FULL)
    copy = unit("COPY patients TO STDOUT")
    copy.capture = ResultCapture(rig.state.budget)
    rig.expect(Expect("stmt", copy), Expect("sync", batch=0))
    answer = [T_COPY, CopyData(b"1\n").encode(), CopyData(b"2\n").encode(),
              CopyDone().encode(), done("COPY 2"), ready()]
    assert rig.feed(*answer) == b"".join(answer)
    assert copy.header == T_COPY
    [outcome] = rig.audit.got
    assert outcome.rows == 2 and outcome.result is not None


def test_the_proxy_s_own_explain_never_reaches_the_client(rig: Rig) -> None:
    answers: list[Answer] = []
    rig.expect(Expect("explain", explain=answers.append))
    plan = json.dumps([{"Plan": {"Plan Rows": 42}}])
    status = ParameterStatus("application_name", "x").encode()
    out = rig.feed(PLAN, DataRow((plan.encode(),)).encode(), status, done("EXPLAIN"), ready())
    assert out == status  # asynchronous messages still go through
    assert answers == [(42, "I", None)] and not rig.state.expected


def test_a_cancel_that_ends_the_explain_is_reported(rig: Rig) -> None:
    answers: list[Answer] = []
    rig.expect(Expect("explain", explain=answers.append))
    cancelled = error_response("57014", "canceling statement due to user request")
    assert rig.feed(cancelled, ready("T")) == b""
    assert answers == [(None, "T", ("57014", "canceling statement due to user request"))]
    assert rig.state.transaction_status == "T"


@pytest.mark.parametrize("message", [done("SELECT 1"), ParseComplete().encode(),
                                     PortalSuspended().encode()])
def test_an_answer_nothing_was_sent_for_is_out_of_step(rig: Rig, message: bytes) -> None:
    with pytest.raises(ProtocolViolation) as raised:
        rig.feed(message)
    assert raised.value.sqlstate == "08P01"


def test_a_pinned_setting_reported_changed_ends_the_session(rig: Rig) -> None:
    ok = ParameterStatus("standard_conforming_strings", "on").encode()
    assert rig.feed(ok) == ok
    with pytest.raises(ProtocolViolation) as raised:
        rig.feed(ParameterStatus("standard_conforming_strings", "off").encode())
    assert raised.value.sqlstate == "42501"
    assert "standard_conforming_strings" in rig.state.end_reason


def test_a_fatal_error_outside_any_message_keeps_the_sync(rig: Rig) -> None:
    rig.expect(Expect("sync", batch=0))
    rig.feed(error_response("57P01", "terminating connection", severity="FATAL"))
    assert [e.kind for e in rig.state.expected] == ["sync"]


def test_the_gates_of_fed_responses_are_collected_once_each(rig: Rig) -> None:
    loop = asyncio.new_event_loop()
    try:
        gate, other = loop.create_future(), loop.create_future()
        rig.expect(Expect("stmt", unit(), gate=gate), Expect("sync", batch=0, gate=gate),
                   Expect("stmt", unit(), gate=other), Expect("sync", batch=1, gate=other),
                   Expect("stmt", unit()), Expect("sync", batch=2))
        rig.feed(T, done("SELECT 0"), ready(), T, done("SELECT 0"), ready(), T)
        assert rig.router.gates == [gate, other]
    finally:
        loop.close()
