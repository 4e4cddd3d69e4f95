"""Tenancy of the clinic example through the proxy (issue #11, class 10; docs/leaks.md).

The attacks: an agent of clinic 1 attaches its rows to clinic 2's rows, and probes for clinic
2's rows through constraint errors, planner estimates and the catalog.  What the database can
close is closed (row filters that constrain every written reference, checked before any
foreign key); what it cannot is asserted as documented, so docs/leaks.md stays true: if one of
those tests fails because a leak was closed, update the document with it.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from conftest import Database, register
from proxyharness import RunningProxy


def _fails(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, params)
    assert info.value.sqlstate is not None
    return info.value.sqlstate


def _one(db: Database, query: str) -> Any:
    return db.execute(query)[0][0]


class Ids:
    """Rows of clinic 1 and clinic 2 the attacks use (read as the superuser)."""

    def __init__(self, db: Database) -> None:
        self.patient1 = _one(db, "SELECT min(id) FROM public.patients WHERE clinic_id = 1")
        self.other_patient1 = _one(
            db, "SELECT max(id) FROM public.patients WHERE clinic_id = 1")
        self.visit1 = _one(
            db, f"SELECT min(id) FROM public.visits WHERE patient_id = {self.patient1}")
        self.patient2 = _one(db, "SELECT min(id) FROM public.patients WHERE clinic_id = 2")
        self.visit2 = _one(db, "SELECT min(id) FROM public.visits WHERE clinic_id = 2")
        self.missing_visit = _one(db, "SELECT max(id) + 1000 FROM public.visits")
        self.missing_patient = _one(db, "SELECT max(id) + 1000 FROM public.patients")


_CLAIM = "INSERT INTO claims (patient_id, visit_id, amount, code) VALUES (%s, %s, 10, '99213')"


def test_billing_cannot_attach_a_claim_to_another_clinics_visit_or_patient(
    proxy: RunningProxy, applied_clinic: Database
) -> None:
    ids = Ids(applied_clinic)
    before = _one(applied_clinic, "SELECT count(*) FROM public.claims")
    with proxy.connect("agent-b1", "billing", clinic_id=1) as conn:
        # the finding of issue #11: own patient, clinic 2's visit
        assert _fails(conn, _CLAIM, (ids.patient1, ids.visit2)) == "42501"
        # clinic 2's patient, with or without a visit
        assert _fails(conn, _CLAIM, (ids.patient2, None)) == "42501"
        assert _fails(conn, _CLAIM, (ids.patient2, ids.visit2)) == "42501"
        # a visit of this clinic but of another patient: the claim would be mis-attached
        assert _fails(conn, _CLAIM, (ids.other_patient1, ids.visit1)) == "42501"
        # no existence oracle: an id that exists nowhere fails exactly like clinic 2's
        # (row security's WITH CHECK runs before the foreign-key check)
        assert _fails(conn, _CLAIM, (ids.patient1, ids.missing_visit)) == "42501"
        assert _fails(conn, _CLAIM, (ids.missing_patient, None)) == "42501"
        # its own patient's own visit, and a claim without a visit, still work
        conn.execute(_CLAIM, (ids.patient1, ids.visit1))
        conn.execute(_CLAIM, (ids.patient1, None))
        # and it reads exactly its clinic's claims
        seen = conn.execute("SELECT count(*) FROM claims").fetchone()
    assert _one(applied_clinic, "SELECT count(*) FROM public.claims") == before + 2
    assert seen == (_one(
        applied_clinic,
        "SELECT count(*) FROM public.claims c JOIN public.patients p ON p.id = c.patient_id "
        "WHERE p.clinic_id = 1"),)


def test_clinician_cannot_record_a_visit_for_another_clinics_patient(
    proxy: RunningProxy, applied_clinic: Database
) -> None:
    """visits reference patients by (patient_id, clinic_id) and the row filter pins clinic_id:
    another clinic's patient and a patient that exists nowhere get the same 23503, whose key
    names the agent's own clinic; claiming the other clinic fails row security first."""
    ids = Ids(applied_clinic)
    visit = "INSERT INTO visits (id, patient_id, clinic_id, visited_at) VALUES (%s, %s, %s, now())"
    fresh = ids.missing_visit + 1
    with proxy.connect("agent-c1", "clinician", clinic_id=1) as conn:
        errors = []
        for patient in (ids.patient2, ids.missing_patient):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(visit, (fresh, patient, 1))
            assert info.value.sqlstate == "23503"
            errors.append((info.value.diag.message_primary,
                           str(info.value.diag.message_detail).replace(str(patient), "P")))
        assert errors[0] == errors[1]  # no oracle: the same answer either way
        assert _fails(conn, visit, (fresh, ids.patient2, 2)) == "42501"
        conn.execute(visit, (fresh, ids.patient1, 1))
    assert applied_clinic.execute(
        f"SELECT patient_id, clinic_id FROM public.visits WHERE id = {fresh}") == [
        (ids.patient1, 1)]


# --- what stays (docs/leaks.md): asserted so the document stays true ----------------------


def test_a_unique_key_the_agent_supplies_is_an_existence_oracle(
    proxy: RunningProxy, applied_clinic: Database
) -> None:
    """Clinicians choose visits.id.  Inserting clinic 2's id (with every column the agent's
    own) passes row security and hits the primary key: 23505 says the id exists in another
    clinic, while a free id succeeds.  The database checks uniqueness across all rows by
    design; the mitigation is keys the agent does not choose (docs/leaks.md)."""
    ids = Ids(applied_clinic)
    visit = "INSERT INTO visits (id, patient_id, clinic_id, visited_at) VALUES (%s, %s, 1, now())"
    with proxy.connect("agent-c1", "clinician", clinic_id=1) as conn:
        assert conn.execute("SELECT count(*) FROM visits WHERE id = %s",
                            (ids.visit2,)).fetchone() == (0,)  # invisible to clinic 1
        with pytest.raises(psycopg.Error) as info:
            conn.execute(visit, (ids.visit2, ids.patient1))
        assert info.value.sqlstate == "23505"
        # the error names the constraint and the agent's own value, nothing of the other row
        assert "Human" not in str(info.value) and "Dr." not in str(info.value)


_ESTIMATE = re.compile(r"rows=(\d+)")


def test_plain_explain_estimates_show_other_clinics_counts_unless_refused(
    proxy: RunningProxy, applied_clinic: Database
) -> None:
    """Planner estimates come from whole-table statistics: a clinic-1 agent's EXPLAIN of
    clinic 2's rows estimates clinic 2's count, and a diagnosis's frequency over every clinic.
    If the proxy refuses EXPLAIN (42501), the leak is closed and docs/leaks.md says so."""
    clinic2 = _one(applied_clinic, "SELECT count(*) FROM public.visits WHERE clinic_id = 2")
    with proxy.connect("agent-c1", "clinician", clinic_id=1) as conn:
        try:
            plan = conn.execute("EXPLAIN SELECT * FROM visits WHERE clinic_id = 2").fetchall()
        except psycopg.Error as exc:
            assert exc.sqlstate == "42501"
            return
        seen = conn.execute("SELECT count(*) FROM visits WHERE clinic_id = 2").fetchone()
    assert seen == (0,)
    match = _ESTIMATE.search(plan[0][0])
    assert match is not None
    estimate = int(match.group(1))
    assert abs(estimate - clinic2) <= clinic2 // 10, (estimate, clinic2)


def test_the_catalog_shows_names_to_a_group_role(applied_clinic: Database) -> None:
    """Directly in the database (the first fence alone), a group role reads the names of the
    base tables, their PHI columns and the other groups' schemas from pg_catalog, and the
    tables' total row counts (pg_class.reltuples).  Never values.  docs/leaks.md."""
    with applied_clinic.connect("clinician") as conn:
        register(applied_clinic, conn, "agent-c1", "clinician", {"clinic_id": 1})
        columns = {row[0] for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'public.patients'::regclass "
            "AND attnum > 0").fetchall()}
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}
        total = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'public.visits'::regclass"
        ).fetchone()
        # values stay out of reach: the base table, and its statistics
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT ssn FROM public.patients LIMIT 1")
        assert info.value.sqlstate == "42501"
        conn.rollback()
        assert conn.execute(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'public'").fetchone() == (0,)
    assert {"ssn", "full_name", "birth_date"} <= columns
    assert {"billing", "research", "clinician"} <= schemas
    assert total == (_one(applied_clinic, "SELECT count(*) FROM public.visits"),)
