"""Just-in-time approval, database side: requests, decisions, the rules that guard them, expiry,
notifications and the grants apply manages — tried for real, connected as each role."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import Database, apply_at_runtime, clinic_policy, register
from policyc import RUNTIME_VERSION
from policyc.apply import apply_policy
from policyc.errors import CatalogError
from policyc.plan import make_plan
from policyc.policy.model import Approvals, ProxySettings

SESSION = "00000000-0000-0000-0000-000000000007"
GROUPS = ("billing", "research", "clinician")


def request(db: Database, agent: str = "agent-7", *, human: str | None = None,
            parameters: Any = None, fingerprint: str = "fp-1", hold: str = "2 minutes",
            valid_for: str = "1 hour") -> int:
    """A held statement as the proxy records it (through the service role)."""
    with db.connect("policyc_proxy") as conn:
        row = conn.execute(
            "SELECT audit.request_approval(%s, %s, %s, 'billing', 'COPY patients TO STDOUT', "
            "%s, %s, '{public.patients}', '{public.patients.ssn}', 'copy_out', 300, "
            "%s::interval, %s::interval, 'proxy-a')",
            (SESSION, agent, human, Jsonb(parameters), fingerprint, hold, valid_for),
        ).fetchone()
    assert row is not None
    return int(row[0])


def decide(db: Database, role: str, verb: str, request_id: int, reason: str = "ok") -> str:
    with db.connect(role) as conn:
        row = conn.execute(f"SELECT audit.{verb}(%s, %s)", (request_id, reason)).fetchone()
    assert row is not None
    return str(row[0])


def refused(db: Database, role: str, verb: str, request_id: int,
            reason: str = "ok") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        decide(db, role, verb, request_id, reason)
    return info.value


def find(db: Database, agent: str = "agent-7", fingerprint: str = "fp-1",
         parameters: Any = None) -> int | None:
    with db.connect("policyc_proxy") as conn:
        row = conn.execute("SELECT audit.find_approval(%s, %s, %s)",
                           (agent, fingerprint, Jsonb(parameters))).fetchone()
    assert row is not None
    return None if row[0] is None else int(row[0])


def row(db: Database, request_id: int) -> dict[str, Any]:
    with db.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM audit.approvals WHERE id = %s", (request_id,))
        found = cur.fetchone()
    assert found is not None
    return found


@pytest.fixture
def approvals_db(applied_clinic: Database) -> Database:
    """The applied clinic with humans: alice approves (security_analysts), bob does not."""
    applied_clinic.execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; GRANT security_analysts TO alice")
    return applied_clinic


def test_apply_installs_the_approval_runtime_and_the_approver_role(
        approvals_db: Database) -> None:
    db = approvals_db
    assert db.execute("SELECT semantic->>'version' FROM policyc.applied_objects "
                      "WHERE object_key = 'runtime'") == [(RUNTIME_VERSION,)]
    assert db.execute("SELECT role_name::text FROM policyc.approver_roles") == [
        ("security_analysts",)]
    assert db.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'security_analysts'") == [
        (False,)]
    privileges = db.execute(
        "SELECT r, f, has_function_privilege(r, f, 'EXECUTE') FROM "
        "unnest(ARRAY['security_analysts', 'alice', 'bob', 'policyc_proxy', 'policyc_auditor', "
        "'billing', 'research', 'clinician']) r, unnest(ARRAY["
        "'audit.approve(bigint,text)', 'audit.deny(bigint,text)', "
        "'audit.request_approval(uuid,text,text,text,text,jsonb,text,text[],text[],text,bigint,"
        "interval,interval,text)', 'audit.find_approval(text,text,jsonb)', "
        "'audit.close_request(bigint,text,text)', 'audit._decide(bigint,text,text)']) f")
    granted = {(r, f.split("(")[0]) for r, f, ok in privileges if ok}
    assert granted == {
        ("security_analysts", "audit.approve"), ("security_analysts", "audit.deny"),
        ("alice", "audit.approve"), ("alice", "audit.deny"),
        ("policyc_proxy", "audit.request_approval"), ("policyc_proxy", "audit.find_approval"),
        ("policyc_proxy", "audit.close_request"),
    }
    with db.connect() as conn:
        assert make_plan(conn, clinic_policy(db.name)).empty


def test_approve_flow_records_the_decision_and_opens_the_validity_window(
        approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db, parameters=["42"])
    pending = row(db, request_id)
    assert (pending["status"], pending["proxy"], pending["hold_reason"]) == (
        "pending", "proxy-a", "copy_out")
    assert pending["expires_at"] > pending["requested_at"]
    assert decide(db, "alice", "approve", request_id, "export for the quarterly audit") == (
        "approved")
    decided = row(db, request_id)
    assert (decided["status"], decided["decided_by"], decided["decision_reason"]) == (
        "approved", "alice", "export for the quarterly audit")
    window = decided["valid_until"] - decided["decided_at"]
    assert window == decided["valid_for"] and window.total_seconds() == 3600
    assert find(db, parameters=["42"]) == request_id


def test_deny_flow_leaves_nothing_to_find(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db)
    assert decide(db, "alice", "deny", request_id, "too broad") == "denied"
    decided = row(db, request_id)
    assert (decided["status"], decided["decided_by"], decided["valid_until"]) == (
        "denied", "alice", None)
    assert find(db) is None


def test_decisions_are_final(approvals_db: Database) -> None:
    db = approvals_db
    db.execute("CREATE ROLE carol LOGIN; GRANT security_analysts TO carol")
    request_id = request(db)
    assert decide(db, "alice", "approve", request_id) == "approved"
    for role, verb in (("alice", "approve"), ("carol", "deny"), ("carol", "approve")):
        error = refused(db, role, verb, request_id)
        assert error.sqlstate == "P0001"
        assert f"request {request_id} is already approved" in str(error)
    # not even the superuser can rewrite a decision by hand
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is final"):
        db.execute("UPDATE audit.approvals SET status = 'denied', decided_by = 'x' "
                   "WHERE id = %s", (request_id,))
    assert row(db, request_id)["decided_by"] == "alice"


def test_reason_is_required(approvals_db: Database) -> None:
    request_id = request(approvals_db)
    for reason in ("", "   "):
        error = refused(approvals_db, "alice", "approve", request_id, reason)
        assert error.sqlstate == "22023" and "a reason is required" in str(error)
    assert row(approvals_db, request_id)["status"] == "pending"


def test_a_requester_cannot_decide_its_own_request(approvals_db: Database) -> None:
    db = approvals_db
    # a human whose role is named like the requesting agent, and a member of the approvers
    db.execute('CREATE ROLE "agent-7" LOGIN; GRANT security_analysts TO "agent-7"')
    own = request(db, "agent-7")
    error = refused(db, "agent-7", "approve", own)
    assert error.sqlstate == "42501" and "cannot decide its own request" in str(error)
    # the human behind the agent
    behind = request(db, "agent-9", human="alice")
    error = refused(db, "alice", "approve", behind)
    assert error.sqlstate == "42501" and f"request {behind}" in str(error)
    # alice's own session proxied as agent-7 (a proxied session knows its agent)
    with db.connect("alice") as conn:
        register(db, conn, "agent-7", "alice", {})
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="agent-7 cannot decide its own request"):
            conn.execute("SELECT audit.approve(%s, 'mine')", (own,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT audit.deny(%s, 'mine')", (own,))
    assert row(db, own)["status"] == row(db, behind)["status"] == "pending"
    # anyone else in the approver role may decide them
    assert decide(db, "alice", "approve", own) == "approved"


def test_only_members_of_an_approver_role_decide(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db)
    error = refused(db, "bob", "approve", request_id)
    assert error.sqlstate == "42501"  # no EXECUTE at all
    # EXECUTE granted by hand is not enough: membership is checked at decision time
    db.execute("GRANT USAGE ON SCHEMA audit TO bob; "
               "GRANT EXECUTE ON FUNCTION audit.approve(bigint, text) TO bob")
    error = refused(db, "bob", "approve", request_id)
    assert error.sqlstate == "42501" and "bob is not a member of an approver role" in str(error)
    # a member who left the role can no longer decide
    db.execute("REVOKE security_analysts FROM alice")
    assert refused(db, "alice", "deny", request_id).sqlstate == "42501"
    assert row(db, request_id)["status"] == "pending"
    # and a hand grant is drift that apply takes back
    with db.connect() as conn:
        plan = make_plan(conn, clinic_policy(db.name))
        assert [(c.key, c.action) for c in plan.changes] == [("approvers", "drift")]
        apply_policy(conn, clinic_policy(db.name))
    assert db.execute("SELECT has_function_privilege('bob', 'audit.approve(bigint,text)', "
                      "'EXECUTE')") == [(False,)]


def test_an_expired_request_cannot_be_decided(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db, hold="50 milliseconds")
    time.sleep(0.1)
    error = refused(db, "alice", "approve", request_id)
    assert error.sqlstate == "P0001" and f"request {request_id} expired at" in str(error)
    assert db.execute("SELECT count(*) FROM audit.pending_approvals WHERE id = %s",
                      (request_id,)) == [(0,)]
    with db.connect("policyc_proxy") as conn:
        assert conn.execute("SELECT audit.close_request(%s, 'expired', 'no decision')",
                            (request_id,)).fetchone() == ("expired",)
    assert row(db, request_id)["decided_by"] == "policyc-proxy"
    error = refused(db, "alice", "approve", request_id)
    assert f"request {request_id} is already expired" in str(error)


def test_close_request_loses_to_a_decision_that_came_first(approvals_db: Database) -> None:
    db = approvals_db
    decided = request(db)
    assert decide(db, "alice", "approve", decided) == "approved"
    waiting = request(db)
    with db.connect("policyc_proxy") as conn:
        close = "SELECT audit.close_request(%s, %s, 'client went away')"
        assert conn.execute(close, (decided, "cancelled")).fetchone() == ("approved",)
        assert conn.execute(close, (waiting, "cancelled")).fetchone() == ("cancelled",)
        assert conn.execute(close, (waiting, "expired")).fetchone() == ("cancelled",)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="expired or cancelled"):
            conn.execute(close, (waiting, "approved"))
    assert row(db, decided)["decided_by"] == "alice"
    closed = row(db, waiting)
    assert (closed["status"], closed["decided_by"], closed["decision_reason"]) == (
        "cancelled", "policyc-proxy", "client went away")
    assert "already cancelled" in str(refused(db, "alice", "approve", waiting))


def test_find_approval_is_scoped_and_expires(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db, parameters={"1": "5"})
    assert find(db, parameters={"1": "5"}) is None  # pending is not approved
    decide(db, "alice", "approve", request_id)
    assert find(db, parameters={"1": "5"}) == request_id
    assert find(db, parameters={"1": "6"}) is None
    assert find(db, parameters=None) is None
    assert find(db, agent="agent-8", parameters={"1": "5"}) is None
    assert find(db, fingerprint="fp-2", parameters={"1": "5"}) is None
    # no parameters (simple protocol): SQL NULL and JSON null are the same thing
    plain = request(db, fingerprint="fp-3")
    decide(db, "alice", "approve", plain)
    assert find(db, fingerprint="fp-3") == plain
    # a newer approval is preferred; a short window closes
    short = request(db, parameters={"1": "5"}, valid_for="200 milliseconds")
    decide(db, "alice", "approve", short)
    assert find(db, parameters={"1": "5"}) == short
    time.sleep(0.3)
    assert find(db, parameters={"1": "5"}) == request_id
    brief = request(db, fingerprint="fp-4", valid_for="100 milliseconds")
    decide(db, "alice", "approve", brief)
    time.sleep(0.2)
    assert find(db, fingerprint="fp-4") is None


def test_requests_and_decisions_are_notified(approvals_db: Database) -> None:
    db = approvals_db
    with db.connect("policyc_proxy") as listener:
        listener.execute("LISTEN policyc_approval_requests")
        listener.execute("LISTEN policyc_approvals")
        request_id = request(db)
        approved = request(db, fingerprint="fp-2")
        decide(db, "alice", "approve", approved)
        decide(db, "alice", "deny", request_id)
        with db.connect("policyc_proxy") as proxy:
            proxy.execute("SELECT audit.close_request(%s, 'expired', 'late')", (approved,))
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=4)]
    assert notes[:2] == [("policyc_approval_requests", str(request_id)),
                         ("policyc_approval_requests", str(approved))]
    assert [(c, json.loads(p)) for c, p in notes[2:]] == [
        ("policyc_approvals", {"id": approved, "status": "approved"}),
        ("policyc_approvals", {"id": request_id, "status": "denied"}),
    ]  # closing an already-decided request announces nothing


def test_refused_decision_notifies_nothing(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db)
    with db.connect() as listener:
        listener.execute("LISTEN policyc_approvals")
        refused(db, "bob", "approve", request_id)
        refused(db, "alice", "approve", request_id, "")
        assert list(listener.notifies(timeout=0.5)) == []


def test_group_roles_cannot_request_decide_or_read_approvals(approvals_db: Database) -> None:
    db = approvals_db
    request_id = request(db)
    for group in GROUPS:
        with db.connect(group) as conn:
            register(db, conn, "agent-x", group, {"clinic_id": 1})
            for sql in (
                f"SELECT audit.approve({request_id}, 'me')",
                f"SELECT audit.deny({request_id}, 'me')",
                f"SELECT audit._decide({request_id}, 'approved', 'me')",
                f"SELECT audit.close_request({request_id}, 'cancelled', 'me')",
                "SELECT audit.find_approval('agent-7', 'fp-1', NULL)",
                "SELECT audit.request_approval(NULL, 'a', NULL, 'g', 's', NULL, 'f', NULL, "
                "NULL, 'r', NULL, '1 hour', '1 hour', NULL)",
                "SELECT * FROM audit.pending_approvals",
                "SELECT * FROM audit.approvals",
                "INSERT INTO policyc.approver_roles VALUES ('billing')",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
    assert row(db, request_id)["status"] == "pending"


def test_approvers_read_pending_requests_and_the_history(approvals_db: Database) -> None:
    db = approvals_db
    waiting = request(db)
    done = request(db, fingerprint="fp-2")
    decide(db, "alice", "deny", done)
    with db.connect("alice") as conn:
        rows = conn.execute("SELECT id, agent, age >= interval '0', time_left > interval '1 minute'"
                            " FROM audit.pending_approvals").fetchall()
        assert rows == [(waiting, "agent-7", True, True)]
        assert conn.execute("SELECT count(*) FROM audit.approvals").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM audit.statements")
    with db.connect() as conn:
        conn.execute("SET ROLE policyc_auditor")
        assert conn.execute("SELECT id FROM audit.pending_approvals").fetchall() == [(waiting,)]
    with db.connect("bob") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM audit.pending_approvals")


def test_removing_approvers_revokes_and_an_existing_role_is_adopted(
        clinic_db: Database) -> None:
    db = clinic_db
    db.execute("CREATE ROLE security_analysts LOGIN")  # a role the DBA already had
    policy = clinic_policy(db.name)
    with db.connect() as conn:
        apply_policy(conn, policy)
    assert db.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'security_analysts'") == [
        (True,)]
    assert db.execute("SELECT has_function_privilege('security_analysts', "
                      "'audit.approve(bigint,text)', 'EXECUTE')") == [(True,)]
    without = dataclasses.replace(policy, approvals=Approvals())
    with db.connect() as conn:
        plan = make_plan(conn, without)
        assert [(c.key, c.action) for c in plan.changes] == [("approvers", "drop")]
        apply_policy(conn, without)
        assert make_plan(conn, without).empty
    assert db.execute("SELECT count(*) FROM policyc.approver_roles") == [(0,)]
    assert db.execute(
        "SELECT has_function_privilege('security_analysts', 'audit.approve(bigint,text)', "
        "'EXECUTE'), has_table_privilege('security_analysts', 'audit.approvals', 'SELECT'), "
        "has_schema_privilege('security_analysts', 'audit', 'USAGE')") == [(False, False, False)]
    renamed = dataclasses.replace(policy, approvals=Approvals(approvers=("privacy_office",)))
    with db.connect() as conn:
        plan = make_plan(conn, renamed)
        assert [h for c in plan.changes for h in c.hazards] == [
            "members of privacy_office may approve held statements"]
        apply_policy(conn, renamed)
    assert db.execute("SELECT role_name::text FROM policyc.approver_roles") == [
        ("privacy_office",)]


def test_runtime_roles_and_group_roles_cannot_be_approvers(clinic_db: Database) -> None:
    policy = clinic_policy(clinic_db.name)
    for role in ("policyc_proxy", "policyc_owner"):
        bad = dataclasses.replace(policy, approvals=Approvals(approvers=(role,)))
        with clinic_db.connect() as conn, pytest.raises(CatalogError, match="runtime role"):
            make_plan(conn, bad)
    custom = dataclasses.replace(policy, proxy=ProxySettings(service_role="gateway"),
                                 approvals=Approvals(approvers=("gateway",)))
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="runtime role"):
        make_plan(conn, custom)
    clinic_db.execute("CREATE ROLE ops NOLOGIN; COMMENT ON ROLE ops IS "
                      "'policyc group ops of database elsewhere'")
    other_group = dataclasses.replace(policy, approvals=Approvals(approvers=("ops",)))
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="agent group role"):
        make_plan(conn, other_group)


def test_upgrade_from_runtime_0_1_0(clinic_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database applied with runtime 0.1.0 is upgraded in place: requests made before keep
    their rows and gain the new columns' defaults."""
    policy = clinic_policy(clinic_db.name)
    apply_at_runtime(clinic_db, dataclasses.replace(policy, approvals=Approvals()), "0.1.0",
                     monkeypatch)
    assert clinic_db.execute("SELECT to_regprocedure('audit.approve(bigint,text)') IS NULL, "
                             "semantic->>'version' FROM policyc.applied_objects "
                             "WHERE object_key = 'runtime'") == [(True, "0.1.0")]
    clinic_db.execute(
        "INSERT INTO audit.approvals (agent, group_name, statement, fingerprint, hold_reason, "
        "expires_at) VALUES ('agent-1', 'billing', 'TRUNCATE claims', 'fp', 'truncate', now())")
    with clinic_db.connect() as conn:
        plan = make_plan(conn, policy)
        assert [c.note for c in plan.changes if c.key == "runtime"] == [
            f"runtime 0.1.0 -> {RUNTIME_VERSION} (via script)"]
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty
    assert clinic_db.execute(
        "SELECT agent, valid_for, human, status FROM audit.approvals") == [
        ("agent-1", timedelta(hours=1), None, "pending")]
    assert clinic_db.execute(
        "SELECT to_regprocedure('audit.approve(bigint,text)') IS NOT NULL") == [(True,)]
