"""What keeps a no-op plan cheap, and that it stays exact: unchanged objects are recognised by a
hash of their inputs (nothing is rendered), views by a fingerprint of their stored rule
(pg_get_viewdef only when it changed), and every hand edit is still drift."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Database, clinic_policy
from policyc import catalog
from policyc.apply import apply_policy
from policyc.compiler import render
from policyc.compiler.objects import DesiredObject
from policyc.compiler.render import Template
from policyc.compiler.rowfilters import normalize, policy_sql
from policyc.plan import make_plan


def _queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    fetch = catalog._fetch

    def recording(conn: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        ran.append(query)
        return fetch(conn, query, params)

    monkeypatch.setattr(catalog, "_fetch", recording)
    return ran


def test_noop_plan_renders_no_sql_and_reads_no_view_definition(
    applied_clinic: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = clinic_policy(applied_clinic.name)

    def refuse(*_: Any, **__: Any) -> tuple[str, ...]:
        raise AssertionError("a no-op plan rendered SQL")

    ran = _queries(monkeypatch)
    monkeypatch.setattr(render, "statements", refuse)
    with applied_clinic.connect() as conn:
        assert make_plan(conn, policy).empty
    assert "observe_views" in ran and "observe_views_full" not in ran


@pytest.mark.parametrize(
    "tamper",
    [
        # the same columns, unmasked by hand
        "CREATE OR REPLACE VIEW billing.patients WITH (security_barrier = true) AS "
        "SELECT t.id, t.clinic_id, t.full_name, t.ssn, t.birth_date FROM public.patients t",
        "ALTER VIEW research.patients RENAME COLUMN zip TO zip_code",
        "ALTER VIEW billing.patients SET (security_barrier = false)",
        "ALTER VIEW research.patients OWNER TO postgres",
        "REVOKE SELECT (clinic_id) ON research.patients FROM research",
        "COMMENT ON VIEW research.patients IS NULL; DROP VIEW research.patients; "
        "CREATE VIEW research.patients AS SELECT id, clinic_id, birth_date, zip "
        "FROM public.patients",
    ],
)
def test_hand_edits_of_a_view_are_drift(applied_clinic: Database, tamper: str) -> None:
    policy = clinic_policy(applied_clinic.name)
    with applied_clinic.connect() as conn:
        conn.execute(tamper.encode())
        plan = make_plan(conn, policy)
        assert any(c.kind == "view" for c in plan.drift), tamper
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty


def test_a_view_restored_from_its_definition_is_not_drift(applied_clinic: Database) -> None:
    """A dump and restore re-creates views from pg_get_viewdef: the stored rule changes (its
    fingerprint), what the view does does not."""
    policy = clinic_policy(applied_clinic.name)
    rule = ("SELECT md5(ev_action::text) FROM pg_rewrite "
            "WHERE ev_class = 'research.patients'::regclass")
    before = applied_clinic.execute(rule)
    definition = applied_clinic.execute("SELECT pg_get_viewdef('research.patients'::regclass)")
    with applied_clinic.connect() as conn:
        conn.execute(("CREATE OR REPLACE VIEW research.patients WITH (security_barrier = true) AS "
                      + definition[0][0]).encode())
        assert applied_clinic.execute(rule) != before
        assert make_plan(conn, policy).empty
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty


@pytest.mark.parametrize(
    "tamper",
    [
        "ALTER POLICY policyc_billing ON public.patients USING (true)",
        "ALTER POLICY policyc_billing ON public.patients TO policyc_owner, research",
        "ALTER TABLE public.patients FORCE ROW LEVEL SECURITY",
        "CREATE POLICY policyc_extra ON public.visits USING (true)",
    ],
)
def test_hand_edits_of_row_security_are_drift(applied_clinic: Database, tamper: str) -> None:
    policy = clinic_policy(applied_clinic.name)
    with applied_clinic.connect() as conn:
        conn.execute(tamper.encode())
        assert any(c.kind == "rls" for c in make_plan(conn, policy).drift), tamper
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty


def test_a_policy_restored_from_its_definition_is_not_drift(applied_clinic: Database) -> None:
    policy = clinic_policy(applied_clinic.name)
    (using, check), = applied_clinic.execute(
        "SELECT pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
        "FROM pg_policy WHERE polname = 'policyc_billing' AND polrelid = 'public.visits'::regclass")
    tree = ("SELECT md5(polqual::text) FROM pg_policy "
            "WHERE polname = 'policyc_billing' AND polrelid = 'public.visits'::regclass")
    before = applied_clinic.execute(tree)
    with applied_clinic.connect() as conn:
        conn.execute("DROP POLICY policyc_billing ON public.visits")
        conn.execute(f"CREATE POLICY policyc_billing ON public.visits AS RESTRICTIVE FOR ALL "
                     f"TO policyc_owner USING ({using}) WITH CHECK ({check})".encode())
        assert applied_clinic.execute(tree) != before
        assert make_plan(conn, policy).empty


def test_a_ledger_from_before_input_hashes_and_fingerprints_needs_no_update(
    applied_clinic: Database,
) -> None:
    applied_clinic.execute(
        "UPDATE policyc.applied_objects SET desired_hash = split_part(desired_hash, ':', 1), "
        "observed = CASE WHEN observed LIKE 'fp:%' "
        "THEN substr(observed, strpos(observed, E'\\n') + 1) ELSE observed END "
        "WHERE object_key <> 'runtime'"
    )
    policy = clinic_policy(applied_clinic.name)
    with applied_clinic.connect() as conn:
        assert make_plan(conn, policy).empty
        applied_clinic.execute("GRANT SELECT ON public.visits TO research")
        drift = make_plan(conn, policy)
        assert [c.key for c in drift.changes] == ["privileges:research"]
        apply_policy(conn, policy)  # records input hashes and fingerprints again
        assert make_plan(conn, policy).empty
    rows = applied_clinic.execute(
        "SELECT count(*) FILTER (WHERE desired_hash NOT LIKE '%:%'), "
        "count(*) FILTER (WHERE object_key LIKE 'view:%' AND observed NOT LIKE 'fp:%') "
        "FROM policyc.applied_objects WHERE object_key <> 'runtime'")
    assert rows == [(0, 0)]


def test_input_hash_follows_the_rendered_sql() -> None:
    def view(expression: str) -> DesiredObject:
        return DesiredObject(
            key="view:g:t", family="views",
            create=Template("view_drop.sql.j2", schema="g", view=expression),
            drop=(), semantic={"read": {}})

    same, other = view("t"), view("u")
    assert view("t").input_hash == same.input_hash != other.input_hash
    recorded = same.ledger_hash()
    assert recorded == f"{same.desired_hash}:{same.input_hash}"
    assert same.matches(recorded) and not other.matches(recorded)
    # a ledger written before input hashes: compared by the SQL itself
    assert same.matches(same.desired_hash) and not other.matches(same.desired_hash)
    # inputs changed but the SQL did not (say a template comment): still no update
    assert same.matches(f"{same.desired_hash}:{'0' * 32}")
    assert same.ledger_hash(recorded) == recorded


def test_policy_sql_reads_identity_and_converts_it_once_per_statement() -> None:
    text = "clinic_id = policyc.claim('clinic_id')::int AND owner = policyc.agent()"
    assert normalize(text) == (
        "clinic_id = CAST((SELECT policyc.claim('clinic_id')) AS integer) "
        "AND owner = (SELECT policyc.agent())")
    assert policy_sql(text) == (
        "clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) "
        "AND owner = (SELECT policyc.agent())")
    # a cast of anything else stays where it is
    assert policy_sql("a::int = policyc.claim('x')::int + 1") == (
        "CAST(a AS integer) = (SELECT CAST(policyc.claim('x') AS integer)) + 1")
    with pytest.raises(ValueError, match="does not parse"):
        policy_sql("clinic_id = ")


def test_catalog_reads_leave_session_and_transaction_settings_alone(
    applied_clinic: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = clinic_policy(applied_clinic.name)
    seen: list[str] = []
    fetch = catalog._fetch

    def recording(conn: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        seen.append(str(conn.execute("SHOW jit").fetchone()[0]))
        return fetch(conn, query, params)

    with applied_clinic.connect() as conn:  # autocommit, as the CLI connects
        before = conn.execute("SHOW jit").fetchone()
        monkeypatch.setattr(catalog, "_fetch", recording)
        assert make_plan(conn, policy).empty
        assert set(seen) == {"off"}  # every catalog query ran without JIT
        assert conn.execute("SHOW jit").fetchone() == before
        with conn.transaction():
            conn.execute("SET LOCAL jit = on")
            assert make_plan(conn, policy).empty
            assert conn.execute("SHOW jit").fetchone() == ("on",)
