"""psycopg 3 and psycopg2 through the real proxy, used the way applications use them:
transactions that hit an error, pipelines, server-side cursors, binary results, composite
types, and the session commands drivers and pools send on their own (issue #12)."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
import pytest

from conftest import Database
from proxyharness import RunningProxy, wait_for

CLINIC_1 = [1, 4, 7, 10, 13]  # the first patients of clinic 1 (the seed deals them round robin)
BILLING_PATIENT_COLUMNS = ["id", "clinic_id", "full_name", "ssn", "birth_date"]


def billing(proxy: RunningProxy, agent: str = "agent-7", autocommit: bool = False,
            **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(agent, "billing", clinic_id=1), autocommit=autocommit,
                           **kwargs)


def test_psycopg_error_inside_a_transaction_is_the_real_error(proxy: RunningProxy) -> None:
    with billing(proxy) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (100,)
        # simple protocol (no parameters): the client must see 42703, not 25P02
        with pytest.raises(psycopg.errors.UndefinedColumn) as simple:
            conn.execute("SELECT nosuchcol FROM patients")
        assert simple.value.sqlstate == "42703"
        assert "nosuchcol" in str(simple.value)
        conn.rollback()
        # extended protocol (parameters)
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedColumn) as extended:
            conn.execute("SELECT nosuchcol FROM patients WHERE id = %s", (1,))
        assert extended.value.sqlstate == "42703"
        conn.rollback()
        # a savepoint (psycopg's nested transaction) keeps the outer transaction going
        with conn.transaction():
            conn.execute("SELECT id FROM patients WHERE id = 1")
            with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction():
                conn.execute("SELECT * FROM nosuchtable")
            row = conn.execute("SELECT id, clinic_id FROM patients WHERE id = 4").fetchone()
        assert row == (4, 1)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_psycopg_pipeline_with_an_error_skips_to_sync(proxy: RunningProxy) -> None:
    with billing(proxy, autocommit=True) as conn:
        with conn.pipeline():
            ids = conn.execute("SELECT id FROM patients WHERE id = ANY(%s) ORDER BY id",
                               (CLINIC_1[:3],))
            other = conn.execute("SELECT id FROM patients WHERE id = %s", (2,))  # clinic 2
            total = conn.execute("SELECT count(*) FROM visits")
        assert ids.fetchall() == [(1,), (4,), (7,)]
        assert other.fetchall() == []
        row = total.fetchone()
        assert row is not None and row[0] > 0
        with pytest.raises(psycopg.errors.UndefinedColumn) as failed, conn.pipeline():
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT nosuchcol FROM patients WHERE id = %s", (1,))
            conn.execute("SELECT %s::int", (2,))
        assert failed.value.sqlstate == "42703"
        assert conn.execute("SELECT %s::text", ("after",)).fetchone() == ("after",)


def test_psycopg_named_server_side_cursor(proxy: RunningProxy) -> None:
    with billing(proxy) as conn:
        with conn.cursor(name="patients_cur", scrollable=True) as cur:
            cur.itersize = 30
            cur.execute("SELECT id, clinic_id, ssn FROM patients ORDER BY id")
            first = cur.fetchmany(10)
            cur.scroll(0, mode="absolute")  # MOVE ABSOLUTE 0
            again = cur.fetchone()
            rest = cur.fetchall()
        conn.commit()
        assert [r[0] for r in first] == list(range(1, 30, 3))
        assert again == first[0]
        assert len(rest) == 99 and {r[1] for r in rest} == {1}
        assert all(len(r[2]) == 64 for r in first + rest)  # HMAC pseudonyms, not SSNs
        # a cursor WITH HOLD outlives its transaction
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute("SELECT id FROM visits ORDER BY id")
            conn.commit()
            held = cur.fetchall()
        assert len(held) > 100


def test_psycopg_binary_results(proxy: RunningProxy) -> None:
    with billing(proxy, autocommit=True) as conn, conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, clinic_id, birth_date, ssn FROM patients WHERE id = %s", (4,))
        row = cur.fetchone()
        assert cur.pgresult is not None
        assert [cur.pgresult.fformat(i) for i in range(4)] == [1, 1, 1, 1]
        cur.execute("SELECT array_agg(id ORDER BY id) FROM patients WHERE id < 14")
        ids = cur.fetchone()
    assert row is not None
    assert row[:2] == (4, 1)
    assert isinstance(row[2], datetime.date) and (row[2].month, row[2].day) == (1, 1)  # year
    assert len(row[3]) == 64
    assert ids == (CLINIC_1,)


def test_psycopg_composite_of_the_view_row_type(proxy: RunningProxy) -> None:
    from psycopg.types.composite import CompositeInfo, register_composite

    with billing(proxy, autocommit=True) as conn:
        info = CompositeInfo.fetch(conn, "patients")  # resolved on the group's search_path
        assert info is not None
        assert list(info.field_names) == BILLING_PATIENT_COLUMNS
        schema = conn.execute("SELECT typnamespace::regnamespace::text FROM pg_type "
                              "WHERE oid = %s", (info.oid,)).fetchone()
        assert schema == ("billing",)
        register_composite(info, conn)
        row = conn.execute("SELECT p FROM patients p ORDER BY id LIMIT 1").fetchone()
        rows = conn.execute("SELECT array_agg(p ORDER BY id) FROM patients p "
                            "WHERE id = ANY(%s)", (CLINIC_1[:2],)).fetchone()
    assert row is not None and rows is not None
    patient = row[0]
    assert type(patient).__name__ == "patients"
    assert (patient.id, patient.clinic_id) == (1, 1)
    assert len(patient.ssn) == 64 and patient.birth_date.month == 1
    assert [p.id for p in rows[0]] == CLINIC_1[:2]


def test_psycopg_session_commands_drivers_and_pools_send(proxy: RunningProxy) -> None:
    """Every command here is sent unasked by a driver, pool or tool; each must work and
    leave the session's identity and pinned settings where they were."""
    failures: dict[str, str] = {}
    with billing(proxy, autocommit=True) as conn:
        for command in (
            "SELECT current_setting('jit'), set_config('jit', 'off', false)",  # asyncpg
            "SET work_mem = '8MB'", "SET jit = off", "SET search_path TO billing",
            "SET search_path = billing, pg_catalog", "SHOW ALL", "RESET ALL", "DISCARD ALL",
        ):
            try:
                conn.execute(command)
            except psycopg.Error as error:
                failures[command] = f"{error.sqlstate}: {str(error).splitlines()[0]}"
        assert conn.execute(
            "SELECT current_user, policyc.agent(), current_setting('standard_conforming_strings'),"
            " current_schemas(false)").fetchone() == ("billing", "agent-7", "on", ["billing"])
        # what is harmless is allowed; what escapes the group's schema or role still is not
        for attack in ("SET search_path TO public", "SET search_path TO billing, public",
                       "SELECT set_config('search_path', 'public', false)",
                       "SELECT set_config('role', 'postgres', false)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (100,)
    assert not failures, failures


def test_psycopg_show_all_lists_settings(proxy: RunningProxy) -> None:
    with billing(proxy, autocommit=True) as conn:
        rows = conn.execute("SHOW ALL").fetchall()
    settings = {name: value for name, value, _ in rows}
    assert settings["standard_conforming_strings"] == "on"
    assert settings["search_path"] == "billing"
    assert len(settings) > 300


# --- psycopg2 ---------------------------------------------------------------------------


def psycopg2_connect(proxy: RunningProxy) -> Any:
    psycopg2 = pytest.importorskip("psycopg2")
    return psycopg2.connect(proxy.dsn("agent-2", "billing", clinic_id=1))


def test_psycopg2_query_and_error_in_transaction(proxy: RunningProxy) -> None:
    errors = pytest.importorskip("psycopg2.errors")
    conn = psycopg2_connect(proxy)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, clinic_id, ssn FROM patients WHERE id = ANY(%s) ORDER BY id",
                        ([*CLINIC_1, 2, 3],))
            rows = cur.fetchall()
            assert [r[:2] for r in rows] == [(i, 1) for i in CLINIC_1]
            assert all(len(r[2]) == 64 for r in rows)
            with pytest.raises(errors.UndefinedColumn) as failed:
                cur.execute("SELECT nosuchcol FROM patients")
            assert failed.value.pgcode == "42703"
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), current_user FROM patients")
            assert cur.fetchone() == (100, "billing")
        conn.commit()
    finally:
        conn.close()


def test_psycopg2_register_composite_needs_the_group_schema(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    """psycopg2 looks an unqualified name up in schema ``public`` (not on the search_path),
    which finds the base table's row type; pass the group's view type, ``billing.patients``."""
    register_composite = pytest.importorskip("psycopg2.extras").register_composite

    conn = psycopg2_connect(proxy)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 'billing.patients'::regtype::oid, 'public.patients'::regtype::oid")
            view_oid, table_oid = cur.fetchone()
            # the recipe: the group's schema-qualified view type
            caster = register_composite("billing.patients", conn)
            assert (caster.schema, caster.name, caster.oid) == ("billing", "patients", view_oid)
            assert caster.attnames == BILLING_PATIENT_COLUMNS
            cur.execute("SELECT p FROM patients p ORDER BY id LIMIT 1")
            (patient,) = cur.fetchone()
            assert (patient.id, patient.clinic_id) == (1, 1)
            assert len(patient.ssn) == 64 and patient.birth_date.month == 1
            # the call: psycopg2 registers public.patients, which no query of the
            # group returns, so the group's rows stay strings
            wrong = register_composite("patients", conn, globally=False)
            assert (wrong.schema, wrong.oid) == ("public", table_oid) and table_oid != view_oid
        conn.rollback()
    finally:
        conn.close()
    # the audit trail shows the lookup psycopg2 sent: by name in schema public
    lookups = wait_for(lambda: applied_clinic.execute(
        "SELECT statement FROM audit.statements WHERE agent = 'agent-2' "
        "AND statement LIKE '%%FROM pg_type t%%' ORDER BY seq"))
    assert len(lookups) == 2 and "nspname = 'billing'" in lookups[0][0]
    assert "typname = 'patients' AND nspname = 'public'" in lookups[1][0]


def test_psycopg2_named_cursor_and_writes(applied_clinic: Database,
                                          proxy: RunningProxy) -> None:
    pytest.importorskip("psycopg2")
    conn = psycopg2_connect(proxy)
    try:
        with conn.cursor("named") as cur:
            cur.itersize = 25
            cur.execute("SELECT id FROM patients ORDER BY id")
            ids = [r[0] for r in cur]
        assert ids[:5] == CLINIC_1 and len(ids) == 100
        with conn.cursor() as cur:
            cur.execute("INSERT INTO claims (patient_id, amount, code) VALUES (%s, %s, %s) "
                        "RETURNING id, status", (4, 12.5, "PG2"))
            claim_id, status = cur.fetchone()
        conn.commit()
        assert status == "submitted"
    finally:
        conn.close()
    assert applied_clinic.execute("SELECT patient_id, code FROM public.claims WHERE id = %s",
                                  (claim_id,)) == [(4, "PG2")]
