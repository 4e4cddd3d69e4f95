"""plan/apply against a live database: idempotency, removal, atomic failure, drift, refusals."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from conftest import CLINIC, Database, clinic_policy
from policyc.apply import apply_policy
from policyc.cli import main
from policyc.errors import ApplyError, CatalogError
from policyc.plan import make_plan
from policyc.policy import load_policy, load_policy_text
from policyc.policy.model import TableName


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def _policy_file(tmp_path: Path, database: str, edit: str = "") -> Path:
    text = (CLINIC / "policy.yaml").read_text().replace("database: clinic", f"database: {database}")
    for old, new in (line.split(" => ") for line in edit.splitlines() if line.strip()):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    (tmp_path / "dev-keys").mkdir(exist_ok=True)
    return path


def test_apply_then_reapply_is_a_noop_that_runs_no_ddl(clinic_db: Database) -> None:
    policy = clinic_policy(clinic_db.name)
    with clinic_db.connect() as conn:
        first = apply_policy(conn, policy)
        assert first.executed > 50
        events = conn.execute("SELECT count(*) FROM pg_stat_database").fetchone()
        del events
        conn.execute(
            "CREATE TABLE ddl_log (tag text); CREATE FUNCTION log_ddl() RETURNS event_trigger "
            "LANGUAGE plpgsql AS $$ BEGIN INSERT INTO ddl_log VALUES (tg_tag); END $$; "
            "CREATE EVENT TRIGGER watch ON ddl_command_start EXECUTE FUNCTION log_ddl()"
        )
        second = apply_policy(conn, policy)
        assert second.plan.empty and second.executed == 0
        assert conn.execute("SELECT count(*) FROM ddl_log").fetchone() == (0,)
    code, out = _cli("apply", "--dsn", clinic_db.dsn, str(_policy_file_for(clinic_db)))
    assert (code, out.strip()) == (0, "no changes")


def _policy_file_for(db: Database) -> Path:
    import tempfile

    return _policy_file(Path(tempfile.mkdtemp()), db.name)


def test_plan_check_exit_codes_and_drift_after_manual_grant(clinic_db: Database,
                                                            tmp_path: Path) -> None:
    path = str(_policy_file(tmp_path, clinic_db.name))
    code, out = _cli("plan", "--check", "--dsn", clinic_db.dsn, path)
    assert code == 2 and "HAZARD" in out and "create view:billing:patients" in out
    assert _cli("apply", "--dsn", clinic_db.dsn, path)[0] == 0
    assert _cli("plan", "--check", "--dsn", clinic_db.dsn, path) == (
        0, f"policyc plan: {path} against database {clinic_db.name}\nno changes\n")
    clinic_db.execute("GRANT SELECT ON public.patients TO billing")
    code, out = _cli("plan", "--check", "--json", "--dsn", clinic_db.dsn, path)
    report = json.loads(out)
    assert code == 2 and report["drift"] == 1
    assert report["changes"][0]["statements"] == [
        'REVOKE SELECT ON TABLE "public"."patients" FROM "billing"']
    assert _cli("apply", "--dsn", clinic_db.dsn, path)[0] == 0
    assert clinic_db.execute("SELECT has_table_privilege('billing', 'public.patients', 'SELECT')") \
        == [(False,)]
    assert _cli("plan", "--check", "--dsn", clinic_db.dsn, path)[0] == 0


@pytest.mark.parametrize(
    "tamper",
    [
        "CREATE OR REPLACE VIEW billing.claims AS SELECT * FROM public.claims",
        "GRANT SELECT ON billing.patients TO research",
        "DROP POLICY policyc_billing ON public.patients",
        "ALTER TABLE public.visits DISABLE TRIGGER policyc_audit_update",
        "ALTER ROLE billing SET search_path = public",
        "ALTER ROLE billing CREATEDB",
        "GRANT policyc_owner TO clinician",
        "REVOKE SELECT ON public.patients FROM policyc_owner",
    ],
)
def test_every_kind_of_hand_edit_is_drift_and_apply_restores_it(
    applied_clinic: Database, tamper: str
) -> None:
    policy = clinic_policy(applied_clinic.name)
    with applied_clinic.connect() as conn:
        before = make_plan(conn, policy)
        assert before.empty
        conn.execute(tamper.encode())
        drifted = make_plan(conn, policy)
        assert drifted.drift, tamper
        apply_policy(conn, policy)
        assert make_plan(conn, policy).empty


def test_removed_objects_are_dropped(applied_clinic: Database) -> None:
    policy = clinic_policy(applied_clinic.name)
    smaller = dataclasses.replace(
        policy, groups=tuple(g for g in policy.groups if g.name != "research")
    )
    billing = smaller.group("billing")
    billing_no_rows = dataclasses.replace(
        billing, rows={k: v for k, v in billing.rows.items() if k.name != "claims"}
    )
    smaller = dataclasses.replace(
        smaller, groups=tuple(billing_no_rows if g.name == "billing" else g for g in smaller.groups)
    )
    with applied_clinic.connect() as conn:
        plan = make_plan(conn, smaller)
        actions = {(c.action, c.key) for c in plan.changes}
        assert ("drop", "role:research") in actions
        assert ("drop", "view:research:patients") in actions
        assert ("drop", "rls:public.claims") in actions  # its only filter is gone
        hazards = [h for c in plan.changes for h in c.hazards]
        assert "row filters on public.claims removed" in hazards
        apply_policy(conn, smaller)
        assert make_plan(conn, smaller).empty
    assert applied_clinic.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'research'") == \
        [(0,)]
    assert applied_clinic.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'research'") == [(0,)]
    assert applied_clinic.execute(
        "SELECT relrowsecurity, (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) "
        "FROM pg_class c WHERE oid = 'public.claims'::regclass") == [(False, 0)]


def test_failure_half_way_leaves_the_database_untouched(clinic_db: Database) -> None:
    policy = clinic_policy(clinic_db.name)
    clinician = policy.group("clinician")
    # parses (so check accepts it) but fails when PostgreSQL creates the policy
    broken = dataclasses.replace(
        clinician, rows={**clinician.rows, TableName("public", "notes"): "no_such_column = 1"}
    )
    bad = dataclasses.replace(
        policy, groups=tuple(broken if g.name == "clinician" else g for g in policy.groups)
    )
    snapshot = "SELECT (SELECT count(*) FROM pg_roles), (SELECT count(*) FROM pg_namespace), " \
               "(SELECT count(*) FROM pg_policy), (SELECT count(*) FROM pg_trigger)"
    before = clinic_db.execute(snapshot)
    with clinic_db.connect() as conn, pytest.raises(ApplyError, match="no_such_column"):
        apply_policy(conn, bad)
    assert clinic_db.execute(snapshot) == before
    assert clinic_db.execute("SELECT to_regnamespace('policyc')") == [(None,)]


def test_refuses_another_database(clinic_db: Database, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "production_clinic")
    code, _ = _cli("apply", "--dsn", clinic_db.dsn, str(path))
    assert code == 1
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="production_clinic"):
        apply_policy(conn, load_policy(path))
    assert clinic_db.execute("SELECT to_regnamespace('policyc')") == [(None,)]


def test_missing_table_and_column_are_named_with_location(clinic_db: Database,
                                                          tmp_path: Path) -> None:
    path = _policy_file(
        tmp_path, clinic_db.name,
        "public.claims: \"*\" => public.invoices: \"*\"\n"
        "public.patients: [id, birth_date, zip, clinic_id] => "
        "public.patients: [id, birth_date, zip, clinic_id, shoe_size]",
    )
    policy = load_policy(path)
    with clinic_db.connect() as conn, pytest.raises(CatalogError) as caught:
        make_plan(conn, policy)
    problems = caught.value.problems
    assert any("table public.invoices does not exist" in p and "groups.billing.read" in p
               for p in problems), problems
    assert any("column shoe_size does not exist" in p and f"{path}:" in p for p in problems)


def test_public_grant_on_a_policy_table_is_refused(clinic_db: Database) -> None:
    clinic_db.execute("GRANT SELECT ON public.visits TO PUBLIC")
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="PUBLIC holds SELECT"):
        apply_policy(conn, clinic_policy(clinic_db.name))


def test_existing_unmanaged_role_is_refused(clinic_db: Database) -> None:
    clinic_db.execute("CREATE ROLE billing")
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="role billing already"):
        apply_policy(conn, clinic_policy(clinic_db.name))


def test_mask_that_does_not_fit_the_column_type(clinic_db: Database) -> None:
    text = (CLINIC / "policy.yaml").read_text().replace("database: clinic", "database: x")
    text = text.replace("    zip: zip3\n", "    zip: zip3\n    created_at: partial\n")
    policy = dataclasses.replace(load_policy_text(text, str(CLINIC / "policy.yaml")),
                                 database=clinic_db.name)
    with clinic_db.connect() as conn, pytest.raises(CatalogError, match="partial needs a text"):
        make_plan(conn, policy)


def test_service_credential_is_copied_to_group_roles(applied_clinic: Database) -> None:
    applied_clinic.execute("ALTER ROLE policyc_proxy PASSWORD 'service-secret'")
    policy = clinic_policy(applied_clinic.name)
    with applied_clinic.connect() as conn:
        plan = make_plan(conn, policy)
        assert {c.key for c in plan.drift} == {"role:billing", "role:research", "role:clinician"}
        apply_policy(conn, policy)
    same = applied_clinic.execute(
        "SELECT bool_and(g.rolpassword = s.rolpassword) FROM pg_authid g, pg_authid s "
        "WHERE g.rolname IN ('billing', 'research', 'clinician') AND s.rolname = 'policyc_proxy'"
    )
    assert same == [(True,)]
