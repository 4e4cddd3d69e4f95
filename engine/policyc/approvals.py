"""The approver's side of the command line: ``policyc approvals``, ``approve`` and ``deny``.

Everything goes through the database as the connecting person (libpq settings: ``--dsn`` or
the ``PG*`` environment), so the rules live in one place, ``audit.approve`` / ``audit.deny``:
membership of an approver role, never one's own request, decisions final. ``--watch`` LISTENs
on the channels the runtime notifies, so a new request shows the moment it is made; a re-list
every 30 seconds only backs up a notification lost with a dropped connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, TextIO

import psycopg
from psycopg.rows import dict_row

from policyc.connect import connect as connect_as
from policyc.policy.durations import format_duration
from policyc.vocab import Channel

__all__ = [
    "cmd_approvals",
    "cmd_approve",
    "cmd_deny",
    "decide_request",
    "list_requests",
    "watch",
]

STATEMENT_SHOWN = 200
RELIST_SECONDS = 30.0

_SELECT = """
SELECT a.id, a.requested_at, a.agent, a.human, a.group_name, a.session_id, a.proxy,
       a.statement, a.parameters, a.tables, a.phi_columns, a.estimated_rows, a.hold_reason,
       a.status, a.expires_at, a.decided_at, a.decided_by, a.decision_reason, a.valid_until,
       now() - a.requested_at AS age, a.expires_at - now() AS time_left
  FROM audit.approvals a
"""
_PENDING = _SELECT + " WHERE a.status = 'pending' AND a.expires_at > now() ORDER BY a.id"
_ALL = _SELECT + " ORDER BY a.id"
_ONE = _SELECT + " WHERE a.id = %s"


def connect(dsn: str | None) -> psycopg.Connection[Any]:
    return connect_as(dsn, "policyc approvals")


def list_requests(conn: psycopg.Connection[Any], *, include_decided: bool = False
                  ) -> list[dict[str, Any]]:
    """Pending requests (still decidable), or every request with ``include_decided``."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_ALL if include_decided else _PENDING)
        return cur.fetchall()


def _one(conn: psycopg.Connection[Any], request_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_ONE, (request_id,))
        return cur.fetchone()


def decide_request(conn: psycopg.Connection[Any], request_id: int, verb: str, reason: str) -> str:
    """Run audit.approve / audit.deny as the connected user; the new status. Raises the
    server's error (psycopg.Error) when the decision is refused."""
    if verb not in ("approve", "deny"):
        raise ValueError(f"unknown decision {verb!r}")
    query = f"SELECT audit.{verb}(%s, %s)"
    row = conn.execute(query.encode(), (request_id, reason)).fetchone()
    assert row is not None
    return str(row[0])


# Rendering -----------------------------------------------------------------------------------

def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def _duration(value: Any) -> str:
    seconds = _seconds(value)
    if seconds is None:
        return "-"
    return format_duration(max(int(seconds), 0))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def request_json(request: dict[str, Any], event: str = "request") -> dict[str, Any]:
    """One request as a JSON-ready object (times ISO 8601, intervals in seconds)."""
    data = {key: _plain(value) for key, value in request.items()}
    data["age_seconds"] = data.pop("age")
    data["time_left_seconds"] = data.pop("time_left")
    return {"event": event, **data}


def _list(value: Any) -> str:
    return ", ".join(str(v) for v in value) if value else "-"


def request_text(request: dict[str, Any]) -> str:
    """A few readable lines per request: who, what, why held, how long it has left."""
    statement = " ".join(str(request["statement"]).split())
    if len(statement) > STATEMENT_SHOWN:
        statement = statement[: STATEMENT_SHOWN - 1] + "…"
    who = str(request["agent"])
    if request.get("human"):
        who += f" for {request['human']}"
    status = request["status"]
    head = f"#{request['id']}  {status}  {who} (group {request['group_name']})  " \
           f"age {_duration(request['age'])}"
    if status == "pending":
        head += f"  left {_duration(request['time_left'])}"
    elif request.get("decided_by"):
        head += f"  by {request['decided_by']}: {request.get('decision_reason') or '-'}"
    rows = request.get("estimated_rows")
    lines = [
        head,
        f"    held: {request['hold_reason']}  rows~{'-' if rows is None else rows}"
        f"  tables: {_list(request.get('tables'))}  PHI: {_list(request.get('phi_columns'))}",
    ]
    if request.get("parameters") is not None:
        lines.append(f"    parameters: {json.dumps(_plain(request['parameters']))}")
    lines.append(f"    {statement}")
    return "\n".join(lines)


def _decision_text(request: dict[str, Any]) -> str:
    by = request.get("decided_by") or "-"
    reason = request.get("decision_reason") or "-"
    return f"#{request['id']}  {request['status']}  by {by}: {reason}"


class _Printer:
    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.events = 0

    def request(self, request: dict[str, Any], event: str = "request") -> None:
        if self.as_json:
            print(json.dumps(request_json(request, event)), file=self.out, flush=True)
        else:
            print(request_text(request), file=self.out, flush=True)
        self.events += 1

    def decision(self, request: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(request_json(request, "decision")), file=self.out, flush=True)
        else:
            print(_decision_text(request), file=self.out, flush=True)
        self.events += 1


# Watching ------------------------------------------------------------------------------------

def watch(conn: psycopg.Connection[Any], out: TextIO, *, as_json: bool = False,
          include_decided: bool = False, max_events: int | None = None,
          relist_seconds: float = RELIST_SECONDS) -> int:
    """Print pending requests, then each new request and decision as it is notified, until
    interrupted (or ``max_events`` printed). Returns the number of events printed."""
    printer = _Printer(out, as_json)

    def done() -> bool:
        return max_events is not None and printer.events >= max_events

    # LISTEN before the first listing: whatever happens in between is listed or notified
    conn.execute(f"LISTEN {Channel.APPROVAL_REQUESTS}".encode())
    conn.execute(f"LISTEN {Channel.APPROVAL_DECISIONS}".encode())
    seen: set[int] = set()
    decided: set[int] = set()

    def relist() -> None:
        for request in list_requests(conn, include_decided=include_decided):
            if request["id"] in seen or done():
                continue
            seen.add(request["id"])
            if request["status"] != "pending":
                decided.add(request["id"])
            printer.request(request)

    relist()
    if not as_json:
        print(f"-- watching {Channel.APPROVAL_REQUESTS} and {Channel.APPROVAL_DECISIONS} "
              "(Ctrl-C to stop)",
              file=out, flush=True)
    next_relist = time.monotonic() + relist_seconds
    while not done():
        remaining = max(0.0, next_relist - time.monotonic())
        # collect first, query after: the connection is busy while notifies() waits
        notes = list(conn.notifies(timeout=remaining, stop_after=1))
        for note in notes:
            if done():
                break
            _handle(conn, printer, note.channel, note.payload, seen, decided)
        if time.monotonic() >= next_relist:
            relist()
            next_relist = time.monotonic() + relist_seconds
    return printer.events


def _handle(conn: psycopg.Connection[Any], printer: _Printer, channel: str, payload: str,
            seen: set[int], decided: set[int]) -> None:
    try:
        is_decision = channel == Channel.APPROVAL_DECISIONS
        request_id = int(json.loads(payload)["id"] if is_decision else payload)
    except (ValueError, KeyError, TypeError):
        return
    request = _one(conn, request_id)
    if request is None:
        return
    if channel == Channel.APPROVAL_REQUESTS:
        if request_id not in seen:
            seen.add(request_id)
            printer.request(request)
    elif request["status"] != "pending" and request_id not in decided:
        seen.add(request_id)
        decided.add(request_id)
        printer.decision(request)


# Commands ------------------------------------------------------------------------------------

def _server_message(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).strip()


def cmd_approvals(args: argparse.Namespace, out: TextIO) -> int:
    """``policyc approvals``: list (or ``--watch``) held statements."""
    with connect(args.dsn) as conn:
        try:
            if args.watch:
                with contextlib.suppress(KeyboardInterrupt):
                    watch(conn, out, as_json=args.json, include_decided=args.all,
                          max_events=args.max_events)
                return 0
            requests = list_requests(conn, include_decided=args.all)
        except psycopg.errors.InsufficientPrivilege as exc:
            print(f"policyc approvals: {_server_message(exc)} (approvers and auditors only)",
                  file=sys.stderr)
            return 1
    _print_all(requests, out, args.json, args.all)
    return 0


def _print_all(requests: Iterable[dict[str, Any]], out: TextIO, as_json: bool,
               include_decided: bool) -> None:
    printer = _Printer(out, as_json)
    for request in requests:
        printer.request(request)
    if not printer.events and not as_json:
        print("no requests" if include_decided else "no pending requests", file=out)


def _cmd_decide(args: argparse.Namespace, out: TextIO, verb: str) -> int:
    with connect(args.dsn) as conn:
        try:
            status = decide_request(conn, args.id, verb, args.reason)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            print(f"policyc {verb}: {_server_message(exc)}", file=sys.stderr)
            return 1
    print(f"request {args.id}: {status}", file=out)
    return 0


def cmd_approve(args: argparse.Namespace, out: TextIO) -> int:
    """``policyc approve ID --reason TEXT``."""
    return _cmd_decide(args, out, "approve")


def cmd_deny(args: argparse.Namespace, out: TextIO) -> int:
    """``policyc deny ID --reason TEXT``."""
    return _cmd_decide(args, out, "deny")

