"""Run the report's named queries (``sql/report/NN_name.sql``) and return plain data.

Every query runs in one ``REPEATABLE READ READ ONLY`` transaction on a connection whose
``default_transaction_read_only`` is on: the figures are one consistent snapshot and the report
cannot write, even by mistake. ``audit.verify()`` builds temporary tables, which a read-only
transaction (or a read replica) refuses, so it runs on a second connection that imports the
same snapshot (``SET TRANSACTION SNAPSHOT``), in parallel with the queries; what it writes are
its own temporary tables, dropped at commit. On a replica it cannot run at all, and the
verdict says so instead.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from policyc.audittrail import Problem
from policyc.connect import connect as connect_as
from policyc.errors import PolicycError
from policyc.resources import sql_dir

APPLICATION = "policyc report"
_PARAMETER = re.compile(r"%\((\w+)\)s")


class ReportError(PolicycError):
    code = "report"


@dataclass(frozen=True)
class Query:
    """One named query: its file, what it answers (its header comment) and its text."""

    name: str
    path: Path
    answers: str
    requires: str | None
    text: str

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_PARAMETER.findall(self.text)))

    @property
    def relative(self) -> str:
        return f"sql/report/{self.path.name}"


def _read(path: Path) -> Query:
    text = path.read_text()
    answers: list[str] = []
    requires = None
    field = ""
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        body = line[2:].strip()
        label, colon, rest = body.partition(":")
        if colon and label in ("Answers", "Parameters", "Requires", "Section", "Sections"):
            field, body = label, rest.strip()
        if field == "Requires":
            requires = body
        elif field == "Answers":
            answers.append(body)
    name = path.stem.split("_", 1)[1]
    return Query(name, path, " ".join(answers), requires, text)


def queries() -> dict[str, Query]:
    """Every report query by name, in file order."""
    found = sorted((sql_dir() / "report").glob("[0-9][0-9]_*.sql"))
    return {q.name: q for q in map(_read, found)}


@dataclass
class Verification:
    """What ``audit.verify()`` said over the period (or why it could not run)."""

    ran: bool
    problems: list[Problem] = field(default_factory=list)
    not_checked: str | None = None
    seconds: float = 0.0
    since: dt.datetime | None = None


@dataclass
class Gathered:
    """Every query's rows (as dicts), what could not be read, and the verification."""

    period_from: dt.datetime
    period_to: dt.datetime
    rows: dict[str, list[dict[str, Any]]]
    unavailable: dict[str, str]
    verification: Verification
    timings: dict[str, float]
    queries: dict[str, Query]
    role: str = ""
    database: str = ""

    def one(self, name: str) -> dict[str, Any]:
        found = self.rows.get(name) or [{}]
        return found[0]


def _column_exists(conn: psycopg.Connection[Any], dotted: str) -> bool:
    schema, table, column = dotted.split(".")
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
        "AND a.attname = %s AND NOT a.attisdropped)", (f"{schema}.{table}", column)).fetchone()
    return bool(row and row[0])


def _verify(dsn: str | None, snapshot: str | None, since: dt.datetime | None,
            result: Verification) -> None:
    started = time.monotonic()
    try:
        with connect_as(dsn, APPLICATION) as conn:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            rows = conn.execute(
                "SELECT problem, table_name, record, chain, seq, at, detail "
                "FROM audit.verify(%s)", (since,)).fetchall()
            conn.rollback()  # nothing to keep: its temporary tables go with the transaction
        result.problems = [Problem(*row) for row in rows]
        result.ran = True
    except psycopg.errors.ReadOnlySqlTransaction:
        result.not_checked = ("audit.verify() builds temporary tables, which a read replica "
                              "does not allow: run `policyc audit verify` on the primary")
    except psycopg.errors.InsufficientPrivilege as exc:
        result.not_checked = (f"audit.verify() was refused ({exc.diag.message_primary}): it "
                              "needs a member of policyc_auditor")
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).strip()
        result.not_checked = f"audit.verify() failed: {message}"
    result.seconds = time.monotonic() - started


def gather(dsn: str | None, period_from: dt.datetime, period_to: dt.datetime, *,
           groups: list[str], tables: list[str], verify: bool = True) -> Gathered:
    """Run every report query in one read-only snapshot, and audit.verify() beside it."""
    named = queries()
    params: dict[str, Any] = {"from": period_from, "to": period_to, "groups": groups,
                              "tables": tables}
    rows: dict[str, list[dict[str, Any]]] = {}
    unavailable: dict[str, str] = {}
    timings: dict[str, float] = {}
    verification = Verification(ran=False, since=period_from)
    with connect_as(dsn, APPLICATION) as conn:
        _require_auditor(conn)
        conn.execute("SET default_transaction_read_only = on")
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        worker: threading.Thread | None = None
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SET LOCAL jit = off")  # compiling costs more than these scans save
            snapshot = None
            if verify:
                row = cur.execute("SELECT pg_export_snapshot() AS s").fetchone()
                snapshot = row["s"] if row else None
                worker = threading.Thread(
                    target=_verify, args=(dsn, snapshot, period_from, verification),
                    name="policyc-report-verify", daemon=True)
                worker.start()
            try:
                for name, query in named.items():
                    if query.requires and not _column_exists(conn, query.requires):
                        unavailable[name] = f"needs {query.requires} (a later runtime)"
                        continue
                    started = time.monotonic()
                    cur.execute(query.text.encode(), params if query.parameters else None)
                    rows[name] = cur.fetchall()
                    timings[name] = time.monotonic() - started
            finally:
                if worker is not None:
                    worker.join()  # the snapshot must outlive the import
            conn.rollback()
        role = conn.info.parameter_status("session_authorization") or ""
        database = conn.info.dbname
    if not verify:
        verification.not_checked = "not run (--no-verify)"
    return Gathered(period_from, period_to, rows, unavailable, verification, timings, named,
                    role=role, database=database)


def _require_auditor(conn: psycopg.Connection[Any]) -> None:
    """One line, before anything else, for a role that cannot read the trail."""
    try:
        row = conn.execute(
            "SELECT to_regclass('audit.statements') IS NOT NULL "
            "AND to_regprocedure('audit.verify(timestamptz)') IS NOT NULL, current_user"
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise ReportError("this role may not read the audit trail: run the report as a member "
                          "of policyc_auditor (README \"Privileges\")") from None
    if row is None or not row[0]:
        raise ReportError("this database has no policyc audit trail (runtime 0.3.0 or later): "
                          "run `policyc apply` first")
    readable = conn.execute(
        "SELECT has_schema_privilege('audit', 'USAGE') "
        "AND has_table_privilege('audit.statements', 'SELECT') "
        "AND has_table_privilege('audit.sessions', 'SELECT') "
        "AND has_table_privilege('audit.approvals', 'SELECT') "
        "AND has_table_privilege('audit.row_changes', 'SELECT') "
        "AND has_table_privilege('audit.checkpoints', 'SELECT')").fetchone()
    if not (readable and readable[0]):
        raise ReportError(f"role {row[1]} may not read the audit trail: run the report as a "
                          "member of policyc_auditor (README \"Privileges\")")
