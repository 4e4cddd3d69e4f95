"""Each group sees exactly its columns, masked as declared, and only its rows — connected as
the group role exactly as the proxy connects."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from typing import Any

import psycopg
import pytest

from conftest import Database, register

DATE_OID = 1082
TEXT_OID = 25


def _key(db: Database) -> tuple[bytes, bytes]:
    ipad, opad = db.execute("SELECT ipad, opad FROM policyc.hmac_key")[0]
    return bytes(ipad), bytes(opad)


def _hmac(db: Database, value: str) -> str:
    ipad, opad = _key(db)
    key = bytes(b ^ 0x36 for b in ipad)  # the pads are key XOR 0x36 / 0x5c
    assert bytes(b ^ 0x5C for b in key) == opad
    return hmac.new(key.rstrip(b"\x00"), value.encode(), hashlib.sha256).hexdigest()


def _rows(conn: psycopg.Connection[Any], sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with conn.cursor() as cur:
        cur.execute(sql.encode())
        assert cur.description is not None
        return [d.name for d in cur.description], cur.fetchall()


def test_each_group_sees_exactly_its_columns(applied_clinic: Database) -> None:
    expected = {
        "billing": {
            "patients": ["id", "clinic_id", "full_name", "ssn", "birth_date"],
            "visits": ["id", "patient_id", "clinic_id", "visited_at"],
            "claims": ["id", "patient_id", "visit_id", "amount", "code", "status", "created_at"],
        },
        "research": {
            "patients": ["id", "clinic_id", "birth_date", "zip"],
            "visits": ["id", "patient_id", "visited_at", "diagnosis"],
        },
        "clinician": {
            "patients": ["id", "clinic_id", "full_name", "ssn", "birth_date", "zip", "email",
                         "phone", "created_at"],
            "notes": ["id", "patient_id", "author", "written_at", "body"],
        },
    }
    for group, tables in expected.items():
        with applied_clinic.connect(group) as conn:
            for table, columns in tables.items():
                names, _ = _rows(conn, f"SELECT * FROM {table} LIMIT 0")
                assert names == columns, (group, table)
            assert conn.execute("SHOW search_path").fetchone() == (group,)


def test_billing_masks_and_row_filter(applied_clinic: Database) -> None:
    base = {
        r[0]: r
        for r in applied_clinic.execute(
            "SELECT id, clinic_id, full_name, ssn, birth_date FROM public.patients"
        )
    }
    with applied_clinic.connect("billing") as conn:
        assert _rows(conn, "SELECT * FROM patients")[1] == [], "no identity, no rows"
        register(applied_clinic, conn, "agent-7", "billing", {"clinic_id": 1})
        with conn.cursor() as cur:
            cur.execute("SELECT id, clinic_id, full_name, ssn, birth_date FROM patients")
            assert cur.description is not None
            types = {d.name: d.type_code for d in cur.description}
            rows = cur.fetchall()
    assert types["birth_date"] == DATE_OID and types["ssn"] == TEXT_OID
    in_clinic = [r for r in base.values() if r[1] == 1]
    assert len(rows) == len(in_clinic) > 0
    for pid, clinic, name, ssn, birth in rows:
        original = base[pid]
        assert clinic == 1
        assert ssn == _hmac(applied_clinic, original[3])
        assert birth == dt.date(original[4].year, 1, 1)
        words = original[2].split()
        assert name == " ".join(re.sub(r"^(\w)\w*", r"\1***", w) for w in words)


def test_research_zip3_age_and_redaction(applied_clinic: Database) -> None:
    base = dict(applied_clinic.execute("SELECT id, zip FROM public.patients"))
    restricted = {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830",
                  "831", "878", "879", "884", "890", "893"}
    with applied_clinic.connect("research") as conn:
        register(applied_clinic, conn, "r-1", "research", {})
        _, rows = _rows(conn, "SELECT id, zip FROM patients")
        _, visits = _rows(conn, "SELECT DISTINCT diagnosis FROM visits")
    assert len(rows) == len(base), "research has no row filter"
    saw_restricted = False
    for pid, zip3 in rows:
        original = base[pid]
        if original is None:
            assert zip3 is None
            continue
        digits = re.sub(r"\D", "", original)[:3]
        saw_restricted |= digits in restricted
        assert zip3 == ("000" if digits in restricted else digits)
    assert saw_restricted, "the example data should exercise the sparse-ZIP rule"
    assert {v[0] for v in visits} <= {"[REDACTED]", None}


def test_clinician_unmasked_columns_are_clear(applied_clinic: Database) -> None:
    base = {
        r[0]: r
        for r in applied_clinic.execute(
            "SELECT id, full_name, birth_date, email, clinic_id FROM public.patients"
        )
    }
    with applied_clinic.connect("clinician") as conn:
        register(applied_clinic, conn, "doc-1", "clinician", {"clinic_id": 2})
        _, rows = _rows(conn, "SELECT id, full_name, birth_date, email, clinic_id FROM patients")
    assert rows and all(r[4] == 2 for r in rows)
    for pid, name, birth, email, _ in rows:
        assert (name, birth) == (base[pid][1], base[pid][2])
        assert email in ("[REDACTED]", None)
        assert (email is None) == (base[pid][3] is None)


def test_row_filter_follows_the_claim(applied_clinic: Database) -> None:
    counts = dict(
        applied_clinic.execute("SELECT clinic_id, count(*) FROM public.patients GROUP BY 1")
    )
    for clinic, count in counts.items():
        with applied_clinic.connect("billing") as conn:
            register(applied_clinic, conn, f"agent-{clinic}", "billing", {"clinic_id": clinic})
            assert conn.execute("SELECT count(*) FROM patients").fetchone() == (count,)
            claims = conn.execute(
                "SELECT count(*) FROM claims c WHERE c.patient_id NOT IN (SELECT id FROM patients)"
            ).fetchone()
            assert claims == (0,), "claims of other clinics' patients are invisible"


def test_identity_of_a_dead_backend_does_not_attach(applied_clinic: Database) -> None:
    """A row left by a crashed proxy must not give a new backend with the same pid its claims."""
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-1", "billing", {"clinic_id": 1})
        pid = conn.info.backend_pid
        assert conn.execute("SELECT policyc.agent()").fetchone() == ("agent-1",)
    with applied_clinic.connect() as admin:
        # simulate pid reuse: the stale row now names a live backend with another start time
        admin.execute(
            "UPDATE policyc.session_identity SET backend_start = backend_start - interval '1 h' "
            "WHERE pid = %s", (pid,),
        )
    with applied_clinic.connect("billing") as conn:
        assert conn.execute("SELECT policyc.agent(), policyc.claim('clinic_id')").fetchone() == (
            None, None)


def test_writes_respect_columns_and_with_check(applied_clinic: Database) -> None:
    patient_here, patient_there = (
        applied_clinic.execute(
            "SELECT min(id) FILTER (WHERE clinic_id = 1), min(id) FILTER (WHERE clinic_id = 2) "
            "FROM public.patients"
        )[0]
    )
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-7", "billing", {"clinic_id": 1})
        conn.execute(
            "INSERT INTO claims (patient_id, amount, code) VALUES (%s, 12.50, 'Z00')",
            (patient_here,),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "INSERT INTO claims (patient_id, amount, code) VALUES (%s, 1, 'Z00')",
                (patient_there,),
            )
        conn.execute("UPDATE claims SET status = 'paid' WHERE patient_id = %s", (patient_here,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE claims SET amount = 0 WHERE patient_id = %s", (patient_here,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM claims WHERE patient_id = %s", (patient_here,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO patients (id, clinic_id) VALUES (999999, 1)")
    with applied_clinic.connect("clinician") as conn:
        register(applied_clinic, conn, "doc-1", "clinician", {"clinic_id": 1})
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "INSERT INTO visits (id, patient_id, clinic_id, visited_at) "
                "VALUES (900001, %s, 2, now())", (patient_there,),
            )
        # moving a visit to another clinic is a write it could not read back
        visit = conn.execute("SELECT min(id) FROM visits").fetchone()
        assert visit is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE visits SET clinic_id = 2 WHERE id = %s", visit)


def test_row_filters_are_right_under_parallel_query(applied_clinic: Database) -> None:
    """A parallel worker has its own pid: identity lookups must not run there, or the filter
    would silently drop rows."""
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-7", "billing", {"clinic_id": 1})
        query = "SELECT count(*) FROM visits WHERE visited_at > '1900-01-01'"
        serial = conn.execute(query).fetchone()
        for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2",
                        "parallel_leader_participation = off"):
            conn.execute(f"SET {setting}".encode())
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {query}".encode()))
        assert "Gather" in plan, plan
        assert conn.execute(query).fetchone() == serial
    expected = applied_clinic.execute("SELECT count(*) FROM public.visits WHERE clinic_id = 1")
    assert serial == expected[0]
