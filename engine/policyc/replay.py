"""``policyc replay SESSION_ID``: a recorded session as a transcript, for auditors.

Reads ``audit.sessions`` and ``audit.statements`` as the connecting user (an auditor: libpq
settings, ``--dsn`` or the ``PG*`` environment) and prints who (agent, group, role, claims,
client, TLS), when, and each statement in ``seq`` order with its decision and outcome; then,
per the policy's ``audit.results`` when it was recorded, nothing, the digest of the result, or
the rows exactly as the agent received them (decoded from the kept wire frames, see
:mod:`policyc.proxy.results`: text-format values as text, binary-format values as ``\\x`` hex,
NULL distinct from any text).

``--verify`` recomputes each kept result's SHA-256 and compares it with the recorded digest
(and its row count with the recorded rows), and checks that the session's seqs run 1, 2, 3 ...
without a gap or a repeat up to the session's ``end_seq``.  It names every mismatch and exits
1.  (The hash chain over the whole trail is ``policyc audit verify``'s job.)

Exit codes: 0 ok, 1 a verify mismatch / no such session / refused by the server, 64 usage,
69 the database is unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import psycopg
from psycopg.rows import dict_row

from policyc.connect import connect as connect_as
from policyc.proxy.results import DecodedResult, ResultDecodeError, decode_result

__all__ = ["Replay", "cmd_replay", "load", "replay_json", "replay_text", "verify"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69

_SESSION = """
SELECT session_id, started_at, ended_at, end_reason, end_seq, agent, group_name, oidc_groups,
       role_name, claims, host(client_addr) AS client_addr, client_port, tls, tls_version,
       proxy, outcome, reason
  FROM audit.sessions
 WHERE session_id = %s
 ORDER BY started_at
"""
_STATEMENTS = """
SELECT seq, record_id, at, decision, reason, kind, tables, phi_columns, duration_ms, rows,
       sqlstate, approval_id, fingerprint, statement, parameters, result_digest, result
  FROM audit.statements
 WHERE session_id = %s
 ORDER BY seq, at, id
"""


@dataclass
class Replay:
    """A session as read back: its row (None when missing) and its statements by seq."""

    session_id: uuid.UUID
    session: dict[str, Any] | None
    statements: list[dict[str, Any]]
    results: dict[int, DecodedResult | ResultDecodeError] = field(default_factory=dict)

    def result(self, index: int) -> DecodedResult | ResultDecodeError | None:
        return self.results.get(index)


def load(conn: psycopg.Connection[Any], session_id: uuid.UUID) -> Replay:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SESSION, (session_id,))
        sessions = cur.fetchall()
        cur.execute(_STATEMENTS, (session_id,))
        statements = cur.fetchall()
    replay = Replay(session_id, sessions[0] if sessions else None, statements)
    for index, row in enumerate(statements):
        blob = row.get("result")
        if blob is not None:
            try:
                replay.results[index] = decode_result(bytes(blob))
            except ResultDecodeError as exc:
                replay.results[index] = exc
    return replay


# Verifying ------------------------------------------------------------------------------------

def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (numbers sorted)."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    statements: int = 0
    results_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "statements": self.statements,
                "results_checked": self.results_checked}


def verify(replay: Replay) -> Verification:
    """Digests of kept results, their row counts, and contiguous seqs; every mismatch named."""
    check = Verification(statements=len(replay.statements))
    session = replay.session
    if session is None:
        check.problems.append("the session's row in audit.sessions is missing")
    seqs = [int(s["seq"]) for s in replay.statements if s.get("seq") is not None]
    if len(seqs) != len(replay.statements):
        check.problems.append("statements without a seq")
    repeated = sorted(n for n, count in Counter(seqs).items() if count > 1)
    if repeated:
        check.problems.append(f"statement seq {_ranges(repeated)} recorded more than once")
    end_seq = session.get("end_seq") if session else None
    last = max(seqs, default=0)
    if end_seq is not None:
        if last >= end_seq:
            after = sorted(n for n in set(seqs) if n >= end_seq)
            check.problems.append(
                f"statement seq {_ranges(after)} after the session's end (end_seq {end_seq})")
        last = max(last, end_seq - 1)
    missing = sorted(set(range(1, last + 1)) - set(seqs))
    if missing:
        check.problems.append(f"statement seq {_ranges(missing)} missing (removed?)")
    if any(n < 1 for n in seqs):
        check.problems.append("a statement seq below 1")
    for index, row in enumerate(replay.statements):
        decoded = replay.result(index)
        if decoded is None:
            continue
        name = f"statement seq {row.get('seq')} (record {row.get('record_id')})"
        if isinstance(decoded, ResultDecodeError):
            check.problems.append(f"{name}: the kept result is unreadable: {decoded}")
            continue
        check.results_checked += 1
        digest = row.get("result_digest")
        if digest is None:
            check.problems.append(f"{name}: a result is kept but no digest was recorded")
        elif decoded.digest != digest:
            check.problems.append(f"{name}: the kept result does not match its digest")
        rows = row.get("rows")
        if rows is not None and rows != decoded.data_frames:
            check.problems.append(f"{name}: the kept result has {decoded.data_frames} rows, "
                                  f"the record says {rows}")
    return check


# Rendering ------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _result_json(decoded: DecodedResult | ResultDecodeError | None) -> dict[str, Any] | None:
    if decoded is None:
        return None
    if isinstance(decoded, ResultDecodeError):
        return {"error": str(decoded)}
    if decoded.copy_format is not None:
        return {"copy_format": "binary" if decoded.copy_format else "text",
                "copy_data": decoded.copy_data}
    return {
        "columns": [{"name": c.name, "type_oid": c.type_oid,
                     "format": "binary" if c.format else "text"} for c in decoded.columns],
        "rows": decoded.rows,
    }


def replay_json(replay: Replay, check: Verification | None = None) -> dict[str, Any]:
    """The session as one JSON-ready document (rows as lists of strings / null)."""
    session = None
    if replay.session is not None:
        session = {k: _plain(v) for k, v in replay.session.items()}
    statements = []
    for index, row in enumerate(replay.statements):
        item = {k: _plain(v) for k, v in row.items() if k != "result"}
        item["result"] = _result_json(replay.result(index))
        statements.append(item)
    doc: dict[str, Any] = {"session_id": str(replay.session_id), "session": session,
                           "statements": statements}
    if check is not None:
        doc["verify"] = check.as_json()
    return doc


def _value(value: str | None, binary: bool) -> str:
    if value is None:
        return "NULL"
    return value if binary else json.dumps(value, ensure_ascii=False)


def _list(values: Any) -> str:
    return ", ".join(str(v) for v in values) if values else "-"


def _session_lines(replay: Replay) -> list[str]:
    s = replay.session
    if s is None:
        return [f"session {replay.session_id}  (no audit.sessions row)"]
    lines = [f"session {s['session_id']}  agent {s['agent'] or '-'}  group "
             f"{s['group_name'] or '-'}  role {s['role_name'] or '-'}  outcome {s['outcome']}"]
    if s.get("reason"):
        lines.append(f"  refused: {s['reason']}")
    lines.append(f"  OIDC groups: {_list(s.get('oidc_groups'))}")
    lines.append(f"  claims: {json.dumps(_plain(s.get('claims') or {}), sort_keys=True)}")
    client = s.get("client_addr") or "-"
    if s.get("client_port") is not None:
        client += f":{s['client_port']}"
    tls = (s.get("tls_version") or "yes") if s.get("tls") else "none"
    lines.append(f"  client {client}  TLS {tls}  proxy {s.get('proxy') or '-'}")
    lines.append(f"  started {_plain(s['started_at'])}")
    if s.get("ended_at") is not None:
        lines.append(f"  ended   {_plain(s['ended_at'])}  ({s.get('end_reason') or '-'})  "
                     f"end_seq {s.get('end_seq')}")
    else:
        lines.append("  not ended (still open, or its proxy stopped without closing it)")
    lines.append(f"  statements recorded: {len(replay.statements)}")
    return lines


def _result_lines(row: dict[str, Any],
                  decoded: DecodedResult | ResultDecodeError | None) -> list[str]:
    digest = row.get("result_digest")
    if decoded is None:
        if digest is None:
            return []
        return [f"    result: digest sha256 {digest} (rows not kept)"]
    if isinstance(decoded, ResultDecodeError):
        return [f"    result: unreadable ({decoded})"]
    head = f"    result: {decoded.data_frames} row(s) as sent, digest sha256 {digest or '-'}"
    lines = [head]
    if decoded.copy_format is not None:
        binary = decoded.copy_format == 1
        lines += [f"      | {line.rstrip(chr(10)) if not binary else line}"
                  for line in decoded.copy_data]
        return lines
    if decoded.columns:
        lines.append("      " + " | ".join(
            c.name + (" (binary)" if c.format else "") for c in decoded.columns))
    formats = [c.format == 1 for c in decoded.columns]
    for values in decoded.rows:
        lines.append("      " + " | ".join(
            _value(v, formats[i] if i < len(formats) else False) for i, v in enumerate(values)))
    return lines


def replay_text(replay: Replay, check: Verification | None = None) -> str:
    lines = _session_lines(replay)
    for index, row in enumerate(replay.statements):
        lines.append("")
        duration = row.get("duration_ms")
        took = "-" if duration is None else f"{duration:.3f} ms"
        rows = row.get("rows")
        lines.append(f"#{row.get('seq')}  {_plain(row.get('at'))}  {row.get('decision')}  "
                     f"{row.get('kind') or '-'}  {took}  rows {'-' if rows is None else rows}"
                     + (f"  sqlstate {row['sqlstate']}" if row.get("sqlstate") else "")
                     + (f"  approval {row['approval_id']}" if row.get("approval_id") else ""))
        lines.append(f"    tables: {_list(row.get('tables'))}  "
                     f"PHI: {_list(row.get('phi_columns'))}")
        if row.get("reason"):
            lines.append(f"    reason: {row['reason']}")
        for text in str(row.get("statement") or "").splitlines() or [""]:
            lines.append(f"    > {text}")
        if row.get("parameters") is not None:
            lines.append(f"    parameters: {json.dumps(_plain(row['parameters']))}")
        lines += _result_lines(row, replay.result(index))
    if check is not None:
        lines.append("")
        if check.ok:
            lines.append(f"verify: ok ({check.statements} statements, seqs contiguous, "
                         f"{check.results_checked} kept result(s) match their digests)")
        else:
            lines.append(f"verify: {len(check.problems)} problem(s)")
            lines += [f"  MISMATCH {p}" for p in check.problems]
    return "\n".join(lines)


# Command ----------------------------------------------------------------------------------------

def connect(dsn: str | None) -> psycopg.Connection[Any]:
    return connect_as(dsn, "policyc replay")


def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    """``policyc replay SESSION_ID [--dsn DSN] [--json] [--verify]``."""
    try:
        session_id = uuid.UUID(args.session_id)
    except ValueError:
        print(f"policyc replay: {args.session_id!r} is not a session id (a UUID)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        with connect(args.dsn) as conn:
            replay = load(conn, session_id)
    except psycopg.OperationalError as exc:
        print(f"policyc replay: cannot reach the database: {exc}".rstrip(), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).strip()
        print(f"policyc replay: {message} (auditors only)"
              if isinstance(exc, psycopg.errors.InsufficientPrivilege)
              else f"policyc replay: {message}", file=sys.stderr)
        return EXIT_MISMATCH
    if replay.session is None and not replay.statements:
        print(f"policyc replay: no session {session_id} in the audit trail", file=sys.stderr)
        return EXIT_MISMATCH
    check = verify(replay) if args.verify else None
    if args.json:
        json.dump(replay_json(replay, check), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        print(replay_text(replay, check), file=out)
    if check is not None and not check.ok:
        for problem in check.problems:
            print(f"policyc replay: verify: {problem}", file=sys.stderr)
        return EXIT_MISMATCH
    return EXIT_OK
