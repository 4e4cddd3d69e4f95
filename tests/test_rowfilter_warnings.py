"""``policyc plan`` warns, at the filter's line in the policy, when a row filter makes every
statement scan a large table (it searches it only by columns no index starts with) or calls a
function once per row that could run once per statement (issue #14).  On real PostgreSQL:
table sizes are the catalog's estimates after ANALYZE, indexes and volatility its own.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from conftest import CLINIC, Database
from policyc.cli import main
from policyc.compiler.filterreads import filter_reads
from policyc.errors import Problem
from policyc.plan import LARGE_TABLE_ROWS, make_plan
from policyc.policy import load_policy_text
from policyc.policy.model import Policy, TableName

EXAMPLE = (CLINIC / "policy.yaml").read_text()
BIG = TableName("public", "big")


def _policy(database: str, big_filter: str) -> tuple[Policy, int]:
    """The clinic example with billing reading ``public.big`` through ``big_filter``; the
    policy and the 1-based line of that filter."""
    lines = EXAMPLE.replace("database: clinic", f"database: {database}").splitlines(
        keepends=True)
    read = lines.index('      public.claims: "*"\n')
    lines.insert(read + 1, '      public.big: "*"\n')
    rows = next(i for i in range(read, len(lines)) if lines[i] == "    rows:\n")
    lines.insert(rows + 1, f'      public.big: "{big_filter}"\n')
    policy = load_policy_text("".join(lines), source="policy.yaml", base_dir=CLINIC)
    return policy, rows + 2


def _make_big(db: Database, rows: int) -> None:
    db.execute("CREATE TABLE public.big (id int PRIMARY KEY, clinic int NOT NULL, "
               "made timestamptz NOT NULL DEFAULT now())")
    db.execute("INSERT INTO public.big (id, clinic) SELECT g, g %% 3 + 1 "
               "FROM generate_series(1, %s::int) g", (rows,))
    db.execute("ANALYZE public.big")


def _filter_warnings(db: Database, policy: Policy) -> list[Problem]:
    with db.connect() as conn:
        warnings = make_plan(conn, policy).warnings
    return [w for w in warnings if w.location.key.startswith("groups.billing.rows.public.big")]


def test_the_shipped_example_has_no_warning(clinic_db: Database) -> None:
    with clinic_db.connect() as conn:
        assert make_plan(conn, load_policy_text(
            EXAMPLE.replace("database: clinic", f"database: {clinic_db.name}"),
            source="policy.yaml", base_dir=CLINIC)).warnings == ()


def test_an_unindexed_search_of_a_large_table_warns_at_the_filter_line(
    clinic_db: Database,
) -> None:
    _make_big(clinic_db, 2 * LARGE_TABLE_ROWS)
    policy, line = _policy(clinic_db.name, "clinic = policyc.claim('clinic_id')::int")
    warnings = _filter_warnings(clinic_db, policy)
    assert len(warnings) == 1, warnings
    warning = warnings[0]
    assert (warning.location.file, warning.location.line) == ("policy.yaml", line)
    assert EXAMPLE.count("public.big") == 0 and policy.where(
        "groups.billing.rows.public.big").line == line
    assert "searches public.big (about 20,000 rows) by clinic" in warning.message
    assert "CREATE INDEX ON public.big (clinic)" in warning.message
    assert str(warning).startswith(f"policy.yaml:{line}: groups.billing.rows.public.big: ")
    # an index that starts with the column: silent
    clinic_db.execute("CREATE INDEX big_clinic_idx ON public.big (clinic)")
    assert _filter_warnings(clinic_db, policy) == []


def test_a_small_table_or_an_indexed_search_is_silent(clinic_db: Database) -> None:
    _make_big(clinic_db, LARGE_TABLE_ROWS // 10)
    policy, _ = _policy(clinic_db.name, "clinic = policyc.claim('clinic_id')::int")
    assert _filter_warnings(clinic_db, policy) == []
    clinic_db.execute("INSERT INTO public.big (id, clinic) SELECT g, 1 "
                      "FROM generate_series(%s::int, %s::int) g",
                      (LARGE_TABLE_ROWS, 3 * LARGE_TABLE_ROWS))
    clinic_db.execute("ANALYZE public.big")
    # by its primary key (and a correlated subquery on it): an index probe, no warning
    policy, _ = _policy(clinic_db.name, "id = policyc.claim('clinic_id')::int OR EXISTS "
                        "(SELECT 1 FROM public.big b WHERE b.id = big.id + 1 AND b.clinic = 2)")
    assert _filter_warnings(clinic_db, policy) == []
    # a subquery that searches the large table by an unindexed column warns, about that table
    policy, _ = _policy(clinic_db.name, "id IN (SELECT b.id FROM public.big b "
                        "WHERE b.clinic = policyc.claim('clinic_id')::int)")
    warnings = _filter_warnings(clinic_db, policy)
    assert len(warnings) == 1 and "by clinic, id" not in warnings[0].message
    assert "searches public.big" in warnings[0].message


@pytest.mark.parametrize(("text", "call"), [
    ("clinic = abs(policyc.claim('clinic_id')::int)", "abs(CAST(policyc.claim('clinic_id')"),
    ("made > now() - interval '10 years'", "now()"),
    ("clinic = length(policyc.agent())", "length(policyc.agent())"),
    ("clinic::text = policyc.claim(clinic::text)", "policyc.claim(CAST(clinic AS text))"),
])
def test_a_function_that_runs_per_row_but_could_run_once_warns(
    clinic_db: Database, text: str, call: str,
) -> None:
    _make_big(clinic_db, 10)
    policy, line = _policy(clinic_db.name, text)
    warnings = _filter_warnings(clinic_db, policy)
    assert len(warnings) == 1, warnings
    assert warnings[0].location.line == line
    assert f"calls {call}" in warnings[0].message
    assert "once for every row" in warnings[0].message


@pytest.mark.parametrize("text", [
    "clinic = policyc.claim('clinic_id')::int",  # the compiler's InitPlan
    "clinic = (SELECT abs(policyc.claim('clinic_id')::int))",  # wrapped by the author
    "clinic = abs(-1)",  # immutable of constants: folded when planned
    "made > (SELECT now()) - interval '10 years'",
    "clinic = abs(id)",  # reads the row: cannot run once
    "id IN (SELECT max(b.id) FROM public.big b)",  # an aggregate
])
def test_calls_that_run_once_or_must_run_per_row_are_silent(
    clinic_db: Database, text: str,
) -> None:
    _make_big(clinic_db, 10)
    policy, _ = _policy(clinic_db.name, text)
    assert _filter_warnings(clinic_db, policy) == []


def test_filter_reads_of_the_claims_filter() -> None:
    policy = load_policy_text(EXAMPLE, source="policy.yaml", base_dir=CLINIC)
    claims = TableName("public", "claims")
    reads = filter_reads(policy.group("billing").rows[claims], claims)
    assert reads is not None and reads.calls == ()
    searched = {str(r.table): r.searched for r in reads.relations}
    # claims.visit_id is only the outer side of the visits subquery's correlation
    assert searched == {"public.claims": {"patient_id"}, "public.patients": {"clinic_id"},
                        "public.visits": {"id", "patient_id", "clinic_id"}}


def test_cli_plan_prints_the_warning_with_its_line(clinic_db: Database, tmp_path: Path) -> None:
    _make_big(clinic_db, 2 * LARGE_TABLE_ROWS)
    lines = EXAMPLE.replace("database: clinic", f"database: {clinic_db.name}").splitlines(
        keepends=True)
    read = lines.index('      public.claims: "*"\n')
    lines.insert(read + 1, '      public.big: "*"\n')
    rows = next(i for i in range(read, len(lines)) if lines[i] == "    rows:\n")
    lines.insert(rows + 1, '      public.big: "clinic = 2"\n')
    path = tmp_path / "policy.yaml"
    path.write_text("".join(lines))
    (tmp_path / "dev-keys").mkdir()
    (tmp_path / "dev-keys" / "jwks.json").write_text(
        (CLINIC / "dev-keys" / "jwks.json").read_text())
    out = io.StringIO()
    assert main(["plan", "--dsn", clinic_db.dsn, str(path)], out=out) == 0
    assert f"warning: {path}:{rows + 2}: groups.billing.rows.public.big: " in out.getvalue()
