"""Warnings about writable references a row filter leaves open (issue #11, class 10).

``policyc plan`` and ``apply`` read the foreign keys of the live database and warn when a group
may write a column that references a table row-filtered for it while its own filter on the
written table does not mention that column; ``policyc check`` (offline) warns when a group that
filters rows writes a table it does not filter at all.  Warnings carry file:line:key and never
fail a command.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from conftest import CLINIC, Database
from policyc.apply import apply_policy
from policyc.cli import main
from policyc.errors import Problem
from policyc.plan import make_plan
from policyc.policy import load_policy_text
from policyc.policy.model import Policy, TableName
from policyc.policy.rowfilter import filter_mentions, unfiltered_write_warnings

EXAMPLE = (CLINIC / "policy.yaml").read_text()

# the filter the clinic example shipped with before issue #11: only patient_id is constrained
OLD_CLAIMS_FILTER = (
    "      public.claims: \"patient_id IN (SELECT p.id FROM public.patients p\n"
    "        WHERE p.clinic_id = policyc.claim('clinic_id')::int)\"\n"
)


def _claims_filter_lines(text: str) -> tuple[int, int]:
    """(first, last) 0-based line index of billing's claims filter in the example."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("      public.claims: \"patient_id"))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith('"'))
    return start, end


def _edited(database: str, *edits: tuple[str, str], old_claims: bool = False) -> Policy:
    text = EXAMPLE.replace("database: clinic", f"database: {database}")
    if old_claims:
        start, end = _claims_filter_lines(text)
        lines = text.splitlines(keepends=True)
        text = "".join([*lines[:start], OLD_CLAIMS_FILTER, *lines[end + 1:]])
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return load_policy_text(text, source="policy.yaml", base_dir=CLINIC)


def _line_of(policy_text_key: str, policy: Policy) -> int:
    return policy.where(policy_text_key).line


def _keys(warnings: tuple[Problem, ...] | list[Problem]) -> list[str]:
    return [w.location.key for w in warnings]


# --- offline parts (no database) ----------------------------------------------------------


def test_filter_mentions_counts_unqualified_and_table_qualified_columns() -> None:
    claims = TableName("public", "claims")
    assert filter_mentions(
        "patient_id IN (SELECT p.id FROM public.patients p WHERE p.clinic_id = 1) "
        "AND EXISTS (SELECT 1 FROM public.visits v WHERE v.id = claims.visit_id "
        "AND v.patient_id = public.claims.patient_id)", claims,
    ) == {"patient_id", "visit_id"}  # p.id, v.id ... belong to the subqueries' tables
    # a column of another relation, qualified with its alias, is not a mention
    assert "visit_id" not in filter_mentions(
        "EXISTS (SELECT 1 FROM public.visits v WHERE v.visit_id = 1)", claims)
    assert filter_mentions("claims.* IS NOT NULL", claims) == frozenset()


def test_the_shipped_example_has_no_offline_warning() -> None:
    policy = load_policy_text(EXAMPLE, source="policy.yaml", base_dir=CLINIC)
    assert unfiltered_write_warnings(policy) == []


def test_check_warns_offline_when_a_filtering_group_writes_an_unfiltered_table() -> None:
    start, end = _claims_filter_lines(EXAMPLE)
    lines = EXAMPLE.splitlines(keepends=True)
    text = "".join([*lines[:start], *lines[end + 1:]])  # billing no longer filters claims
    policy = load_policy_text(text, source="policy.yaml", base_dir=CLINIC)
    warnings = unfiltered_write_warnings(policy)
    assert _keys(warnings) == ["groups.billing.write.public.claims"]
    warning = warnings[0]
    assert warning.location.line == _line_of("groups.billing.write.public.claims", policy)
    assert warning.location.file == "policy.yaml"
    assert "without a row filter" in warning.message
    assert "public.patients, public.visits" in warning.message
    assert str(warning).startswith(f"policy.yaml:{warning.location.line}: "
                                   "groups.billing.write.public.claims: group billing writes")


# --- plan / apply against the live catalog ------------------------------------------------


def test_old_example_claims_filter_warns_and_the_fixed_one_is_silent(clinic_db: Database) -> None:
    old = _edited(clinic_db.name, old_claims=True)
    fixed = _edited(clinic_db.name)
    with clinic_db.connect() as conn:
        warned = make_plan(conn, old).warnings
        silent = make_plan(conn, fixed).warnings
    assert silent == ()
    assert _keys(warned) == ["groups.billing.write.public.claims.insert.visit_id"]
    warning = warned[0]
    assert warning.location.file == "policy.yaml"
    assert warning.location.line == EXAMPLE.splitlines().index(
        "      public.claims: {insert: [patient_id, visit_id, amount, code], update: [status], "
        "delete: false}") + 1
    assert "public.claims.visit_id" in warning.message
    assert "public.visits (foreign key claims_visit_id_fkey)" in warning.message
    assert "groups.billing.rows.public.claims" in warning.message
    assert "does not mention visit_id" in warning.message


def test_a_composite_key_with_the_tenant_column_is_constrained_by_a_tenant_filter(
    clinic_db: Database,
) -> None:
    """visits reference patients by (patient_id, clinic_id): clinicians' filter on clinic_id
    confines the reference (the shipped example is silent); without any visits filter it is
    open, and the warning names the composite key."""
    policy = _edited(clinic_db.name)
    clinician = policy.group("clinician")
    open_visits = dataclasses.replace(policy, groups=tuple(
        dataclasses.replace(g, rows={t: e for t, e in g.rows.items() if t.name != "visits"})
        if g is clinician else g for g in policy.groups))
    with clinic_db.connect() as conn:
        assert make_plan(conn, policy).warnings == ()
        warnings = make_plan(conn, open_visits).warnings
    assert _keys(warnings) == ["groups.clinician.write.public.visits.insert.patient_id"]
    assert "public.visits.patient_id, clinic_id" in warnings[0].message
    assert "(foreign key visits_patient_id_clinic_id_fkey)" in warnings[0].message
    assert "it has no row filter on public.visits" in warnings[0].message


def test_no_filter_on_the_written_table_and_star_columns(clinic_db: Database) -> None:
    policy = _edited(
        clinic_db.name,
        ("public.claims: {insert: [patient_id, visit_id, amount, code], update: [status], "
         "delete: false}", "public.claims: {insert: \"*\", update: [status], delete: false}"),
    )
    billing = policy.group("billing")
    policy = dataclasses.replace(policy, groups=tuple(
        dataclasses.replace(g, rows={t: e for t, e in g.rows.items() if t.name != "claims"})
        if g is billing else g for g in policy.groups))
    with clinic_db.connect() as conn:
        warnings = make_plan(conn, policy).warnings
    # both references are open; "*" has no per-column key, so the insert list is named
    assert _keys(warnings) == ["groups.billing.write.public.claims.insert"] * 2
    assert all("it has no row filter on public.claims" in w.message for w in warnings)
    assert {w.message.split(" (foreign key ")[1].split(")")[0] for w in warnings} == {
        "claims_patient_id_fkey", "claims_visit_id_fkey"}


def test_a_reference_into_an_unfiltered_table_is_not_warned(clinic_db: Database) -> None:
    """A group that sees every row of the referenced table learns nothing from the reference."""
    policy = _edited(clinic_db.name, old_claims=True)
    billing = policy.group("billing")
    policy = dataclasses.replace(policy, groups=tuple(
        dataclasses.replace(g, rows={t: e for t, e in g.rows.items() if t.name != "visits"})
        if g is billing else g for g in policy.groups))
    with clinic_db.connect() as conn:
        assert make_plan(conn, policy).warnings == ()


def test_apply_reports_the_warning_and_still_applies(clinic_db: Database) -> None:
    old = _edited(clinic_db.name, old_claims=True)
    with clinic_db.connect() as conn:
        result = apply_policy(conn, old)
        assert result.executed > 0
        assert _keys(result.plan.warnings) == [
            "groups.billing.write.public.claims.insert.visit_id"]
        # a no-op re-apply still says it: the hole is in the policy, not in pending changes
        again = apply_policy(conn, old)
        assert again.executed == 0 and len(again.plan.warnings) == 1


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_cli_plan_prints_the_warning_and_exits_0(clinic_db: Database, tmp_path: Path) -> None:
    start, end = _claims_filter_lines(EXAMPLE)
    lines = EXAMPLE.replace("database: clinic", f"database: {clinic_db.name}").splitlines(
        keepends=True)
    path = tmp_path / "policy.yaml"
    path.write_text("".join([*lines[:start], OLD_CLAIMS_FILTER, *lines[end + 1:]]))
    (tmp_path / "dev-keys").mkdir()
    (tmp_path / "dev-keys" / "jwks.json").write_text(
        (CLINIC / "dev-keys" / "jwks.json").read_text())
    assert _cli("apply", "--dsn", clinic_db.dsn, str(path))[0] == 0
    code, out = _cli("plan", "--check", "--dsn", clinic_db.dsn, str(path))
    assert code == 0
    assert (f"warning: {path}:") in out
    assert "groups.billing.write.public.claims.insert.visit_id" in out
