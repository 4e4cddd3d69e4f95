"""pgcli through the real proxy: the metadata queries behind its completion (schemata,
tables, views, columns, functions, data types, foreign keys, search path) and a special
command.  These read the catalog: thousands of rows, which the row limit (billing's
``rows_over`` is 1000) must neither hold nor cut (issue #12)."""

from __future__ import annotations

from typing import Any

import pytest

from proxyharness import RunningProxy

VIEWS = {("billing", "claims"), ("billing", "patients"), ("billing", "visits")}


def executor(proxy: RunningProxy) -> Any:
    pgexecute = pytest.importorskip("pgcli.pgexecute")
    return pgexecute.PGExecute(dsn=proxy.dsn("cli-1", "billing", clinic_id=1))


def test_pgcli_completion_metadata(proxy: RunningProxy) -> None:
    pgcli = executor(proxy)
    try:
        assert pgcli.search_path() == ["pg_catalog", "billing"]
        assert "billing" in pgcli.schemata()
        views = set(pgcli.views())
        assert views >= VIEWS
        assert not {v for v in views if v[0] == "billing"} - VIEWS
        tables = list(pgcli.tables())
        assert not [t for t in tables if t[0] == "billing"]  # the group has views only
        columns = list(pgcli.view_columns())
        billing_patients = [c[2] for c in columns if c[:2] == ("billing", "patients")]
        assert billing_patients == ["id", "clinic_id", "full_name", "ssn", "birth_date"]
        assert len(columns) > 1000  # every view's columns: catalog rows, not the row limit's
        functions = list(pgcli.functions())
        assert len(functions) > 1000
        assert ("policyc", "claim") in {(f.schema_name, f.func_name) for f in functions}
        datatypes = list(pgcli.datatypes())
        assert all(schema not in ("pg_catalog", "information_schema")
                   for schema, _ in datatypes)
        list(pgcli.foreignkeys())  # runs; the group's views carry no constraints
        table_columns = list(pgcli.table_columns())
        assert len(table_columns) > 1000
        # the session is still usable and its data still filtered
        _title, rows, _headers, status = next(iter(pgcli.run("SELECT count(*) FROM patients")))[:4]
        assert list(rows) == [(100,)] and status == "SELECT 1"
    finally:
        pgcli.conn.close()


def test_pgcli_special_commands(proxy: RunningProxy) -> None:
    """``\\dv`` and ``\\d NAME`` run pgspecial's catalog queries (as psql's would)."""
    special = pytest.importorskip("pgspecial.main").PGSpecial()
    pgcli = executor(proxy)
    try:
        results = list(pgcli.run("\\dv", pgspecial=special))
        assert results, "\\dv returned nothing"
        _title, rows, headers, _status = results[0][:4]
        listed = {(row[0], row[1]) for row in rows}
        assert listed >= VIEWS and headers[:2] == ["Schema", "Name"]
        described = list(pgcli.run("\\d patients", pgspecial=special))
        names = [row[0] for row in described[0][1]]
        assert names == ["id", "clinic_id", "full_name", "ssn", "birth_date"]
    finally:
        pgcli.conn.close()
