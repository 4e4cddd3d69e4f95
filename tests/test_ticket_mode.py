"""``approval: {mode: ticket}``: a statement that needs approval is refused at once naming the
request it opened; retrying the identical statement names the same request until it is
decided, runs once it is approved, and a statement differing in any literal or parameter is
a request of its own.  Real proxy, real psycopg, the real ``policyc approve``."""

from __future__ import annotations

import dataclasses
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import psycopg
import pytest

from conftest import Database
from policyc.cli import main
from policyc.errors import PolicyError
from policyc.policy import load_policy_text
from policyc.policy.model import Policy
from proxyharness import RunningProxy, run_proxy, wait_for
from test_proxy_approvals import UPDATE_ALL, _policy

HOLD = 30


def _ticket_policy(db: Database, hold: int = HOLD) -> Policy:
    """The clinic policy with every group's approvals in ticket mode."""
    policy = _policy(db, hold=hold)
    groups = tuple(dataclasses.replace(g, approval=dataclasses.replace(g.approval, mode="ticket"))
                   for g in policy.groups)
    return dataclasses.replace(policy, groups=groups)


@pytest.fixture
def approver(applied_clinic: Database) -> Database:
    applied_clinic.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    return applied_clinic


@pytest.fixture
def proxy(approver: Database, tmp_path: Path) -> Iterator[RunningProxy]:
    with run_proxy(_ticket_policy(approver), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running


def _ticket(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> int:
    """Run ``sql``, which must be refused at once (42501) naming an approval request: its id."""
    started = time.monotonic()
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql, params)
    assert time.monotonic() - started < 5, "ticket mode must not hold the statement"
    message = str(info.value)
    assert "the statement did not run" in message and "claims" not in message  # no text
    found = re.match(r"policyc: approval request (\d+) ", message)
    assert found, message
    request_id = int(found.group(1))
    assert f"once an approver approves request {request_id}." in message
    return request_id


def _approve(db: Database, request_id: int) -> None:
    out = io.StringIO()
    code = main(["approve", str(request_id), "--reason", "checked", "--dsn", db.dsn_as("alice")],
                out=out)
    assert (code, out.getvalue()) == (0, f"request {request_id}: approved\n")


def _statuses(db: Database) -> list[tuple[int, str]]:
    return [(int(i), str(s)) for i, s in db.execute(
        "SELECT id, status FROM audit.approvals ORDER BY id")]


def _reviewed(db: Database) -> int:
    return int(db.execute(
        "SELECT count(*) FROM public.claims WHERE status = 'reviewed'")[0][0])


def test_ticket_refuses_at_once_then_the_identical_statement_runs_once_approved(
    approver: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        first = _ticket(conn, UPDATE_ALL)
        assert _statuses(approver) == [(first, "pending")]
        assert _reviewed(approver) == 0
        # asked again before a decision: the same request, no second one
        assert _ticket(conn, UPDATE_ALL) == first
        assert _statuses(approver) == [(first, "pending")]
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        _approve(approver, first)
        # the identical statement now runs, under that approval
        assert conn.execute(UPDATE_ALL).rowcount > 0
        assert _reviewed(approver) > 0
        # a different literal is not what was approved: a new request, nothing runs
        other = _ticket(conn, "UPDATE claims SET status = 'on-hold'")
        assert other != first
        assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'on-hold'") == \
            [(0,)]
    assert _statuses(approver) == [(first, "approved"), (other, "pending")]
    query = ("SELECT decision, approval_id, sqlstate FROM audit.statements "
             "WHERE approval_id IS NOT NULL ORDER BY seq")
    records = wait_for(lambda: len(approver.execute(query)) >= 4 and approver.execute(query))
    assert records == [("held", first, "42501"), ("held", first, "42501"),
                       ("approved", first, None), ("held", other, "42501")]


def test_ticket_extended_protocol_matches_exact_parameters(approver: Database,
                                                           proxy: RunningProxy) -> None:
    update = "UPDATE claims SET status = %s"
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        first = _ticket(conn, update, ("reviewed",))
        assert _ticket(conn, update, ("reviewed",)) == first
        assert approver.execute("SELECT parameters FROM audit.approvals") == [(["reviewed"],)]
        _approve(approver, first)
        assert _ticket(conn, update, ("on-hold",)) != first  # same text, another parameter
        assert conn.execute(update, ("reviewed",)).rowcount > 0
    assert _reviewed(approver) > 0
    assert approver.execute(
        "SELECT count(*) FROM public.claims WHERE status = 'on-hold'") == [(0,)]


def test_ticket_after_a_denial_a_new_attempt_opens_a_new_request(approver: Database,
                                                                 proxy: RunningProxy) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        first = _ticket(conn, UPDATE_ALL)
        with approver.connect("alice") as human:
            human.execute("SELECT audit.deny(%s, 'no')", (first,))
        second = _ticket(conn, UPDATE_ALL)
        assert second != first
    assert _statuses(approver) == [(first, "denied"), (second, "pending")]
    assert _reviewed(approver) == 0


def test_ticket_request_expires_after_hold_then_a_new_one_opens(approver: Database,
                                                                tmp_path: Path) -> None:
    with run_proxy(_ticket_policy(approver, hold=2), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        first = _ticket(conn, UPDATE_ALL)
        # nobody waits on a ticket, yet its request is closed as expired on time
        assert wait_for(lambda: _statuses(approver) == [(first, "expired")], timeout=15), \
            _statuses(approver)
        second = _ticket(conn, UPDATE_ALL)
        assert second != first
    assert _reviewed(approver) == 0


def test_ticket_mode_inside_a_transaction(approver: Database, proxy: RunningProxy) -> None:
    # research: in_transaction: refuse still refuses, and opens no request
    with proxy.connect("r-1", "research") as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="inside an open"):
            conn.execute("CREATE TEMP TABLE scratch (id int)")
        conn.execute("ROLLBACK")
    assert _statuses(approver) == []
    # billing (in_transaction: hold): a ticket at once, the transaction aborted like any error
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("BEGIN")
        request_id = _ticket(conn, UPDATE_ALL)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.execute("ROLLBACK")
    assert _statuses(approver) == [(request_id, "pending")]


# --- the policy --------------------------------------------------------------------------------

POLICY = """\
version: 1
approvals:
  approvers: [analysts]
groups:
  g:
    oidc_groups: [g]
    approval: {statements: [ddl], mode: %s}
"""


def test_mode_loads_and_defaults_to_wait() -> None:
    assert load_policy_text(POLICY % "ticket").group("g").approval.mode == "ticket"
    assert load_policy_text(POLICY % "wait").group("g").approval.mode == "wait"
    default = POLICY.replace(", mode: %s", "")
    assert load_policy_text(default).group("g").approval.mode == "wait"


def test_a_bad_mode_is_reported_at_its_file_line_and_key() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(dedent(POLICY % "later"), source="inline.yaml")
    assert [(p.location.file, p.location.line, p.location.key, p.message)
            for p in info.value.problems] == [
        ("inline.yaml", 7, "groups.g.approval.mode",
         "'later' is not a choice of wait or ticket: use one of wait, ticket"),
    ]
