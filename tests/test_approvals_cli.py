"""``policyc approvals`` / ``approve`` / ``deny`` in-process, against the applied clinic, as the
humans alice (approver) and bob (not one); ``--watch`` sees requests and decisions live."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest

from conftest import Database
from policyc.cli import main
from test_approvals_sql import request, row


@pytest.fixture
def approvals_db(applied_clinic: Database) -> Database:
    applied_clinic.execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; GRANT security_analysts TO alice")
    return applied_clinic


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_list_shows_what_an_approver_needs(approvals_db: Database) -> None:
    db = approvals_db
    assert cli("approvals", "--dsn", db.dsn_as("alice")) == (0, "no pending requests\n")
    request_id = request(db, parameters=["42"], human="dana")
    code, out = cli("approvals", "--dsn", db.dsn_as("alice"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"#{request_id}  pending  agent-7 for dana (group billing)  age ")
    assert " left 1m" in lines[0] or " left 2m" in lines[0]
    assert lines[1].split() == ["held:", "copy_out", "rows~300", "tables:", "public.patients",
                                "PHI:", "public.patients.ssn"]
    assert lines[2] == '    parameters: ["42"]'
    assert lines[3] == "    COPY patients TO STDOUT"


def test_long_statements_are_cut_and_json_lines_are_complete(approvals_db: Database) -> None:
    db = approvals_db
    with db.connect("policyc_proxy") as conn:
        long_id = conn.execute(
            "SELECT audit.request_approval(NULL, 'agent-7', NULL, 'billing', %s, NULL, 'fp', "
            "'{public.visits}', '{}', 'rows_over', 5000, '2 minutes', '1 hour', 'proxy-a')",
            ("SELECT * FROM visits WHERE " + " OR ".join(["id = 1"] * 100),),
        ).fetchone()[0]  # type: ignore[index]
    code, out = cli("approvals", "--dsn", db.dsn_as("alice"))
    statement_line = out.splitlines()[-1].strip()
    assert code == 0 and len(statement_line) == 200 and statement_line.endswith("…")
    code, out = cli("approvals", "--json", "--dsn", db.dsn_as("alice"))
    [item] = [json.loads(line) for line in out.splitlines()]
    assert item["event"] == "request" and item["id"] == long_id
    assert item["statement"].count("id = 1") == 100  # JSON keeps the whole statement
    assert item["estimated_rows"] == 5000 and item["tables"] == ["public.visits"]
    assert 0 <= item["age_seconds"] < 60 and 60 < item["time_left_seconds"] <= 120


def test_approve_and_deny_from_the_command_line(approvals_db: Database,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = approvals_db
    first, second = request(db), request(db, fingerprint="fp-2")
    assert cli("approve", str(first), "--reason", "ticket 12", "--dsn", db.dsn_as("alice")) == (
        0, f"request {first}: approved\n")
    assert row(db, first)["decision_reason"] == "ticket 12"
    code, out = cli("deny", str(second), "--reason", "no", "--dsn", db.dsn_as("bob"))
    assert (code, out) == (1, "")
    assert "permission denied" in capsys.readouterr().err
    assert cli("deny", str(second), "--reason", "no", "--dsn", db.dsn_as("alice")) == (
        0, f"request {second}: denied\n")
    code, _ = cli("deny", str(first), "--reason", "changed my mind", "--dsn", db.dsn_as("alice"))
    err = capsys.readouterr().err
    assert code == 1 and f"policyc deny: request {first} is already approved" in err
    assert cli("approvals", "--dsn", db.dsn_as("alice")) == (0, "no pending requests\n")
    code, out = cli("approvals", "--all", "--dsn", db.dsn_as("alice"))
    assert code == 0
    assert f"#{first}  approved  agent-7 (group billing)" in out and "by alice: ticket 12" in out
    assert f"#{second}  denied" in out
    # usage errors: no reason, not a number
    assert cli("approve", str(first), "--dsn", db.dsn_as("alice"))[0] == 64
    assert cli("approve", "x", "--reason", "r", "--dsn", db.dsn_as("alice"))[0] == 64
    # bob may not even list
    assert cli("approvals", "--dsn", db.dsn_as("bob"))[0] == 1
    assert "approvers and auditors only" in capsys.readouterr().err


def _run_watch(argv: list[str]) -> tuple[threading.Thread, io.StringIO, dict[str, Any]]:
    out = io.StringIO()
    result: dict[str, Any] = {}

    def run() -> None:
        result["code"] = main(argv, out=out)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out, result


def _wait_for(out: io.StringIO, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, f"{text!r} never appeared in: {out.getvalue()!r}"
        time.sleep(0.02)


def test_watch_streams_new_requests_and_decisions(approvals_db: Database) -> None:
    db = approvals_db
    before = request(db, fingerprint="fp-0")
    thread, out, result = _run_watch(
        ["approvals", "--watch", "--max-events", "4", "--dsn", db.dsn_as("alice")])
    _wait_for(out, "-- watching")
    assert out.getvalue().startswith(f"#{before}  pending")
    made = request(db, fingerprint="fp-1")  # arrives by NOTIFY, not by the listing
    _wait_for(out, f"#{made}  pending")
    cli("approve", str(made), "--reason", "fine", "--dsn", db.dsn_as("alice"))
    _wait_for(out, f"#{made}  approved  by alice: fine")
    with db.connect("policyc_proxy") as conn:
        conn.execute("SELECT audit.close_request(%s, 'cancelled', 'client left')", (before,))
    thread.join(10)
    assert not thread.is_alive() and result["code"] == 0
    assert out.getvalue().splitlines()[-1] == (
        f"#{before}  cancelled  by policyc-proxy: client left")


def test_watch_json_lines(approvals_db: Database) -> None:
    db = approvals_db
    thread, out, result = _run_watch(
        ["approvals", "--watch", "--json", "--max-events", "2", "--dsn", db.dsn_as("alice")])
    deadline = time.monotonic() + 10
    # no header in JSON mode: wait until the watcher has listed (it LISTENs before that)
    while not db.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = "
                         "'policyc approvals' AND state = 'idle' "
                         "AND query LIKE '%%FROM audit.approvals a%%'"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    made = request(db)
    cli("deny", str(made), "--reason", "no", "--dsn", db.dsn_as("alice"))
    thread.join(10)
    assert not thread.is_alive() and result["code"] == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["id"], e["status"]) for e in events] == [
        ("request", made, "pending"), ("decision", made, "denied")]
    assert events[1]["decided_by"] == "alice" and events[1]["decision_reason"] == "no"
