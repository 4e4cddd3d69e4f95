"""Runtime 0.7.0 (issue #15, item 2): every session records the policy version it ran under.

* ``audit.sessions.policy_hash`` is part of the session's hashed content when it is set, and
  leaves the content exactly as 0.6.0 rendered it when it is NULL: an upgrade keeps every
  record verifiable, and a policy_hash set, changed or cleared by hand is caught;
* the proxy writes it (the hex sha256 of the policy file it loaded) for accepted and refused
  logins, against 0.6.0 it records sessions as before, and after ``policyc apply`` upgraded
  the runtime a reload makes it write the hash.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, apply_at_runtime
from policyc import RUNTIME_VERSION, audittrail
from policyc.apply import apply_policy
from policyc.cli import main
from policyc.policy import load_policy
from proxyharness import run_proxy, wait_for, write_clinic_policy
from test_audit_chain import record_session, tamper, write_rows

pytestmark = pytest.mark.db


def problems(db: Database) -> list[audittrail.Problem]:
    with db.connect() as conn:
        return audittrail.verify(conn)


def verify_cli(db: Database) -> tuple[int, str]:
    out = io.StringIO()
    return main(["audit", "verify", "--dsn", db.dsn], out), out.getvalue()


def session_of(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT policyc.session_id()").fetchone()
    assert row is not None
    return str(row[0])


def hash_of(db: Database, session_id: str) -> Any:
    return wait_for(lambda: db.execute(
        "SELECT policy_hash FROM audit.sessions WHERE session_id = %s", (session_id,)))


def test_upgrade_from_0_6_0_keeps_every_record_and_new_sessions_carry_the_hash(
        clinic_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_clinic_policy(tmp_path / "policy.yaml", clinic_db.name)
    policy = load_policy(path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.sha256 == expected
    apply_at_runtime(clinic_db, policy, "0.6.0", monkeypatch)
    closed = record_session(clinic_db, 3)
    write_rows(clinic_db, 3)
    assert clinic_db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    left_open = record_session(clinic_db, 2, close=False)  # waits for a seal across the upgrade

    with run_proxy(policy, clinic_db.dsn_as("policyc_proxy"), tmp_path / "spool") as proxy:
        # against 0.6.0 the proxy records sessions as it always did (no policy_hash column)
        with proxy.connect("agent-up1", "billing", clinic_id=1) as conn:
            before = session_of(conn)
            conn.execute("SELECT count(*) FROM claims")
        assert wait_for(lambda: clinic_db.execute(
            "SELECT outcome FROM audit.sessions WHERE session_id = %s", (before,)) == [
            ("closed",)])
        hashes = dict(clinic_db.execute("SELECT session_id::text, row_hash FROM audit.sessions"))

        with clinic_db.connect() as admin:
            apply_policy(admin, policy)
        assert clinic_db.execute(
            "SELECT semantic->>'version' FROM policyc.applied_objects "
            "WHERE object_key = 'runtime'") == [(RUNTIME_VERSION,)]
        # nothing stored changed: the same hashes, NULL policy versions, one verifiable trail
        assert dict(clinic_db.execute(
            "SELECT session_id::text, row_hash FROM audit.sessions")) == hashes
        assert clinic_db.execute(
            "SELECT count(*) FROM audit.sessions WHERE policy_hash IS NOT NULL") == [(0,)]
        assert verify_cli(clinic_db)[0] == 0

        # the proxy that ran before the upgrade learns of it on a reload (apply, then SIGHUP)
        assert proxy.call(proxy.server.reload())
        assert proxy.server.policy_hash == expected
        with proxy.connect("agent-up2", "billing", clinic_id=1) as conn:
            after = session_of(conn)
            conn.execute("SELECT count(*) FROM claims")
        assert hash_of(clinic_db, after) == [(expected,)]
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(proxy.dsn("agent-up3", "no-such-group"))
        assert wait_for(lambda: clinic_db.execute(
            "SELECT reason, policy_hash FROM audit.sessions WHERE agent = 'agent-up3'")) == [
            ("no_matching_group", expected)]
        assert wait_for(lambda: clinic_db.execute(
            "SELECT outcome FROM audit.sessions WHERE session_id = %s", (after,)) == [
            ("closed",)])

    clinic_db.execute(
        "INSERT INTO audit.statements (record_id, session_id, agent, group_name, statement, "
        "decision, seq) VALUES (gen_random_uuid(), %s, 'agent-a', 'research', 'SELECT 3', "
        "'allowed', 3)", (left_open,))
    assert clinic_db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    assert clinic_db.execute("SELECT count(*) FROM audit.seal_queue") == [(0,)]
    code, out = verify_cli(clinic_db)
    assert code == 0, out
    assert closed and problems(clinic_db) == []


@pytest.mark.parametrize("edit", [
    "UPDATE audit.sessions SET policy_hash = repeat('0', 64) WHERE policy_hash IS NOT NULL",
    "UPDATE audit.sessions SET policy_hash = NULL WHERE policy_hash IS NOT NULL",
    "UPDATE audit.sessions SET policy_hash = repeat('a', 64) WHERE policy_hash IS NULL",
])
def test_an_edited_policy_version_is_caught(applied_clinic: Database, edit: str) -> None:
    with applied_clinic.connect() as conn:
        conn.execute(
            "INSERT INTO audit.sessions (session_id, agent, group_name, outcome, policy_hash) "
            "VALUES (gen_random_uuid(), 'agent-a', 'research', 'open', %s)",
            (hashlib.sha256(b"policy").hexdigest(),))
    record_session(applied_clinic, 1)  # and one without
    assert problems(applied_clinic) == []
    tamper(applied_clinic, edit)
    found = problems(applied_clinic)
    assert [(p.problem, p.table) for p in found] == [("altered", "sessions")], found
    code, out = verify_cli(applied_clinic)
    assert code == 1 and "audit.sessions" in out


def test_the_policy_version_is_final_and_hex(applied_clinic: Database) -> None:
    """Closing a session cannot change it (only the close columns may change), and only a
    sha256 in hex is taken."""
    sid = record_session(applied_clinic, 0, close=False)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only"):
        applied_clinic.execute(
            "UPDATE audit.sessions SET ended_at = now(), outcome = 'closed', end_seq = 1, "
            "policy_hash = repeat('b', 64) WHERE session_id = %s", (sid,))
    with pytest.raises(psycopg.errors.CheckViolation):
        applied_clinic.execute(
            "INSERT INTO audit.sessions (session_id, outcome, policy_hash) "
            "VALUES (gen_random_uuid(), 'refused', 'not-a-hash')")
