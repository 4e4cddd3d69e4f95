"""Row filters as the compiler writes them into policies and views (issue #14): identity calls
run once per statement, and ``col IN (SELECT x ...)`` where only true passes becomes an
``EXISTS`` probe, so a one-row write reads one row of the subquery's table instead of hashing
every row the subquery selects.  Behaviour on real PostgreSQL: the plan of billing's claim
INSERT, the rows the rewrite keeps (NULLs included), and the tenancy it must not loosen.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conftest import Database, register
from policyc.compiler.rowfilters import normalize, policy_sql

CLAIMS_FILTER = (
    "patient_id IN (SELECT p.id FROM public.patients p "
    "WHERE p.clinic_id = policyc.claim('clinic_id')::int) "
    "AND (visit_id IS NULL OR EXISTS (SELECT 1 FROM public.visits v "
    "WHERE v.id = claims.visit_id AND v.patient_id = claims.patient_id "
    "AND v.clinic_id = policyc.claim('clinic_id')::int))"
)


# --- the rewrite (no database) ------------------------------------------------------------


def test_an_in_subquery_where_only_true_passes_becomes_an_exists_probe() -> None:
    assert policy_sql(CLAIMS_FILTER, "claims").startswith(
        "EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = "
        "(SELECT CAST(policyc.claim('clinic_id') AS integer)) AND claims.patient_id = p.id) "
        "AND (visit_id IS NULL OR EXISTS (SELECT 1 FROM public.visits AS v")
    # under OR too, and with the table's own name as qualifier
    assert policy_sql("a = 1 OR claims.b IN (SELECT s.x FROM public.s)", "claims") == (
        "a = 1 OR EXISTS (SELECT 1 FROM public.s WHERE claims.b = s.x)")
    # plan compares and shows the policy's own text: the canonical form is not rewritten
    assert normalize(CLAIMS_FILTER).startswith("patient_id IN (SELECT p.id")
    # without the table's name nothing is rewritten
    assert policy_sql(CLAIMS_FILTER).startswith("patient_id IN (SELECT p.id")


@pytest.mark.parametrize("text", [
    "NOT (b IN (SELECT s.x FROM public.s))",  # false and NULL differ under NOT
    "(b IN (SELECT s.x FROM public.s)) IS NOT FALSE",
    "CASE WHEN b IN (SELECT s.x FROM public.s) THEN true ELSE false END",
    "b <> ALL (SELECT s.x FROM public.s)",
    "b < ANY (SELECT s.x FROM public.s)",
    "b IN (SELECT DISTINCT s.x FROM public.s)",
    "b IN (SELECT s.x FROM public.s LIMIT 3)",
    "b IN (SELECT max(s.x) FROM public.s GROUP BY s.y)",
    "b IN (SELECT s.x FROM public.s UNION SELECT 1)",
    "b IN (SELECT s.x + 1 FROM public.s)",
    "(a, b) IN (SELECT s.x, s.y FROM public.s)",
    "b IN (SELECT claims.x FROM public.s AS claims)",  # the subquery hides the table's name
    "b IN (SELECT x FROM public.claims)",
    "EXISTS (SELECT 1 FROM public.s WHERE s.x IN (SELECT u.y FROM public.u))",  # not the top
])
def test_other_shapes_are_left_as_written(text: str) -> None:
    assert "EXISTS (SELECT 1 FROM public.s WHERE claims.b" not in policy_sql(text, "claims")
    assert policy_sql(text, "claims") == policy_sql(text)


# --- the same rows, on PostgreSQL -----------------------------------------------------------

EQUIVALENCE_FILTERS = [
    "k IN (SELECT s.x FROM public.s WHERE s.on)",
    "k IN (SELECT s.x FROM public.s)",
    "t.k IN (SELECT s.x FROM public.s WHERE s.on) OR id > 6",
    "id < 8 AND (k IN (SELECT s.x FROM public.s WHERE s.on) OR k IS NULL)",
    "k IN (SELECT s.x FROM public.s JOIN public.u ON u.y = s.x WHERE s.on)",
    "k = ANY (SELECT s.x FROM public.s WHERE s.on OR s.x IS NULL)",
]


@pytest.mark.parametrize("text", EQUIVALENCE_FILTERS)
def test_the_probe_keeps_exactly_the_rows_of_the_in_subquery(db: Database, text: str) -> None:
    """NULLs on both sides (a NULL ``k``; a NULL among the subquery's values): a row passes
    under the rewritten filter exactly when it passes under the written one."""
    db.execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, k int);"
        "CREATE TABLE public.s (x int, on_ boolean);"
        "ALTER TABLE public.s RENAME COLUMN on_ TO \"on\";"
        "CREATE TABLE public.u (y int);"
        "INSERT INTO public.t VALUES (1, 1), (2, 2), (3, NULL), (4, 4), (5, 5), (6, NULL), "
        "(7, 7), (8, 8), (9, 3);"
        "INSERT INTO public.s VALUES (1, true), (2, false), (NULL, true), (4, NULL), (5, true),"
        " (5, true), (3, true);"
        "INSERT INTO public.u VALUES (1), (3), (NULL)")
    rewritten = policy_sql(text, "t")
    assert "EXISTS" in rewritten and " IN (" not in rewritten and "ANY" not in rewritten
    written = db.execute(f"SELECT id FROM public.t WHERE {text} ORDER BY id")
    probed = db.execute(f"SELECT id FROM public.t WHERE {rewritten} ORDER BY id")
    assert written == probed and written  # and the filter is not trivially empty


# --- billing's claims, as applied -----------------------------------------------------------


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", ()):
        found += _nodes(child)
    return found


def _billing(db: Database) -> psycopg.Connection[Any]:
    conn = db.connect("billing", autocommit=False)
    register(db, conn, "agent-b1", "billing", {"clinic_id": 1})
    return conn


def test_a_one_row_claim_insert_probes_one_patient_and_reads_the_claim_once_per_initplan(
    applied_clinic: Database,
) -> None:
    """The WITH CHECK of billing's claims filter, EXPLAIN ANALYZEd on a one-row INSERT: each
    policyc.claim() is an InitPlan run at most once, and the patients subquery reads one row
    (the claim's patient, by index) rather than all of clinic 1's patients."""
    (patient, visit), = applied_clinic.execute(
        "SELECT p.id, min(v.id) FROM public.patients p JOIN public.visits v "
        "ON v.patient_id = p.id WHERE p.clinic_id = 1 GROUP BY p.id ORDER BY p.id LIMIT 1")
    (clinic_patients,), = applied_clinic.execute(
        "SELECT count(*) FROM public.patients WHERE clinic_id = 1")
    assert clinic_patients > 10
    with _billing(applied_clinic) as conn:
        (plan,), = conn.execute(
            "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) INSERT INTO claims "
            "(patient_id, visit_id, amount, code) VALUES (%s, %s, 10, '99213')",
            (patient, visit)).fetchone()
        conn.rollback()
    nodes = _nodes(plan["Plan"])
    claims = [n for n in nodes if "policyc.claim" in " ".join(n.get("Output", ()))]
    assert claims and all(n.get("Parent Relationship") == "InitPlan" for n in claims)
    assert all(n["Actual Loops"] <= 1 for n in claims)
    # the filter and the nested patients/visits policies: 4 claims read, no more
    assert sum(n["Actual Loops"] for n in claims) <= 4
    scans = [n for n in nodes if n.get("Relation Name") in ("patients", "visits")]
    assert {n["Relation Name"] for n in scans} == {"patients", "visits"}
    assert all(n["Actual Loops"] == 1 and n["Actual Rows"] == 1 for n in scans), scans


def test_billing_still_writes_claims_of_its_own_clinic_only(applied_clinic: Database) -> None:
    rows = applied_clinic.execute(
        "SELECT p.clinic_id, p.id, min(v.id) FROM public.patients p JOIN public.visits v "
        "ON v.patient_id = p.id WHERE p.clinic_id IN (1, 2) GROUP BY p.clinic_id, p.id "
        "ORDER BY p.id LIMIT 6")
    own = next(r for r in rows if r[0] == 1)
    other = next(r for r in rows if r[0] == 2)
    other_visit_of_own = applied_clinic.execute(
        "SELECT min(v.id) FROM public.visits v WHERE v.patient_id <> %s AND v.clinic_id = 1",
        (own[1],))[0][0]
    insert = ("INSERT INTO claims (patient_id, visit_id, amount, code) "
              "VALUES (%s, %s, 10, '99213') RETURNING id")
    with _billing(applied_clinic) as conn:
        (claim,), = conn.execute(insert, (own[1], own[2])).fetchall()
        assert conn.execute("UPDATE claims SET status = 'accepted' WHERE id = %s",
                            (claim,)).rowcount == 1
        conn.commit()
        for patient, visit in ((other[1], other[2]), (other[1], None), (own[1], other[2]),
                               (own[1], other_visit_of_own)):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="row-level security"):
                conn.execute(insert, (patient, visit))
            conn.rollback()
        # a claim of another clinic is neither seen nor updated
        (theirs,), = applied_clinic.execute(
            "SELECT min(c.id) FROM public.claims c JOIN public.patients p "
            "ON p.id = c.patient_id WHERE p.clinic_id = 2")
        assert theirs is not None
        assert conn.execute("UPDATE claims SET status = 'paid' WHERE id = %s",
                            (theirs,)).rowcount == 0
        conn.rollback()
    assert applied_clinic.execute("SELECT status FROM public.claims WHERE id = %s",
                                  (claim,)) == [("accepted",)]
