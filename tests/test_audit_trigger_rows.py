"""The row-change trigger of runtime 0.4.0 (issue #6: cheaper) writes exactly what 0.3.0's
wrote: the same jsonb rows with the same PHI pseudonyms, so one trail holds both and
``audit.verify()`` checks them alike.  Also what 0.3.0 got wrong: a table whose columns are
named like the trigger's own aliases (``n``, ``o``) was recorded as the value of that column,
in clear, instead of the row."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Database, apply_at_runtime, clinic_policy
from policyc import audittrail
from policyc.apply import apply_policy
from policyc.resources import plpython_dir

pytestmark = pytest.mark.db

PHI = ["birth_date", "email", "full_name", "phone", "ssn", "zip", "extra", "score", "missing"]


def install_0_3_0_trigger(db: Database) -> None:
    """0.3.0's trigger body, frozen in plpython/, as a function of its own."""
    body = (plpython_dir() / "audit_row_changes_0_3_0.py").read_text()
    db.execute(
        "CREATE FUNCTION policyc.audit_row_changes_0_3_0() RETURNS trigger "
        "LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        f"AS $plpython$\n{body}\n$plpython$")


def audited_copy(db: Database, table: str, function: str, pk: list[str], phi: list[str],
                 definition: str) -> None:
    db.execute(f"CREATE TABLE public.{table} {definition}")
    args = f"'{json.dumps(pk)}', '{json.dumps(phi)}'"
    for event, tables in (("INSERT", "NEW TABLE AS policyc_new"),
                          ("UPDATE", "OLD TABLE AS policyc_old NEW TABLE AS policyc_new"),
                          ("DELETE", "OLD TABLE AS policyc_old")):
        db.execute(f"CREATE TRIGGER audit_{event.lower()} AFTER {event} ON public.{table} "
                   f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION "
                   f"{function}({args})")


def recorded(db: Database, table: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT operation, old_row, new_row FROM audit.row_changes WHERE table_name = %s "
        "ORDER BY id", (f"public.{table}",))


PATIENTS_COPY = (
    "(LIKE public.patients INCLUDING ALL, extra jsonb, score numeric)")

# One session, so the second trigger works from its statement cache, across column changes.
WORKLOAD = [
    "INSERT INTO public.{t} SELECT p.*, CASE WHEN p.id % 3 = 0 THEN "
    "jsonb_build_object('k', p.id, 's', 'x\"y') END, p.id / 7.0 FROM public.patients p",
    # some PHI changed, some set to NULL, some untouched: old pseudonyms reused or not
    "UPDATE public.{t} SET phone = CASE WHEN id % 2 = 0 THEN '555-0100' END, "
    "full_name = full_name || 'x', email = NULL, score = score * 2 WHERE id % 5 <> 0",
    "UPDATE public.{t} SET id = id + 100000 WHERE id % 50 = 0",  # key changed: unpaired rows
    "ALTER TABLE public.{t} DROP COLUMN clinic_id",
    "UPDATE public.{t} SET zip = '99999' WHERE id < 40",
    "ALTER TABLE public.{t} ADD COLUMN late text",
    "UPDATE public.{t} SET late = 'l', ssn = ssn WHERE id < 20",
    "DELETE FROM public.{t} WHERE id % 4 = 0",
]


def test_rows_are_the_same_as_runtime_0_3_0_wrote(applied_clinic: Database) -> None:
    db = applied_clinic
    install_0_3_0_trigger(db)
    audited_copy(db, "p_old", "policyc.audit_row_changes_0_3_0", ["id"], PHI, PATIENTS_COPY)
    audited_copy(db, "p_new", "policyc.audit_row_changes", ["id"], PHI, PATIENTS_COPY)
    for table in ("p_old", "p_new"):
        with db.connect() as conn:
            for statement in WORKLOAD:
                conn.execute(statement.replace("{t}", table).encode())
    old, new = recorded(db, "p_old"), recorded(db, "p_new")
    assert len(new) > 600 and new == old
    updates = [r for r in new if r[0] == "UPDATE"]
    assert any(r[1] is None for r in updates) and any(r[2] is None for r in updates)
    # the statement cache follows the table's columns: dropped and added ones
    deletes = [r[1] for r in new if r[0] == "DELETE"]
    assert deletes and all("late" in r and "clinic_id" not in r for r in deletes)
    # PHI of every kind is a pseudonym, a missing PHI column a null key, as before
    first = new[0][2]
    assert len(first["ssn"]) == len(first["birth_date"]) == 64 and first["missing"] is None
    assert "x\\\"y" not in json.dumps(new) and "555-0100" not in json.dumps(new)
    assert db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    with db.connect() as conn:
        assert audittrail.verify(conn) == []


def test_tables_without_a_primary_key_the_same_as_0_3_0(applied_clinic: Database) -> None:
    db = applied_clinic
    install_0_3_0_trigger(db)
    for table, function in (("k_old", "policyc.audit_row_changes_0_3_0"),
                            ("k_new", "policyc.audit_row_changes")):
        audited_copy(db, table, function, [], ["a", "c"], "(a text, b int, c date)")
        with db.connect() as conn:
            conn.execute(f"INSERT INTO public.{table} VALUES ('x', 1, '2020-02-29'), "
                         "(NULL, NULL, NULL), ('y', 2, NULL)".encode())
            conn.execute(f"UPDATE public.{table} SET b = 5, a = upper(a)".encode())
    ordered = ("SELECT operation, old_row, new_row FROM audit.row_changes WHERE table_name = %s "
               "ORDER BY operation, old_row::text NULLS FIRST, new_row::text NULLS FIRST")
    new = db.execute(ordered, ("public.k_new",))
    assert len(new) == 9 and new == db.execute(ordered, ("public.k_old",))


def test_wide_tables_and_odd_column_names_the_same_as_0_3_0(applied_clinic: Database) -> None:
    # more than 50 columns: more pairs than one jsonb_build_object call takes
    db = applied_clinic
    install_0_3_0_trigger(db)
    names = [f"c{i}" for i in range(120)] + ['Mixed Case"q', "sel ect"]
    definition = "(id int PRIMARY KEY, " + ", ".join(
        f'"{n.replace(chr(34), chr(34) * 2)}" text' for n in names) + ")"
    phi = ["c3", "c77", 'Mixed Case"q']
    values = ", ".join(f"'v{i}-' || g" for i in range(len(names)))
    for table, function in (("w_old", "policyc.audit_row_changes_0_3_0"),
                            ("w_new", "policyc.audit_row_changes")):
        audited_copy(db, table, function, ["id"], phi, definition)
        with db.connect() as conn:
            conn.execute(f"INSERT INTO public.{table} SELECT g, {values} "
                         "FROM generate_series(1, 20) g".encode())
            conn.execute(f'UPDATE public.{table} SET "Mixed Case""q" = \'new\', c3 = c3, '
                         "c100 = 'x' WHERE id <= 10".encode())
    new = recorded(db, "w_new")
    assert len(new) == 30 and new == recorded(db, "w_old")
    assert len(new[0][2]) == 1 + len(names) and len(new[0][2]['Mixed Case"q']) == 64


def test_the_cached_plan_follows_the_tables_columns(applied_clinic: Database) -> None:
    # one backend throughout: the trigger plans once per table shape and keeps the plan
    db = applied_clinic
    audited_copy(db, "shaped", "policyc.audit_row_changes", ["id"], ["a"],
                 "(id int PRIMARY KEY, a text, s text, b int)")
    steps = [
        ("INSERT INTO public.shaped VALUES (1, 'secret', 's', 1)", None),
        ("UPDATE public.shaped SET b = 2", None),
        # dropped and added again under the same name and type: a new position
        ("ALTER TABLE public.shaped DROP COLUMN b", None),
        ("ALTER TABLE public.shaped ADD COLUMN b int", None),
        ("UPDATE public.shaped SET b = 7", ("b", None, 7)),
        # same position, another type
        ("ALTER TABLE public.shaped ALTER COLUMN b TYPE bigint", None),
        ("UPDATE public.shaped SET b = 1099511627776", ("b", 7, 1099511627776)),
        ("ALTER TABLE public.shaped RENAME COLUMN s TO s2", None),
        ("UPDATE public.shaped SET s2 = 'z'", ("s2", "s", "z")),
        ("ALTER TABLE public.shaped RENAME TO reshaped", None),
        # many rows after a plan made for one
        ("INSERT INTO public.reshaped SELECT g, 'x' || g, 'y', g FROM generate_series(2, 501) g",
         None),
        ("UPDATE public.reshaped SET a = a || '!' WHERE id > 1", None),
        # a partition older than any: the audit table changes under the cached plan
        ("SELECT audit.ensure_partitions(now() - interval '13 months', now())", None),
        ("DELETE FROM public.reshaped WHERE id <= 3", None),
    ]
    with db.connect() as conn:
        for statement, expect in steps:
            conn.execute(statement.encode())
            if expect is not None:
                column, before, after = expect
                row = conn.execute(
                    "SELECT old_row, new_row FROM audit.row_changes ORDER BY id DESC LIMIT 1"
                ).fetchone()
                assert row is not None
                assert (row[0][column], row[1][column]) == (before, after)
    counts = db.execute("SELECT table_name, operation, count(*) FROM audit.row_changes "
                        "WHERE table_name LIKE 'public.%shaped' GROUP BY 1, 2 ORDER BY 1, 2")
    assert counts == [("public.reshaped", "DELETE", 3), ("public.reshaped", "INSERT", 500),
                      ("public.reshaped", "UPDATE", 500), ("public.shaped", "INSERT", 1),
                      ("public.shaped", "UPDATE", 4)]
    updated = db.execute("SELECT new_row FROM audit.row_changes WHERE table_name = "
                         "'public.reshaped' AND operation = 'UPDATE' ORDER BY id LIMIT 1")[0][0]
    assert set(updated) == {"id", "a", "s2", "b"} and len(updated["a"]) == 64
    assert "secret" not in str(db.execute("SELECT old_row, new_row FROM audit.row_changes"))
    assert db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    with db.connect() as conn:
        assert audittrail.verify(conn) == []


def test_columns_named_like_the_triggers_aliases_are_recorded_hashed(
        applied_clinic: Database) -> None:
    db = applied_clinic
    columns = "(id int PRIMARY KEY, n text, o text, s text, t text, x text, c text, k text)"
    audited_copy(db, "aliases", "policyc.audit_row_changes", ["id"], ["n", "o"], columns)
    with db.connect() as conn:
        conn.execute("INSERT INTO public.aliases VALUES (1, 'secret-n', 'secret-o', 's', 't', "
                     "'x', 'c', 'k')")
        conn.execute("UPDATE public.aliases SET n = 'other-n', s = 's2'")
    rows = recorded(db, "aliases")
    assert [r[0] for r in rows] == ["INSERT", "UPDATE"]
    inserted, (_, before, after) = rows[0][2], rows[1]
    assert set(inserted) == {"id", "n", "o", "s", "t", "x", "c", "k"}
    assert "secret" not in json.dumps(rows) and "other-n" not in json.dumps(rows)
    assert len(inserted["n"]) == 64 and inserted["s"] == "s" and after["s"] == "s2"
    assert before["n"] == inserted["n"] != after["n"] and before["o"] == after["o"]


def test_upgrade_from_0_3_0_keeps_one_verifiable_trail(
        clinic_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = clinic_policy(clinic_db.name)
    apply_at_runtime(clinic_db, policy, "0.3.0", monkeypatch)
    update = ("UPDATE public.patients SET phone = '555-0199' WHERE id IN "
              "(SELECT id FROM public.patients ORDER BY id LIMIT 3)")
    with clinic_db.connect() as conn:
        conn.execute(update)
    before = clinic_db.execute("SELECT old_row, new_row FROM audit.row_changes ORDER BY id")
    with clinic_db.connect() as conn:
        apply_policy(conn, policy)
    assert "Runtime 0.4.0 writes exactly what 0.3.0 wrote" in clinic_db.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'policyc.audit_row_changes'::regproc")[0][0]
    with clinic_db.connect() as conn:
        conn.execute(update.replace("555-0199", "555-0100"))
    rows = clinic_db.execute("SELECT old_row, new_row, chain, seq FROM audit.row_changes "
                             "ORDER BY id")
    assert len(rows) == 6 and [r[:2] for r in rows[:3]] == before
    # a row's PHI keeps its pseudonym across the upgrade
    then = {new["id"]: new for _, new in before}
    assert {old["id"]: old for old, _, _, _ in rows[3:]} == then
    assert clinic_db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    with clinic_db.connect() as conn:
        assert audittrail.verify(conn) == []
