"""Just-in-time approval through the proxy: a held statement waits in the agent's live session
until a human approves (it runs), denies or lets the hold expire (an error naming the request),
with real clients, real NOTIFY, and two proxies sharing one database."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, clinic_policy
from policyc.policy.model import Policy
from policyc.proxy.codec import Query
from proxyharness import RunningProxy, run_proxy, wait_for
from test_proxy_durability import RawClient

UPDATE_ALL = "UPDATE claims SET status = 'reviewed'"  # update_all: billing must ask


def _policy(db: Database, hold: int = 30, valid_for: int = 3600) -> Policy:
    policy = clinic_policy(db.name)
    return dataclasses.replace(policy, approvals=dataclasses.replace(
        policy.approvals, hold_seconds=hold, valid_for_seconds=valid_for))


@pytest.fixture
def approver(applied_clinic: Database) -> Database:
    applied_clinic.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    applied_clinic.execute("CREATE ROLE mallory LOGIN")
    return applied_clinic


@pytest.fixture
def held_proxy(approver: Database, tmp_path: Path) -> Iterator[RunningProxy]:
    with run_proxy(_policy(approver), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running


def _pending(db: Database) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id, agent, statement, status FROM audit.approvals "
                      "WHERE status = 'pending' ORDER BY id")


def _decide(db: Database, verb: str, user: str = "alice", reason: str = "checked") -> str:
    request = wait_for(lambda: _pending(db))
    assert request, "no pending approval request appeared"
    with db.connect(user) as conn:
        row = conn.execute(f"SELECT audit.{verb}(%s, %s)", (request[0][0], reason)).fetchone()
    assert row is not None
    return str(row[0])


def _in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:  # reported to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_hold_approve_run(approver: Database, held_proxy: RunningProxy) -> None:
    conn = held_proxy.connect("agent-7", "billing", clinic_id=1)
    thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL).rowcount)
    time.sleep(0.5)
    assert thread.is_alive(), "the statement must wait for a human"
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)], "nothing reaches the database while held"
    assert _decide(approver, "approve") == "approved"
    thread.join(20)
    assert "error" not in result, result
    assert result["value"] > 0
    # a second identical statement within valid_for runs without a new request
    assert conn.execute(UPDATE_ALL).rowcount == result["value"]
    conn.close()
    assert approver.execute("SELECT count(*), min(status), min(decided_by) FROM audit.approvals") \
        == [(1, "approved", "alice")]
    rows = wait_for(lambda: len(approver.execute(
        "SELECT 1 FROM audit.statements WHERE approval_id IS NOT NULL")) >= 3 and approver.execute(
        "SELECT decision FROM audit.statements WHERE approval_id IS NOT NULL ORDER BY id"))
    assert [r[0] for r in rows] == ["held", "approved", "approved"]


def test_hold_deny(approver: Database, held_proxy: RunningProxy) -> None:
    with held_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL))
        assert _decide(approver, "deny", reason="not during audit week") == "denied"
        thread.join(20)
        error = result.get("error")
        assert isinstance(error, psycopg.errors.InsufficientPrivilege)
        request_id = approver.execute("SELECT max(id) FROM audit.approvals")[0][0]
        assert f"approval request {request_id} was denied" in str(error)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)]
    query = "SELECT decision FROM audit.statements WHERE approval_id IS NOT NULL ORDER BY id"
    decisions = wait_for(lambda: len(approver.execute(query)) >= 2 and approver.execute(query))
    assert [r[0] for r in decisions] == ["held", "denied"]


def test_hold_expires(approver: Database, tmp_path: Path) -> None:
    with run_proxy(_policy(approver, hold=2), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="was expired"):
            conn.execute(UPDATE_ALL)
        assert 1.5 < time.monotonic() - started < 15
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert approver.execute("SELECT status FROM audit.approvals") == [("expired",)]
    # too late: an expired request cannot be approved
    with approver.connect("alice") as conn, pytest.raises(psycopg.Error, match="expired"):
        conn.execute("SELECT audit.approve(%s, 'late')",
                     (approver.execute("SELECT id FROM audit.approvals")[0][0],))


def test_approval_expires_after_valid_for(approver: Database, tmp_path: Path) -> None:
    with run_proxy(_policy(approver, valid_for=2), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL))
        _decide(approver, "approve")
        thread.join(20)
        assert "error" not in result
        time.sleep(2.5)
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL))
        assert _decide(approver, "deny") == "denied"  # a new request was needed
        thread.join(20)
    assert approver.execute("SELECT status FROM audit.approvals ORDER BY id") == [
        ("approved",), ("denied",)]


def test_self_approval_and_non_approvers_are_refused(approver: Database,
                                                     held_proxy: RunningProxy) -> None:
    # the agent is named after a human who is an approver: it still cannot approve itself
    with held_proxy.connect("alice", "billing", clinic_id=1) as conn:
        thread, _ = _in_thread(lambda: conn.execute(UPDATE_ALL))
        request = wait_for(lambda: _pending(approver))
        with approver.connect("alice") as human, pytest.raises(psycopg.Error, match="own"):
            human.execute("SELECT audit.approve(%s, 'mine')", (request[0][0],))
        with approver.connect("mallory") as human, pytest.raises(psycopg.Error):
            human.execute("SELECT audit.approve(%s, 'not an approver')", (request[0][0],))
        with held_proxy.connect("agent-9", "billing", clinic_id=1) as other, \
                pytest.raises(psycopg.Error):
            other.execute("SELECT audit.approve(%s, 'agents never approve')", (request[0][0],))
        thread.join(60)
    assert approver.execute("SELECT status FROM audit.approvals") != [("approved",)]


def test_client_disconnect_while_held_cancels_and_runs_nothing(
    approver: Database, held_proxy: RunningProxy
) -> None:
    # the agent is a separate process (psql) that dies while its statement is held
    env = {**os.environ, "PGPASSWORD": held_proxy.token("agent-7", "billing", clinic_id=1)}
    agent = subprocess.Popen(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(held_proxy.port), "-U", "agent-7",
         "-d", held_proxy.database, "-c", UPDATE_ALL],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _pending(approver)), "the statement was not held"
    finally:
        agent.kill()
        agent.wait(10)
    status = wait_for(lambda: approver.execute(
        "SELECT status FROM audit.approvals WHERE status <> 'pending'"))
    assert status == [("cancelled",)]
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)]


def test_client_reset_while_held_cancels_and_runs_nothing(
    approver: Database, held_proxy: RunningProxy
) -> None:
    """A client that dies with the proxy's NOTICE unread resets the connection (RST, not
    FIN): the proxy's read fails instead of ending, and the request must still be cancelled."""
    client = RawClient(held_proxy, "billing", "reset-while-held", clinic_id=1)
    client.send(Query(UPDATE_ALL).encode())
    assert wait_for(lambda: _pending(approver)), "the statement was not held"
    time.sleep(0.2)  # the NOTICE is in our receive buffer, unread
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # unread data + linger 0: the kernel sends RST
    status = wait_for(lambda: approver.execute(
        "SELECT status FROM audit.approvals WHERE status <> 'pending'"))
    assert status == [("cancelled",)]
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)]


def test_pipeline_waits_behind_a_held_execute(approver: Database,
                                              held_proxy: RunningProxy) -> None:
    with held_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        def pipeline() -> list[Any]:
            with conn.pipeline():
                first = conn.execute("SELECT %s::int", (1,))
                update = conn.execute("UPDATE claims SET status = %s", ("reviewed",))
                last = conn.execute("SELECT %s::int", (3,))
            return [first.fetchone(), update.rowcount, last.fetchone()]

        thread, result = _in_thread(pipeline)
        assert _decide(approver, "approve") == "approved"
        thread.join(20)
        assert "error" not in result, result
        first, count, last = result["value"]
        assert first == (1,) and count > 0 and last == (3,)
        params = approver.execute("SELECT parameters FROM audit.approvals")[0][0]
        assert params == ["reviewed"]


def test_inside_a_transaction_hold_or_refuse_per_policy(approver: Database,
                                                        held_proxy: RunningProxy) -> None:
    # research refuses to hold inside a transaction (in_transaction: refuse); DDL needs approval
    with held_proxy.connect("r-1", "research") as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="inside an open"):
            conn.execute("CREATE TEMP TABLE scratch (id int)")
        conn.execute("ROLLBACK")
    assert _pending(approver) == []
    # billing holds inside a transaction; the transaction stays open while held
    with held_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("BEGIN")
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL).rowcount)
        _decide(approver, "approve")
        thread.join(20)
        assert result.get("value", 0) > 0
        conn.execute("ROLLBACK")
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)]


def test_two_proxies_share_requests_and_decisions(approver: Database, tmp_path: Path) -> None:
    policy = _policy(approver)
    with run_proxy(policy, approver.dsn_as("policyc_proxy"), tmp_path / "a",
                   proxy_name="proxy-a") as proxy_a, \
            run_proxy(policy, approver.dsn_as("policyc_proxy"), tmp_path / "b",
                      proxy_name="proxy-b") as proxy_b:
        on_a = proxy_a.connect("agent-7", "billing", clinic_id=1)
        on_b = proxy_b.connect("agent-8", "billing", clinic_id=1)
        thread_a, result_a = _in_thread(lambda: on_a.execute(UPDATE_ALL).rowcount)
        thread_b, result_b = _in_thread(
            lambda: on_b.execute("UPDATE claims SET status = 'paid'").rowcount)
        requests = wait_for(lambda: len(_pending(approver)) == 2 and _pending(approver))
        by_agent = {r[1]: r[0] for r in requests}
        with approver.connect("alice") as human:
            human.execute("SELECT audit.approve(%s, 'ok')", (by_agent["agent-7"],))
        thread_a.join(20)
        assert result_a.get("value", 0) > 0
        assert thread_b.is_alive(), "proxy B must not release on A's decision"
        with approver.connect("alice") as human:
            human.execute("SELECT audit.deny(%s, 'no')", (by_agent["agent-8"],))
        thread_b.join(20)
        assert isinstance(result_b.get("error"), psycopg.errors.InsufficientPrivilege)
        on_a.close()
        on_b.close()
    assert dict(approver.execute("SELECT agent, proxy FROM audit.approvals")) == {
        "agent-7": "proxy-a", "agent-8": "proxy-b"}


def _row_limited(db: Database, rows_over: int) -> Policy:
    policy = _policy(db)
    billing = policy.group("billing")
    limited = dataclasses.replace(
        billing, approval=dataclasses.replace(billing.approval, rows_over=rows_over))
    return dataclasses.replace(
        policy, groups=tuple(limited if g.name == "billing" else g for g in policy.groups))


def test_rows_over_estimated_with_explain_holds_before_running(
    approver: Database, tmp_path: Path
) -> None:
    with run_proxy(_row_limited(approver, 20), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        assert len(conn.execute("SELECT id FROM patients WHERE id < 10").fetchall()) <= 20
        thread, result = _in_thread(lambda: conn.execute("SELECT id, ssn FROM patients").fetchall())
        request = wait_for(lambda: _pending(approver))
        estimated = approver.execute("SELECT estimated_rows, hold_reason FROM audit.approvals")
        assert estimated[0][0] > 20 and "estimated" in estimated[0][1]
        _decide(approver, "approve")
        thread.join(20)
        assert "error" not in result and len(result["value"]) > 20
        assert request


def test_rows_over_enforced_on_actual_rows(approver: Database, tmp_path: Path) -> None:
    # extended protocol with a parameter: no estimate, the limit is enforced on the stream
    with run_proxy(_row_limited(approver, 20), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        query = "SELECT id, ssn FROM patients WHERE id > %s"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="more than 20 rows"):
            conn.execute(query, (0,)).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        request = wait_for(lambda: _pending(approver))
        assert request and request[0][1] == "agent-7"
        _decide(approver, "approve")
        time.sleep(0.5)  # the decision reaches the proxy by NOTIFY
        assert len(conn.execute(query, (0,)).fetchall()) > 20
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # other parameters: not covered
            conn.execute(query, (1,)).fetchall()
    query = "SELECT rows, sqlstate FROM audit.statements WHERE parameters = '[\"0\"]' ORDER BY id"
    sent = wait_for(lambda: len(approver.execute(query)) >= 2 and approver.execute(query))
    assert sent[0][1] == "42501" and sent[-1][1] is None


def test_execute_of_a_prepared_read_is_row_limited_and_shows_its_phi(
        approver: Database, tmp_path: Path) -> None:
    """The attack: PREPARE a read, then EXECUTE it, to stream past the group's row limit and
    leave records that show no PHI.  EXECUTE's rows count, no approval of "EXECUTE name" can
    lift the limit (the name may be prepared again as anything), and the record carries the
    tables and PHI columns of what was prepared, through SQL or the protocol."""
    with run_proxy(_row_limited(approver, 20), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("PREPARE everyone AS SELECT id, ssn FROM patients")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="more than 20 rows"):
            conn.execute("EXECUTE everyone").fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert _pending(approver) == []  # no request that could never mean anything
        conn.execute("PREPARE few AS SELECT id, full_name FROM patients WHERE id < 5")
        assert len(conn.execute("EXECUTE few").fetchall()) < 5
        conn.execute("DEALLOCATE few")
        conn.execute("PREPARE few AS SELECT id FROM claims WHERE id < 3")
        conn.execute("EXECUTE few").fetchall()
        # a protocol-level statement run by SQL EXECUTE (the namespaces are one)
        conn.execute("SELECT id, ssn FROM patients WHERE id = %s", (1,), prepare=True)
        name = "_pg3_0"  # psycopg names its prepared statements _pg3_0, _pg3_1 ...
        assert [r[0] for r in conn.execute(f'EXECUTE "{name}"(1)').fetchall()] == [1]
    rows = wait_for(lambda: (r := approver.execute(
        "SELECT statement, tables, phi_columns, sqlstate FROM audit.statements "
        "WHERE kind = 'execute' ORDER BY seq")) and len(r) >= 4 and r)
    by_text = {r[0]: r[1:] for r in rows}
    assert by_text["EXECUTE everyone"] == (["public.patients"], ["public.patients.ssn"],
                                           "42501")
    first, second = [r[1:] for r in rows if r[0] == "EXECUTE few"]
    assert first[:2] == (["public.patients"], ["public.patients.full_name"])
    assert second[:2] == (["public.claims"], [])  # forgotten at DEALLOCATE
    assert by_text[f'EXECUTE "{name}"(1)'][:2] == (["public.patients"],
                                                   ["public.patients.ssn"])


def test_returning_rows_of_a_write_count_against_the_row_limit(
        approver: Database, tmp_path: Path) -> None:
    """The attack: read past the limit through a no-op UPDATE ... RETURNING.  The write runs
    (its effects stand, as for any statement that ran), its rows past the limit are withheld."""
    update = "UPDATE claims SET status = status WHERE id > 0 RETURNING id, amount"
    with run_proxy(_row_limited(approver, 20), approver.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        assert len(conn.execute("UPDATE claims SET status = status WHERE id < 3 "
                                "RETURNING id").fetchall()) <= 2
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="more than 20 rows"):
            conn.execute(update).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert wait_for(lambda: _pending(approver))
    rows = wait_for(lambda: approver.execute(
        "SELECT rows, sqlstate FROM audit.statements WHERE statement = %s", (update,)))
    assert rows and rows[0][1] == "42501" and rows[0][0] > 20


def test_a_forged_notification_releases_nothing(approver: Database,
                                                held_proxy: RunningProxy) -> None:
    """Anyone can NOTIFY: the proxy reads the decision back from audit.approvals."""
    with held_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        thread, result = _in_thread(lambda: conn.execute(UPDATE_ALL))
        request = wait_for(lambda: _pending(approver))
        payload = f'{{"id": {request[0][0]}, "status": "approved"}}'
        approver.execute("SELECT pg_notify('policyc_approvals', %s)", (payload,))
        with held_proxy.connect("agent-8", "billing", clinic_id=1) as other, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            other.execute("SELECT pg_notify('policyc_approvals', %s)", (payload,))
        time.sleep(1.0)
        assert thread.is_alive(), "a forged notification must not release the statement"
        assert _decide(approver, "deny") == "denied"
        thread.join(20)
        assert isinstance(result.get("error"), psycopg.errors.InsufficientPrivilege)
    assert approver.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == \
        [(0,)]


def test_psql_hold_approve_run(approver: Database, held_proxy: RunningProxy) -> None:
    env = {**os.environ, "PGPASSWORD": held_proxy.token("agent-7", "billing", clinic_id=1)}
    agent = subprocess.Popen(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(held_proxy.port), "-U", "agent-7",
         "-d", held_proxy.database, "-c", UPDATE_ALL],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _decide(approver, "approve") == "approved"
        out, err = agent.communicate(timeout=30)
    finally:
        agent.kill()
    assert out.startswith("UPDATE "), (out, err)
    assert "approval request" in err  # the NOTICE psql shows while it waits
    decisions = wait_for(lambda: len(approver.execute(
        "SELECT 1 FROM audit.statements WHERE approval_id IS NOT NULL")) >= 2 and approver.execute(
        "SELECT decision FROM audit.statements WHERE approval_id IS NOT NULL ORDER BY id"))
    assert [r[0] for r in decisions] == ["held", "approved"]
