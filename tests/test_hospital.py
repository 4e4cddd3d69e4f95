"""A real multi-table clinical schema (two schemas, 30+ tables, six groups): the policy applies,
re-applies as a no-op, and every group's view of every table is exactly what the policy says —
columns, masks (checked against an independent Python oracle) and rows."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import HOSPITAL, Database, register
from masks_oracle import Oracle
from policyc.apply import apply_policy
from policyc.catalog import load_tables
from policyc.plan import make_plan
from policyc.policy import load_policy
from policyc.policy.model import ALL_COLUMNS, ColumnRef, Group, Policy

CLAIMS = {"department_id": 2}


@pytest.fixture(scope="module")
def hospital_policy() -> Policy:
    return load_policy(HOSPITAL / "policy.yaml")


@pytest.fixture
def hospital(db: Database, hospital_policy: Policy) -> tuple[Database, Policy]:
    with db.connect() as conn:
        conn.execute((HOSPITAL / "schema.sql").read_text().encode())
        conn.execute((HOSPITAL / "seed.sql").read_text().encode())
    policy = dataclasses.replace(hospital_policy, database=db.name)
    with db.connect() as conn:
        result = apply_policy(conn, policy)
        assert result.executed > 100
    return db, policy


@pytest.mark.slow
def test_hospital_reapply_is_noop(hospital: tuple[Database, Policy]) -> None:
    db, policy = hospital
    assert len(policy.groups) >= 5
    with db.connect() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname IN ('clinical', 'finance')"
        ).fetchone()
        assert tables is not None and tables[0] >= 30
        again = apply_policy(conn, policy)
        assert again.plan.empty and again.executed == 0
        assert make_plan(conn, policy).empty


def _filter_sql(group: Group, table: Any) -> str:
    text = group.rows.get(table)
    if text is None:
        return "true"
    return text.replace("policyc.claim('department_id')", f"'{CLAIMS['department_id']}'")


@pytest.mark.slow
def test_every_group_sees_exactly_its_policy(hospital: tuple[Database, Policy]) -> None:
    db, policy = hospital
    with db.connect() as admin:
        oracle = Oracle(bytes(admin.execute("SELECT ipad FROM policyc.hmac_key").fetchone()[0]))
        catalog = load_tables(admin, {t for g in policy.groups for t in g.tables()})
    checked_masks: set[str] = set()
    for group in policy.groups:
        with db.connect(group.name) as conn:
            register(db, conn, f"agent-{group.name}", group.name, CLAIMS)
            total = 0
            for table_name in sorted(group.read):
                table = catalog[table_name]
                spec = group.read[table_name]
                columns = list(table.column_names) if spec is ALL_COLUMNS else [
                    c for c in table.column_names if c in spec]  # type: ignore[operator]
                order = sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key)
                select = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    sql.Identifier(table_name.name), order)
                seen = conn.execute(select).fetchall()
                base = admin_rows(db, table_name, columns, order, _filter_sql(group, table_name))
                assert len(seen) == len(base), (group.name, str(table_name))
                total += len(seen)
                for got_row, raw_row in zip(seen, base, strict=True):
                    for column, got, raw in zip(columns, got_row, raw_row, strict=True):
                        ref = ColumnRef(table_name, column)
                        mask = policy.mask_of(ref)
                        if mask is None or ref in group.unmask:
                            assert got == raw, (group.name, str(ref))
                        else:
                            type_name = table.column(column).type_name  # type: ignore[union-attr]
                            assert got == oracle.expected(mask.value, raw, type_name), (
                                group.name, str(ref), mask.value)
                            checked_masks.add(mask.value)
                hidden = [c for c in table.column_names if c not in columns]
                for column in hidden:
                    with pytest.raises(psycopg.errors.Error):
                        conn.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(
                            sql.Identifier(column), sql.Identifier(table_name.name)))
            assert total > 0, f"group {group.name} saw no rows at all"
    assert checked_masks == {"redact", "hash", "partial", "year", "month", "zip3", "age90",
                             "null"}


def admin_rows(db: Database, table: Any, columns: list[str], order: sql.Composable,
               condition: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(table.schema, table.name), sql.SQL(condition), order)  # type: ignore[arg-type]
    with db.connect() as conn:
        return conn.execute(query).fetchall()
