"""The agent sees the error the server would have given, and the proxy's own work on its
session leaves no trace there (issue #12, items 1, 4 and 5).

The proxy asks the planner for a row estimate before a read of the policy's tables runs
(``approval.rows_over``).  That EXPLAIN runs on the agent's own session; inside a transaction
it runs in a savepoint, so a failing EXPLAIN (a bad column, a bad literal) must not abort the
agent's transaction nor replace the server's real error with 25P02.  Catalog reads are never
estimated or cut by the row limit, and the audit record lists the PHI columns the group's
view carries, not every PHI column of the base table.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from conftest import Database
from policyc.policy.model import Group
from proxyharness import RunningProxy, run_proxy, wait_for


@pytest.fixture
def tight(applied_clinic: Database, proxy: RunningProxy, tmp_path: Path) -> Iterator[RunningProxy]:
    """A proxy whose billing group holds reads estimated over 10 rows (in a transaction
    too: the clinic policy's ``in_transaction: hold``)."""
    policy = proxy.policy

    def changed(group: Group) -> Group:
        if group.name != "billing":
            return group
        return dataclasses.replace(
            group, approval=dataclasses.replace(group.approval, rows_over=10))

    groups = tuple(changed(g) for g in policy.groups)
    with run_proxy(dataclasses.replace(policy, groups=groups),
                   applied_clinic.dsn_as("policyc_proxy"), tmp_path / "tight-spool") as own:
        yield own


def _connect(proxy: RunningProxy, agent: str = "agent-e") -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(agent, "billing", clinic_id=1))  # not autocommit


def _records(db: Database, agent: str, where: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f"SELECT decision, reason FROM audit.statements WHERE agent = %s AND {where} ORDER BY id",
        (agent,))


def test_an_error_inside_a_transaction_is_the_servers_own(tight: RunningProxy,
                                                            applied_clinic: Database) -> None:
    with _connect(tight) as conn:
        conn.execute("SELECT 1")  # BEGIN: the session is inside a transaction from here
        with pytest.raises(errors.UndefinedColumn, match="nosuchcol"):
            conn.execute("SELECT nosuchcol FROM patients")  # simple protocol: estimated first
        conn.rollback()
        with pytest.raises(errors.InvalidTextRepresentation):
            conn.execute("SELECT id FROM patients WHERE id = 'abc'")
        conn.rollback()
        with pytest.raises(errors.UndefinedColumn):  # extended protocol
            conn.execute("SELECT nosuchcol FROM patients WHERE id = %s", (1,))
        conn.rollback()
        # and the same statements outside a transaction
        conn.autocommit = True
        with pytest.raises(errors.UndefinedColumn):
            conn.execute("SELECT nosuchcol FROM patients")
        assert conn.execute("SELECT count(*) FROM patients WHERE id < 0").fetchone() == (0,)
    # the failed statements were estimated in-band (no other path reaches the server first):
    # the EXPLAIN's failure is nowhere in the trail, the statements' own errors are
    rows = wait_for(lambda: _records(applied_clinic, "agent-e", "statement LIKE '%%nosuchcol%%'")
                    if len(_records(applied_clinic, "agent-e",
                                    "statement LIKE '%%nosuchcol%%'")) >= 3 else None)
    assert [r[0] for r in rows] == ["allowed", "allowed", "allowed"]


def test_the_estimate_leaves_the_transaction_as_it_was(tight: RunningProxy,
                                                       applied_clinic: Database) -> None:
    before = applied_clinic.execute("SELECT count(*) FROM public.claims")[0][0]
    patient = applied_clinic.execute(
        "SELECT min(id) FROM public.patients WHERE clinic_id = 1")[0][0]
    with _connect(tight) as conn:
        conn.execute("INSERT INTO claims (patient_id, amount, code) VALUES (%s, 1, 'E1')",
                     (patient,))
        # the agent's own savepoint of the very name the proxy uses for its estimate
        conn.execute("SAVEPOINT policyc_estimate")
        conn.execute("INSERT INTO claims (patient_id, amount, code) VALUES (%s, 2, 'E2')",
                     (patient,))
        with pytest.raises(errors.UndefinedColumn):
            conn.execute("SELECT nosuchcol FROM claims")  # estimated (and failed) in-band
        conn.execute("ROLLBACK TO SAVEPOINT policyc_estimate")  # the agent's, still there
        assert conn.execute("SELECT count(*) FROM claims WHERE code = 'E2'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM claims WHERE code = 'E1'").fetchone() == (1,)
        conn.commit()
    assert applied_clinic.execute("SELECT count(*) FROM public.claims")[0][0] == before + 1


def test_a_read_estimated_over_the_limit_is_still_held_inside_a_transaction(
        tight: RunningProxy, applied_clinic: Database) -> None:
    with _connect(tight, "agent-h") as conn:
        conn.execute("SELECT 1")
        with pytest.raises(errors.InsufficientPrivilege, match="approval request"):
            conn.execute("SELECT * FROM patients")  # the clinic has ~100 patients: held
    held = wait_for(lambda: _records(applied_clinic, "agent-h", "decision = 'held'"))
    assert held[0][1].startswith("needs approval: estimated")


def test_catalog_reads_are_neither_estimated_nor_cut(tight: RunningProxy,
                                                     applied_clinic: Database) -> None:
    with tight.connect("agent-c", "billing", clinic_id=1) as conn:
        # pgcli-like completion reads: thousands of catalog rows, no approval, no cut
        count = len(conn.execute(
            "SELECT attrelid, attname FROM pg_catalog.pg_attribute").fetchall())
        assert count > 1000
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'billing'").fetchall()
        assert ("patients", "ssn") in columns
    assert applied_clinic.execute(
        "SELECT count(*) FROM audit.approvals WHERE agent = 'agent-c'")[0][0] == 0


def test_the_record_lists_only_the_phi_the_groups_view_carries(
        proxy: RunningProxy, applied_clinic: Database) -> None:
    with proxy.connect("agent-p", "billing", clinic_id=1) as conn:
        conn.execute("SELECT * FROM patients LIMIT 1").fetchall()
    rows = wait_for(lambda: applied_clinic.execute(
        "SELECT column_name FROM audit.phi_access WHERE agent = 'agent-p' ORDER BY 1"))
    assert [r[0] for r in rows] == ["birth_date", "full_name", "ssn"]  # no email, phone, zip


def test_a_cancel_that_meets_the_estimate_cancels_the_statement(
        proxy: RunningProxy, applied_clinic: Database) -> None:
    """The proxy's EXPLAIN is what runs when the client's cancel arrives: the statement must
    end with 57014 and never run, not run after the cancel was spent on the estimate."""
    admin = applied_clinic.connect(autocommit=False)
    admin.execute("LOCK TABLE public.patients IN ACCESS EXCLUSIVE MODE")  # planning waits
    conn = psycopg.connect(proxy.dsn("agent-x", "billing", clinic_id=1), autocommit=True,
                           cursor_factory=psycopg.ClientCursor)  # the simple protocol
    failure: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute("SELECT * FROM patients")
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert wait_for(lambda: applied_clinic.execute(
            "SELECT 1 FROM pg_locks WHERE relation = 'public.patients'::regclass "
            "AND NOT granted"), timeout=30)
        conn.cancel_safe()
        worker.join(10)
        assert not worker.is_alive(), "the statement ran after its cancel"
    finally:
        admin.rollback()
        admin.close()
        worker.join(30)
    assert len(failure) == 1 and isinstance(failure[0], errors.QueryCanceled), failure
    assert "the statement did not run" in str(failure[0])
    assert conn.execute("SELECT count(*) FROM patients WHERE id < 0").fetchone() == (0,)
    conn.close()
    rows = wait_for(lambda: _records(applied_clinic, "agent-x", "sqlstate = '57014'"))
    assert [r[0] for r in rows] == ["blocked"]
