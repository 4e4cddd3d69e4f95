"""PL/Python audit triggers record row changes in the same transaction, with PHI hashed; the
audit schema is append-only for every role, the owner included."""

from __future__ import annotations

import psycopg
import pytest

from conftest import Database, register


def test_agent_write_lands_in_row_changes_with_phi_hashed(applied_clinic: Database) -> None:
    visit_id, old_diagnosis = applied_clinic.execute(
        "SELECT id, diagnosis FROM public.visits WHERE clinic_id = 1 AND diagnosis IS NOT NULL "
        "ORDER BY id LIMIT 1"
    )[0]
    with applied_clinic.connect("clinician") as conn:
        session = register(applied_clinic, conn, "doc-9", "clinician", {"clinic_id": 1})
        conn.execute("UPDATE visits SET diagnosis = 'J45.909 asthma' WHERE id = %s", (visit_id,))
    rows = applied_clinic.execute(
        "SELECT table_name, operation, session_id::text, agent, db_user, old_row, new_row, txid "
        "FROM audit.row_changes"
    )
    assert len(rows) == 1
    table, op, sess, agent, db_user, old, new, _ = rows[0]
    assert (table, op, sess, agent, db_user) == ("public.visits", "UPDATE", session, "doc-9",
                                                  "clinician")
    assert old["id"] == new["id"] == visit_id
    # PHI columns are pseudonyms, not values: neither the old nor the new diagnosis appears
    assert old["diagnosis"] != old_diagnosis and len(old["diagnosis"]) == 64
    assert new["diagnosis"] != "J45.909 asthma" and new["diagnosis"] != old["diagnosis"]
    assert "asthma" not in str(rows)
    # non-PHI columns are kept as they were
    assert new["clinic_id"] == 1


def test_statement_level_one_call_for_many_rows(applied_clinic: Database) -> None:
    with applied_clinic.connect() as conn:
        conn.execute("UPDATE public.claims SET status = 'reviewed' WHERE status = 'submitted'")
        changed = conn.execute("SELECT count(*) FROM public.claims WHERE status = 'reviewed'")
        count = changed.fetchone()
    rows = applied_clinic.execute(
        "SELECT count(*), count(DISTINCT txid), bool_and(agent IS NULL), min(db_user) "
        "FROM audit.row_changes WHERE table_name = 'public.claims'"
    )
    assert rows == [(count[0] if count else 0, 1, True, "postgres")]


def test_insert_and_delete_are_recorded(applied_clinic: Database) -> None:
    with applied_clinic.connect() as conn:
        conn.execute(
            "INSERT INTO public.clinics VALUES (99, 'Test', '99999')"
        )  # clinics is not audited: no PHI, no writers
        patient = conn.execute(
            "INSERT INTO public.patients (id, clinic_id, full_name, ssn, birth_date) "
            "VALUES (777777, 99, 'Ada Lovelace', '900-00-0001', '1815-12-10') RETURNING id"
        ).fetchone()
        conn.execute("DELETE FROM public.patients WHERE id = 777777")
    rows = applied_clinic.execute(
        "SELECT operation, old_row, new_row FROM audit.row_changes "
        "WHERE table_name = 'public.patients' ORDER BY id"
    )
    assert [r[0] for r in rows] == ["INSERT", "DELETE"]
    assert rows[0][2]["id"] == patient[0] if patient else False
    assert rows[0][2]["ssn"] != "900-00-0001" and rows[1][1]["ssn"] == rows[0][2]["ssn"]
    assert "Lovelace" not in str(rows) and "1815" not in str(rows)
    assert applied_clinic.execute(
        "SELECT count(*) FROM audit.row_changes WHERE table_name = 'public.clinics'"
    ) == [(0,)]


def test_rollback_leaves_no_record(applied_clinic: Database) -> None:
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-7", "billing", {"clinic_id": 1})
        patient = conn.execute("SELECT min(id) FROM patients").fetchone()
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO claims (patient_id, amount, code) VALUES (%s, 5, 'Z01')", patient
            )
    assert applied_clinic.execute("SELECT count(*) FROM audit.row_changes") == [(0,)]


@pytest.mark.parametrize("role", ["postgres", "policyc_owner"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit.row_changes SET agent = 'someone else'",
        "DELETE FROM audit.row_changes",
        "TRUNCATE audit.row_changes",
        "UPDATE audit.statements SET statement = 'SELECT 1'",
        "DELETE FROM audit.statements",
        "TRUNCATE audit.statements",
        "DELETE FROM audit.sessions",
        "UPDATE audit.sessions SET agent = 'x'",
        "TRUNCATE audit.sessions, audit.approvals",
        "DELETE FROM audit.approvals",
    ],
)
def test_audit_is_append_only_for_everyone(
    applied_clinic: Database, role: str, statement: str
) -> None:
    with applied_clinic.connect() as conn:
        conn.execute(
            "INSERT INTO public.claims (patient_id, amount, code) "
            "SELECT min(id), 1, 'Z02' FROM public.patients"
        )
        conn.execute(
            "INSERT INTO audit.sessions (session_id, agent, outcome) "
            "VALUES (gen_random_uuid(), 'a', 'open')"
        )
        conn.execute(
            "INSERT INTO audit.statements (statement, decision) VALUES ('SELECT 1', 'allowed')"
        )
        before = conn.execute(
            "SELECT (SELECT count(*) FROM audit.row_changes), "
            "(SELECT count(*) FROM audit.statements), (SELECT count(*) FROM audit.sessions)"
        ).fetchone()
        conn.execute(f'SET ROLE "{role}"'.encode())
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"append-only|only"):
            conn.execute(statement.encode())
        conn.execute("RESET ROLE")
        after = conn.execute(
            "SELECT (SELECT count(*) FROM audit.row_changes), "
            "(SELECT count(*) FROM audit.statements), (SELECT count(*) FROM audit.sessions)"
        ).fetchone()
        assert before == after


def test_session_can_be_closed_exactly_once(applied_clinic: Database) -> None:
    with applied_clinic.connect("policyc_proxy") as conn:
        conn.execute(
            "INSERT INTO audit.sessions (session_id, agent, outcome) "
            "VALUES ('00000000-0000-0000-0000-000000000001', 'a', 'open')"
        )
        conn.execute(
            "UPDATE audit.sessions SET ended_at = now(), end_reason = 'client closed', "
            "outcome = 'closed' WHERE session_id = '00000000-0000-0000-0000-000000000001'"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="final"):
            conn.execute(
                "UPDATE audit.sessions SET ended_at = now(), end_reason = 'rewritten' "
                "WHERE session_id = '00000000-0000-0000-0000-000000000001'"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE audit.sessions SET agent = 'b'")


def test_auditor_reads_audit_but_not_phi(applied_clinic: Database) -> None:
    with applied_clinic.connect() as conn:
        conn.execute("CREATE ROLE alice LOGIN IN ROLE policyc_auditor")
        conn.execute("ALTER ROLE policyc_auditor INHERIT")
    with applied_clinic.connect("alice") as conn:
        conn.execute("SELECT count(*) FROM audit.row_changes, audit.statements")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM public.patients")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO audit.statements (statement, decision) VALUES ('x', 'allowed')"
            )
