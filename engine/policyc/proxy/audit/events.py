"""Spool events: what one line of the spool holds, and the database rows drained from them.

A statement is spooled as a "begin" event (before it can matter) and an "end" event (its
outcome); sessions add "session_refused" and "session_end".  Each is encoded once, into the
bytes of its spool line.  There are two encoders and they must agree byte for byte:

* the generic one (:func:`begin_event` / :func:`end_event` dicts through
  :func:`encode_event`), used for recovery, sessions and anything odd;
* the hot path's (:func:`begin_line`, :func:`end_line`), which builds the same JSON without a
  dict or ``json.dumps``, and declines (None) whenever only the generic one can write the
  record faithfully (a NUL, a lone surrogate, a non-finite time, an int that is not an int).

tests/test_audit_events.py checks the agreement over arbitrary records.

Text the database cannot store is made storable, never refused: NUL characters become
U+FFFD, unpaired surrogates become ``?``, non-finite numbers become NULL.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from policyc.proxy.audit.records import (
    SessionEnd,
    SessionRecord,
    StatementOutcome,
    StatementRecord,
    uuid_text,
)

DECISIONS: Final = frozenset(
    {"allowed", "masked", "blocked", "held", "approved", "denied", "expired", "error"}
)
RECOVERED_REASON: Final = "proxy stopped before the statement completed"
STALE_REASON: Final = "no outcome recorded"

#: What a spool line stands for in memory: its event as a dict (generic path, recovery), or
#: the record / outcome it was built from (hot path; turned into a row when drained).
Event = dict[str, Any] | StatementRecord | StatementOutcome


def finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def scrub(value: Any) -> Any:
    """Make a JSON value storable in PostgreSQL text/jsonb (no NUL, no lone surrogate)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# --- the generic encoder ---------------------------------------------------------------------
def encode_event(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """One spool line for ``event``, and the event as the database will see it."""
    try:
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\\u0000" not in text:
            return event, text.encode("utf-8") + b"\n"
    except (ValueError, UnicodeEncodeError):
        pass
    event = scrub(event)
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return event, text.encode("utf-8") + b"\n"


def begin_event(rec: StatementRecord) -> dict[str, Any]:
    if rec.decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {rec.decision!r}")
    return {
        "e": "begin", "record_id": rec.record_key, "session_id": uuid_text(rec.session_id),
        "seq": rec.seq, "at": finite(rec.at) or time.time(), "agent": rec.agent,
        "group": rec.group, "text": rec.text, "decision": rec.decision,
        "parameters": rec.parameters,
        "fingerprint": rec.fingerprint, "kind": rec.kind, "tables": list(rec.tables),
        "phi_columns": list(rec.phi_columns), "reason": rec.reason,
        "approval_id": rec.approval_id,
    }


def end_event(outcome: StatementOutcome) -> dict[str, Any]:
    return {
        "e": "end", "record_id": outcome.record_key, "rows": outcome.rows,
        "duration_ms": finite(outcome.duration_ms), "sqlstate": outcome.sqlstate,
        "result_digest": outcome.result_digest, "note": outcome.note,
        "result": (None if outcome.result is None
                   else base64.b64encode(outcome.result).decode("ascii")),
    }


def session_end_event(end: SessionEnd, backend_pid: int | None) -> dict[str, Any]:
    return {
        "e": "session_end", "session_id": str(end.session_id),
        "ended_at": finite(end.ended_at) or time.time(), "reason": end.reason,
        "end_seq": end.end_seq, "pid": backend_pid,
    }


# --- the hot path's encoder --------------------------------------------------------------------
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_strings(items: Iterable[str | None]) -> str:
    return "[" + ",".join("null" if v is None else _encode_str(v) for v in items) + "]"


def _json_opt(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def _json_int(value: int | None) -> str | None:
    """JSON for an optional int; None when it is not one (the caller falls back)."""
    if value is None:
        return "null"
    return str(value) if type(value) is int else None


def _line(text: str) -> bytes | None:
    """A spool line, unless it needs scrubbing (a NUL, a lone surrogate): None then."""
    if "\\u0000" in text:
        return None
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return None


def begin_line(rec: StatementRecord) -> bytes | None:
    """``encode_event(begin_event(rec))``'s line, built without a dict and ``json.dumps``
    (the statement hot path); None when only the generic path can write it faithfully."""
    if rec.decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {rec.decision!r}")
    at = rec.at
    seq = _json_int(rec.seq)
    approval = _json_int(rec.approval_id)
    # an ``at`` of 0.0 (never a real time) is the generic path's: it takes the time now
    if type(at) is not float or not math.isfinite(at) or not at or seq is None \
            or approval is None:
        return None
    params = rec.parameters
    return _line(
        '{"e":"begin","record_id":"' + rec.record_key + '","session_id":"'
        + uuid_text(rec.session_id) + '","seq":' + seq + ',"at":' + repr(at) + ',"agent":'
        + _encode_str(rec.agent) + ',"group":' + _encode_str(rec.group) + ',"text":'
        + _encode_str(rec.text) + ',"decision":"' + rec.decision + '","parameters":'
        + ("null" if params is None else _json_strings(params)) + ',"fingerprint":'
        + _json_opt(rec.fingerprint) + ',"kind":' + _json_opt(rec.kind) + ',"tables":'
        + _json_strings(rec.tables) + ',"phi_columns":' + _json_strings(rec.phi_columns)
        + ',"reason":' + _json_opt(rec.reason) + ',"approval_id":' + approval + "}")


def end_line(outcome: StatementOutcome) -> bytes | None:
    """``encode_event(end_event(outcome))``'s line, built directly; None: use the generic
    path."""
    duration = outcome.duration_ms
    if duration is None or (type(duration) is float and not math.isfinite(duration)):
        elapsed = "null"
    elif type(duration) is float:
        elapsed = repr(duration)
    else:
        return None
    rows = _json_int(outcome.rows)
    if rows is None:
        return None
    result = outcome.result
    return _line(
        '{"e":"end","record_id":"' + outcome.record_key + '","rows":' + rows
        + ',"duration_ms":' + elapsed + ',"sqlstate":' + _json_opt(outcome.sqlstate)
        + ',"result_digest":' + _json_opt(outcome.result_digest) + ',"note":'
        + _json_opt(outcome.note) + ',"result":'
        + ("null" if result is None else '"' + base64.b64encode(result).decode("ascii") + '"')
        + "}")


# --- rows for the database ---------------------------------------------------------------------
def event_dict(event: Event) -> dict[str, Any]:
    if isinstance(event, StatementRecord):
        return begin_event(event)
    if isinstance(event, StatementOutcome):
        return end_event(event)
    return event


def event_at(event: Event) -> Any:
    return event.at if isinstance(event, StatementRecord) else event_dict(event).get("at")


def session_row(rec: SessionRecord, outcome: str, proxy: str) -> dict[str, Any]:
    """An audit.sessions row; an address that is not an IP (a Unix socket) is left NULL."""
    addr = rec.client_addr
    if addr is not None:
        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            addr = None
    row: dict[str, Any] = scrub({
        "session_id": str(rec.session_id), "started_at": finite(rec.started_at) or time.time(),
        "agent": rec.agent, "group_name": rec.group, "oidc_groups": list(rec.oidc_groups),
        "role_name": rec.role, "claims": rec.claims, "client_addr": addr,
        "client_port": rec.client_port, "tls": rec.tls, "tls_version": rec.tls_version,
        "proxy": rec.proxy or proxy, "outcome": outcome, "reason": rec.reason,
        "policy_hash": rec.policy_hash,
    })
    return row


def statement_row(begin_: Event, end_: Event | None, note: str | None = None) -> dict[str, Any]:
    """An audit.statements row from a begin event and its end event (or none, with a note)."""
    if type(begin_) is StatementRecord and (end_ is None or type(end_) is StatementOutcome):
        return _record_row(begin_, end_, note)
    begin = event_dict(begin_)
    end = event_dict(end_) if end_ is not None else {}
    reasons = [r for r in (begin.get("reason"), end.get("note"), note) if r]
    return {
        "record_id": begin.get("record_id"), "session_id": begin.get("session_id"),
        "seq": begin.get("seq"), "at": begin.get("at"), "agent": begin.get("agent"),
        "group_name": begin.get("group"),
        "statement": begin.get("text"), "parameters": begin.get("parameters"),
        "fingerprint": begin.get("fingerprint"), "kind": begin.get("kind"),
        "tables": begin.get("tables"), "phi_columns": begin.get("phi_columns"),
        "decision": begin.get("decision"), "reason": "; ".join(reasons) or None,
        "rows": end.get("rows"), "duration_ms": end.get("duration_ms"),
        "sqlstate": end.get("sqlstate"), "result_digest": end.get("result_digest"),
        "result": end.get("result"), "approval_id": begin.get("approval_id"),
    }


def _record_row(rec: StatementRecord, outcome: StatementOutcome | None,
                note: str | None) -> dict[str, Any]:
    """:func:`statement_row` of a hot-path record and outcome, without building their event
    dicts first (the drainer does this for every statement); tests/test_audit_events.py
    checks it is the same row."""
    reasons = [r for r in (rec.reason, outcome.note if outcome is not None else None, note)
               if r]
    row = {
        "record_id": rec.record_key, "session_id": uuid_text(rec.session_id), "seq": rec.seq,
        "at": finite(rec.at) or time.time(), "agent": rec.agent, "group_name": rec.group,
        "statement": rec.text, "parameters": rec.parameters, "fingerprint": rec.fingerprint,
        "kind": rec.kind, "tables": list(rec.tables), "phi_columns": list(rec.phi_columns),
        "decision": rec.decision, "reason": "; ".join(reasons) or None,
        "rows": None, "duration_ms": None, "sqlstate": None, "result_digest": None,
        "result": None, "approval_id": rec.approval_id,
    }
    if outcome is not None:
        row["rows"] = outcome.rows
        row["duration_ms"] = finite(outcome.duration_ms)
        row["sqlstate"] = outcome.sqlstate
        row["result_digest"] = outcome.result_digest
        result = outcome.result
        row["result"] = None if result is None else base64.b64encode(result).decode("ascii")
    return row


def rows_json(rows: list[dict[str, Any]]) -> str:
    """Rows as one JSON array, the parameter of a ``jsonb_to_recordset`` statement."""
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
