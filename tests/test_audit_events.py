"""The spool's two encoders agree: the hot path's lines (``begin_line``/``end_line``) are
byte for byte what the generic encoder writes, for arbitrary records (odd unicode, NUL, lone
surrogates, NaN and infinities, huge ints); where the hot path declines, the generic one
writes a storable line."""

from __future__ import annotations

import json
import math
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.proxy.audit.events import (
    DECISIONS,
    begin_event,
    begin_line,
    encode_event,
    end_event,
    end_line,
    event_dict,
    statement_row,
)
from policyc.proxy.audit.records import StatementOutcome, StatementRecord

PROPERTY = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# every code point, lone surrogates and NUL included, plus the characters JSON escapes
odd_text = st.lists(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)
                    | st.sampled_from(["\x00", "\ud800", "\udfff", '"', "\\", "\n",
                                       "\u2028", "\x7f", "\\u0000", "😀"]),
                    max_size=24).map("".join)
big_int = st.integers(min_value=-(2**200), max_value=2**200)
any_float = st.floats(allow_nan=True, allow_infinity=True)
maybe_text = st.none() | odd_text


def _generic(event: dict[str, object]) -> bytes:
    return encode_event(event)[1]


records = st.builds(
    StatementRecord,
    record_id=st.uuids(), session_id=st.uuids(), seq=big_int | st.booleans(),
    at=any_float | big_int, agent=odd_text, group=odd_text, text=odd_text,
    decision=st.sampled_from(sorted(DECISIONS)),
    parameters=st.none() | st.lists(maybe_text, max_size=4),
    fingerprint=maybe_text, kind=maybe_text,
    tables=st.lists(odd_text, max_size=3).map(tuple),
    phi_columns=st.lists(odd_text, max_size=3).map(tuple),
    reason=maybe_text, approval_id=st.none() | big_int,
)

outcomes = st.builds(
    StatementOutcome,
    record_id=st.uuids(), rows=st.none() | big_int | st.booleans(),
    duration_ms=st.none() | any_float | big_int, sqlstate=maybe_text,
    result_digest=maybe_text, note=maybe_text, result=st.none() | st.binary(max_size=40),
)


def _storable(line: bytes) -> None:
    """One JSON object per line, no NUL, valid UTF-8 (what PostgreSQL text/jsonb takes)."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    text = line.decode("utf-8")  # raises on a lone surrogate
    event = json.loads(text)
    assert isinstance(event, dict)
    assert not any("\x00" in value for value in _strings(event))


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@PROPERTY
@given(records)
def test_begin_line_is_the_generic_encoding(rec: StatementRecord) -> None:
    generic = _generic(begin_event(rec))
    _storable(generic)
    fast = begin_line(rec)
    if fast is not None:
        assert fast == generic


@PROPERTY
@given(outcomes)
def test_end_line_is_the_generic_encoding(outcome: StatementOutcome) -> None:
    generic = _generic(end_event(outcome))
    _storable(generic)
    fast = end_line(outcome)
    if fast is not None:
        assert fast == generic


def _row_of_events(begin: dict[str, object], end: dict[str, object] | None,
                   note: str | None) -> dict[str, object]:
    """The row the generic path builds: from the events as dicts."""
    return statement_row(begin, end, note)


@PROPERTY
@given(records, st.none() | outcomes, maybe_text)
def test_a_records_row_is_the_row_of_its_events(rec: StatementRecord,
                                                outcome: StatementOutcome | None,
                                                note: str | None) -> None:
    if type(rec.at) is not float or not math.isfinite(rec.at) or not rec.at:
        return  # a missing or odd time is stamped with the time now: not comparable
    row = statement_row(rec, outcome, note)
    generic = _row_of_events(event_dict(rec), None if outcome is None else event_dict(outcome),
                             note)
    assert row == generic


def test_the_hot_path_takes_ordinary_records() -> None:
    """The property above would hold vacuously if the hot path always declined."""
    rec = StatementRecord(uuid.uuid4(), uuid.uuid4(), 1, 1.7e9, "agent-7", "billing",
                          "SELECT name FROM patients WHERE id = $1", "masked", ["42", None],
                          "fp", "select", ("public.patients",), ("public.patients.name",),
                          "why: ✓", 7)
    outcome = StatementOutcome(rec.record_id, 1, 0.25, None, "digest", None, b"\x00\xff")
    assert begin_line(rec) == _generic(begin_event(rec))
    assert end_line(outcome) == _generic(end_event(outcome))


def test_unstorable_text_is_made_storable_not_refused() -> None:
    rec = StatementRecord(uuid.uuid4(), uuid.uuid4(), 1, 1.7e9, "a\x00", "b\ud800", "t",
                          "allowed")
    assert begin_line(rec) is None
    event = json.loads(_generic(begin_event(rec)))
    assert (event["agent"], event["group"]) == ("a\ufffd", "b?")
    outcome = StatementOutcome(rec.record_id, 1, float("nan"))
    assert json.loads(_generic(end_event(outcome)))["duration_ms"] is None
