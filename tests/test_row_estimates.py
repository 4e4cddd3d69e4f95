"""Row estimates include row security: each group's masking view repeats its row filter as its
WHERE clause, so the planner estimates the rows the group sees (what `approval.rows_over` is
judged on) and can use an index, while the group sees and writes exactly what row security
alone allows (issue #12)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from conftest import Database, clinic_policy, register
from policyc import compiler
from policyc.apply import apply_policy
from policyc.compiler.render import Template
from policyc.compiler.rowfilters import policy_sql
from policyc.plan import make_plan

CLINICS = (1, 2, 3)
FILTERED = {  # the clinic example's row filters, per group
    "billing": ("patients", "visits", "claims"),
    "clinician": ("patients", "visits", "notes"),
}


def _plan_rows(conn: psycopg.Connection[Any], query: str) -> float:
    (plan,), = conn.execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchall()
    document = plan if isinstance(plan, list) else json.loads(plan)
    return float(document[0]["Plan"]["Plan Rows"])


def _count(conn: psycopg.Connection[Any], relation: str) -> int:
    (count,), = conn.execute(f"SELECT count(*) FROM {relation}".encode()).fetchall()
    return int(count)


def _whole(db: Database, table: str) -> int:
    (count,), = db.execute(f"SELECT count(*) FROM public.{table}")
    return int(count)


@pytest.mark.parametrize(
    ("group", "table"), [(g, t) for g, tables in FILTERED.items() for t in tables])
def test_estimate_is_of_the_rows_the_group_sees(
    applied_clinic: Database, group: str, table: str
) -> None:
    whole = _whole(applied_clinic, table)
    with applied_clinic.connect(group) as conn:
        register(applied_clinic, conn, "agent-1", group, {"clinic_id": 1})
        visible = _count(conn, table)
        estimate = _plan_rows(conn, f"SELECT * FROM {table}")
    assert 0 < visible < whole
    assert visible / 2 <= estimate <= visible * 2, (estimate, visible, whole)
    # row security alone estimated ~99.8% of the table
    assert estimate <= 0.6 * whole, (estimate, visible, whole)


def test_unfiltered_group_still_estimates_the_whole_table(applied_clinic: Database) -> None:
    whole = _whole(applied_clinic, "patients")
    with applied_clinic.connect("research") as conn:
        register(applied_clinic, conn, "r-1", "research", {})
        assert _count(conn, "patients") == whole
        assert whole / 2 <= _plan_rows(conn, "SELECT * FROM patients") <= whole * 2


def _index_names(node: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in node:
        yield node["Index Name"]
    for child in node.get("Plans", ()):
        yield from _index_names(child)


def test_the_row_filter_can_use_an_index(applied_clinic: Database) -> None:
    """Inside row security's `CURRENT_USER <> group OR filter` no index fits; in the view's
    WHERE clause the filter is an index condition."""
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-1", "billing", {"clinic_id": 2})
        conn.execute("SET enable_seqscan = off")
        (plan,), = conn.execute("EXPLAIN (FORMAT JSON) SELECT id FROM visits").fetchall()
        document = plan if isinstance(plan, list) else json.loads(plan)
        assert "visits_clinic_id_idx" in set(_index_names(document[0]["Plan"]))
        visible = _count(conn, "visits")
    expected = applied_clinic.execute("SELECT count(*) FROM public.visits WHERE clinic_id = 2")
    assert expected == [(visible,)]


def _twin_schema(group: str) -> str:
    return f"rls_only_{group}"


def _make_twins(db: Database) -> list[tuple[str, str]]:
    """Every group view again, as the previous compiler made it (no WHERE clause: row security
    alone filters), in a schema ``rls_only_<group>`` the group may use; (group, view) pairs."""
    policy = clinic_policy(db.name)
    made = []
    with db.connect() as conn:
        views = [o for o in make_plan(conn, policy).compiled.objects if o.kind == "view"]
        for group in sorted({g.name for g in policy.groups}):
            schema = sql.Identifier(_twin_schema(group))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                schema, sql.Identifier(group)))
        for view in views:
            assert isinstance(view.create, Template)
            context = view.create.context
            twin = Template(view.create.name, **{
                **context, "schema": _twin_schema(context["schema"]), "where": None})
            for statement in twin.statements:
                conn.execute(statement.encode())
            made.append((context["schema"], context["view"]))
    return made


def _filtered_count(db: Database, table: str, text: str, claims: dict[str, Any]) -> int:
    """The base table's count under the policy's filter text, as a superuser (no row security)
    whose session identity carries ``claims``."""
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO policyc.session_identity "
            "(pid, backend_start, session_id, agent, group_name, claims) "
            "SELECT pg_backend_pid(), a.backend_start, gen_random_uuid(), 'oracle', 'oracle', %s "
            "FROM pg_stat_get_activity(pg_backend_pid()) a", (Jsonb(claims),))
        try:
            (count,), = conn.execute(
                f"SELECT count(*) FROM public.{table} WHERE {policy_sql(text)}".encode()
            ).fetchall()
        finally:
            conn.execute("DELETE FROM policyc.session_identity WHERE pid = pg_backend_pid()")
    return int(count)


def _rows(conn: psycopg.Connection[Any], relation: str) -> list[str]:
    return sorted(repr(r) for r in conn.execute(f"SELECT * FROM {relation}".encode()))


def test_every_group_sees_what_row_security_alone_shows(applied_clinic: Database) -> None:
    policy = clinic_policy(applied_clinic.name)
    groups = {g.name: g for g in policy.groups}
    twins = _make_twins(applied_clinic)
    assert {g for g, _ in twins} == set(groups)
    nontrivial = 0
    for group_name, group in groups.items():
        for claims in ({}, *({"clinic_id": c} for c in CLINICS)):
            with applied_clinic.connect(group_name) as conn:
                register(applied_clinic, conn, "agent-x", group_name, claims)
                for schema, view in twins:
                    if schema != group_name:
                        continue
                    seen = _rows(conn, f"{schema}.{view}")
                    assert seen == _rows(conn, f"{_twin_schema(schema)}.{view}"), (
                        group_name, view, claims)
                    text = next((t for name, t in group.rows.items() if name.name == view),
                                None)
                    if text is None:
                        assert len(seen) == _whole(applied_clinic, view)
                        continue
                    expected = _filtered_count(applied_clinic, view, text, claims)
                    assert len(seen) == expected, (group_name, view, claims)
                    nontrivial += expected > 0
    assert nontrivial == len(CLINICS) * sum(len(t) for t in FILTERED.values())


def _error(conn: psycopg.Connection[Any], statement: str, params: Any) -> str | None:
    try:
        conn.execute(statement.encode(), params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def test_writes_through_filtered_views(applied_clinic: Database) -> None:
    db = applied_clinic
    (own_patient, own_visit), = db.execute(
        "SELECT patient_id, id FROM public.visits WHERE clinic_id = 1 ORDER BY id LIMIT 1")
    (foreign_patient, foreign_visit), = db.execute(
        "SELECT patient_id, id FROM public.visits WHERE clinic_id = 2 ORDER BY id LIMIT 1")
    (foreign_claim,), = db.execute(
        "SELECT c.id FROM public.claims c JOIN public.patients p ON p.id = c.patient_id "
        "WHERE p.clinic_id = 2 ORDER BY c.id LIMIT 1")
    insert = "INSERT INTO claims (patient_id, visit_id, amount, code) VALUES (%s, %s, 10, 'X')"
    with db.connect("billing") as conn:
        register(db, conn, "agent-1", "billing", {"clinic_id": 1})
        (claim,), = conn.execute(
            (insert + " RETURNING id").encode(), (own_patient, own_visit)).fetchall()
        assert conn.execute("UPDATE claims SET status = 'paid' WHERE id = %s",
                            (claim,)).rowcount == 1
        assert conn.execute("SELECT status FROM claims WHERE id = %s",
                            (claim,)).fetchall() == [("paid",)]
        # outside the filter: row security's WITH CHECK refuses, whether the row exists or not
        assert _error(conn, insert, (foreign_patient, foreign_visit)) == "42501"
        assert _error(conn, insert, (own_patient, foreign_visit)) == "42501"
        # another clinic's claim is not there to update
        assert conn.execute("UPDATE claims SET status = 'paid' WHERE id = %s",
                            (foreign_claim,)).rowcount == 0
    assert db.execute("SELECT status FROM public.claims WHERE id = %s",
                      (foreign_claim,)) != [("paid",)]
    assert db.execute("SELECT status FROM public.claims WHERE id = %s", (claim,)) == [("paid",)]

    (next_id,), = db.execute("SELECT max(id) + 1 FROM public.visits")
    visit = ("INSERT INTO visits (id, patient_id, clinic_id, visited_at) "
             "VALUES (%s, %s, %s, now())")
    with db.connect("clinician") as conn:
        register(db, conn, "doc-2", "clinician", {"clinic_id": 2})
        assert conn.execute(visit.encode(), (next_id, foreign_patient, 2)).rowcount == 1
        assert conn.execute("UPDATE visits SET diagnosis = 'z' WHERE id = %s",
                            (foreign_visit,)).rowcount == 1
        assert conn.execute("UPDATE visits SET diagnosis = 'z' WHERE id = %s",
                            (own_visit,)).rowcount == 0
        assert _error(conn, visit, (next_id + 1, own_patient, 1)) == "42501"
        assert _error(
            conn, "INSERT INTO notes (id, patient_id, author, written_at, body) "
            "VALUES (999999, %s, 'a', now(), 'b')", (own_patient,)) == "42501"
    assert db.execute("SELECT clinic_id FROM public.visits WHERE id = %s",
                      (next_id,)) == [(2,)]
    assert db.execute("SELECT diagnosis FROM public.visits WHERE id = %s",
                      (own_visit,)) != [("z",)]


def test_filtered_views_stay_updatable_security_barriers(applied_clinic: Database) -> None:
    rows = applied_clinic.execute(
        "SELECT v.table_schema, v.table_name, v.is_updatable, v.is_insertable_into, "
        "c.reloptions, pg_get_viewdef(c.oid) LIKE %s "
        "FROM information_schema.views v "
        "JOIN pg_class c ON c.relname = v.table_name "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = v.table_schema "
        "WHERE v.table_schema IN ('billing', 'clinician', 'research')", ("%WHERE%",))
    assert len(rows) == 8
    for schema, view, updatable, insertable, options, filtered in rows:
        assert (updatable, insertable) == ("YES", "YES"), (schema, view)
        assert options == ["security_barrier=true"], (schema, view)
        assert filtered == (view in FILTERED.get(schema, ())), (schema, view)


def test_views_without_filters_from_a_previous_apply_are_replaced(
    clinic_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database applied before views carried the filter: the next apply replaces exactly the
    filtered views (no hazard: nobody gains anything), then plans nothing."""
    policy = clinic_policy(clinic_db.name)
    with monkeypatch.context() as patch:
        patch.setattr(compiler, "_view_filter", lambda group, table: None)
        with clinic_db.connect() as conn:
            apply_policy(conn, policy)
    with clinic_db.connect() as conn:
        plan = make_plan(conn, policy)
        assert sorted((c.key, c.action) for c in plan.changes) == sorted(
            (f"view:{g}:{t}", "update") for g, tables in FILTERED.items() for t in tables)
        assert not any(c.hazards for c in plan.changes)
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty
    with clinic_db.connect("billing") as conn:
        register(clinic_db, conn, "agent-1", "billing", {"clinic_id": 1})
        visible = _count(conn, "patients")
        assert visible / 2 <= _plan_rows(conn, "SELECT * FROM patients") <= visible * 2


def test_a_filter_naming_its_table_with_its_schema_compiles_into_the_view(
    clinic_db: Database,
) -> None:
    """The view reads its table without an alias, so every name of it that row security
    accepts (``public.claims.visit_id`` too) means the same in the view's WHERE clause."""
    policy = clinic_policy(clinic_db.name)
    billing = next(g for g in policy.groups if g.name == "billing")
    rows = {name: text.replace("claims.visit_id", "public.claims.visit_id")
            for name, text in billing.rows.items()}
    assert rows != billing.rows
    policy = dataclasses.replace(policy, groups=tuple(
        dataclasses.replace(g, rows=rows) if g is billing else g for g in policy.groups))
    with clinic_db.connect() as conn:
        apply_policy(conn, policy)
    (own,), = clinic_db.execute(
        "SELECT count(*) FROM public.claims c JOIN public.patients p ON p.id = c.patient_id "
        "LEFT JOIN public.visits v ON v.id = c.visit_id WHERE p.clinic_id = 1 "
        "AND (c.visit_id IS NULL OR (v.patient_id = c.patient_id AND v.clinic_id = 1))")
    with clinic_db.connect("billing") as conn:
        register(clinic_db, conn, "agent-1", "billing", {"clinic_id": 1})
        assert _count(conn, "claims") == own > 0
