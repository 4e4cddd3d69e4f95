"""Runtime 0.6.0 (issue #14): the fence's per-statement costs, with nothing stored changing.

* the session identity is the registration of this backend's pid *and* start, the start read
  once per backend and kept (policyc._kept_backend_start), exact to the microsecond whatever
  the session's date settings, also when first read inside a parallel query;
* a statement's row changes, and a batch's statements of one session, wait for the next seal
  as one queue entry for their run of positions; a checkpoint seals what 0.5.0 sealed;
* an upgrade from 0.5.0 keeps every record verifiable, queued entries of both shapes included.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from conftest import Database, apply_at_runtime, clinic_policy, register
from policyc import RUNTIME_VERSION, audittrail
from policyc.apply import apply_policy
from test_audit_chain import record_session, write_rows

pytestmark = pytest.mark.db


def problems(db: Database) -> list[audittrail.Problem]:
    with db.connect() as conn:
        return audittrail.verify(conn)


def queue(db: Database, chain_like: str) -> list[tuple[Any, ...]]:
    """(first, last, hash bytes) of each waiting entry of the chains matching ``chain_like``."""
    return db.execute(
        "SELECT seq, coalesce(last_seq, seq), length(hash) FROM audit.seal_queue "
        "WHERE chain LIKE %s ORDER BY chain, seq", (chain_like,))


# -- identity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    [],
    ["SET DateStyle = 'SQL, DMY'", "SET TimeZone = 'Asia/Kathmandu'"],
    ["SET DateStyle = 'German'", "SET TimeZone = 'America/St_Johns'",
     "SET IntervalStyle = 'sql_standard'"],
])
def test_identity_holds_whatever_the_date_settings(applied_clinic: Database,
                                                   settings: list[str]) -> None:
    with applied_clinic.connect("billing") as conn:
        for setting in settings:  # before the backend's start is first read and kept
            conn.execute(setting.encode())
        register(applied_clinic, conn, "agent-tz", "billing", {"clinic_id": 1})
        assert conn.execute("SELECT policyc.agent(), policyc.claim('clinic_id')").fetchone() == (
            "agent-tz", "1")
        conn.execute(b"SET TimeZone = 'Pacific/Chatham'")  # and after it is kept
        assert conn.execute("SELECT policyc.agent()").fetchone() == ("agent-tz",)


def test_identity_is_this_backends_to_the_microsecond(applied_clinic: Database) -> None:
    """A registration whose start differs from this backend's by 1 us is another backend's
    (a pid reused after a crash): no identity, no claims, whatever this backend read before."""
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-us", "billing", {"clinic_id": 1})
        pid = conn.info.backend_pid
        assert conn.execute("SELECT policyc.agent()").fetchone() == ("agent-us",)
        for shift, expected in (("- interval '1 microsecond'", (None, None, False)),
                                ("+ interval '2 microseconds'", (None, None, False)),
                                ("- interval '1 microsecond'", ("agent-us", "1", True))):
            applied_clinic.execute(
                f"UPDATE policyc.session_identity SET backend_start = backend_start {shift} "
                "WHERE pid = %s", (pid,))
            assert conn.execute(
                "SELECT policyc.agent(), policyc.claim('clinic_id'), "
                "policyc.session_id() IS NOT NULL").fetchone() == expected
        # the row filter follows: nothing of clinic 1 without the identity
        applied_clinic.execute(
            "UPDATE policyc.session_identity SET backend_start = backend_start "
            "- interval '1 microsecond' WHERE pid = %s", (pid,))
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (0,)


@pytest.mark.parametrize("call", ["policyc._kept_backend_start()",
                                  "policyc._keep_backend_start('2000-01-01T00:00:00Z')"])
def test_agents_cannot_reach_the_kept_start(applied_clinic: Database, call: str) -> None:
    with (applied_clinic.connect("billing") as conn,
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="function")):
        conn.execute(f"SELECT {call}".encode())


PARALLEL = ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
            "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2")


def test_the_first_identity_lookup_may_be_inside_a_parallel_query(
        applied_clinic: Database) -> None:
    """PL/Python queries run in subtransactions, which a parallel query forbids: the first
    lookup of a backend must not need one (an agent's first statement may be a big scan)."""
    expected = applied_clinic.execute("SELECT count(*) FROM public.visits WHERE clinic_id = 1")
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-p", "billing", {"clinic_id": 1})
        for setting in PARALLEL:
            conn.execute(f"SET {setting}".encode())
        query = "SELECT count(*) FROM visits WHERE visited_at > '1900-01-01'"
        assert "Gather" in "\n".join(r[0] for r in conn.execute(f"EXPLAIN {query}".encode()))
        assert conn.execute(query).fetchone() == expected[0]
        assert conn.execute("SELECT policyc.agent()").fetchone() == ("agent-p",)


# -- one seal-queue entry per run -------------------------------------------------------------
def test_a_statements_row_changes_wait_as_one_entry(applied_clinic: Database) -> None:
    write_rows(applied_clinic, 40)
    assert queue(applied_clinic, "rc:%") == [(1, 40, 40 * 32)]
    write_rows(applied_clinic, 1)  # another transaction, another backend: its own chain
    write_rows(applied_clinic, 0)  # nothing changed: no entry, no position reserved
    assert sorted(queue(applied_clinic, "rc:%")) == [(1, 1, 32), (1, 40, 40 * 32)]
    assert applied_clinic.execute(
        "SELECT count(*) FROM audit.chain_heads WHERE chain LIKE 'rc:%'") == [(2,)]
    assert applied_clinic.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    assert applied_clinic.execute(
        "SELECT count(*) FROM audit.seal_queue") == [(0,)]
    sealed = applied_clinic.execute(
        "SELECT entries FROM audit.checkpoints WHERE kind = 'seal' ORDER BY id DESC LIMIT 1")
    assert sorted(v[:2] for k, v in sealed[0][0].items() if k.startswith("rc:")) == [
        [1, 1], [1, 40]]
    assert problems(applied_clinic) == []


def test_one_insert_of_a_sessions_statements_waits_as_one_entry(
        applied_clinic: Database) -> None:
    sid = record_session(applied_clinic, 0, close=False)
    applied_clinic.execute(
        "INSERT INTO audit.statements (record_id, session_id, agent, group_name, statement, "
        "decision, seq) SELECT gen_random_uuid(), %s, 'agent-a', 'research', 'SELECT ' || i, "
        "'allowed', i FROM generate_series(1, 5) i", (sid,))
    assert queue(applied_clinic, sid) == [(0, 0, 32), (1, 5, 5 * 32)]
    assert applied_clinic.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    assert applied_clinic.execute(
        "SELECT sealed_seq FROM audit.chain_seals WHERE chain = %s", (sid,)) == [(5,)]
    assert problems(applied_clinic) == []


def seal_fake_chain(db: Database, entries: list[tuple[int, int | None]]) -> int | None:
    """Queue entries (first, last) for a chain of their own and seal: how far it got sealed."""
    chain = f"rc:test:{uuid.uuid4()}"
    with db.connect() as conn:
        for first, last in entries:
            count = (last or first) - first + 1
            conn.execute("INSERT INTO audit.seal_queue (chain, seq, last_seq, hash, at) "
                         "VALUES (%s, %s, %s, %s, now())",
                         (chain, first, last, b"\x01" * 32 * count))
        conn.execute("SELECT audit.checkpoint()")
    row = db.execute("SELECT sealed_seq FROM audit.chain_seals WHERE chain = %s", (chain,))
    return int(row[0][0]) if row else None


@pytest.mark.parametrize(("entries", "sealed"), [
    ([(1, 3), (4, None), (5, 9)], 9),  # runs and single positions, end to end
    ([(1, 3), (5, 6)], 3),             # a gap: sealed up to it, the rest waits
    ([(2, 4)], None),                  # does not start right after the sealed positions
    ([(1, 3), (2, None), (4, None)], 3),  # an overlap ends the run, even if a later entry fits
    ([(1, 3), (3, 5)], 3),             # the same position twice
])
def test_a_checkpoint_seals_runs_only_without_gaps_or_overlaps(
        applied_clinic: Database, entries: list[tuple[int, int | None]],
        sealed: int | None) -> None:
    assert seal_fake_chain(applied_clinic, entries) == sealed


def test_a_run_repeating_a_queued_position_is_refused(applied_clinic: Database) -> None:
    chain = "rc:test:repeat"
    applied_clinic.execute("INSERT INTO audit.seal_queue (chain, seq, hash, at) "
                           "VALUES (%s, 1, %s, now())", (chain, b"\x01" * 32))
    with pytest.raises(Exception, match="seal_queue_run"):
        applied_clinic.execute("INSERT INTO audit.seal_queue (chain, seq, last_seq, hash, at) "
                               "VALUES (%s, 3, 2, %s, now())", (chain, b"\x01" * 64))


# -- upgrade ------------------------------------------------------------------------------------
def test_upgrade_from_0_5_0_keeps_one_verifiable_trail(
        clinic_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = clinic_policy(clinic_db.name)
    apply_at_runtime(clinic_db, policy, "0.5.0", monkeypatch)
    record_session(clinic_db, 3)
    write_rows(clinic_db, 5)
    assert clinic_db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    open_session = record_session(clinic_db, 2, close=False)
    with clinic_db.connect() as conn:  # one backend: its row changes make one chain
        for _ in range(2):
            conn.execute("UPDATE public.patients SET phone = '555-0101' WHERE id IN "
                         "(SELECT id FROM public.patients ORDER BY id LIMIT 4)")
            # left waiting across the upgrade, one entry per element as 0.5.0 queued them
        waiting = clinic_db.execute("SELECT count(*) FROM audit.seal_queue")[0][0]
        assert waiting == 3 + 8  # the open session and its 2 statements; 8 row changes

        with clinic_db.connect() as admin:
            apply_policy(admin, policy)
        assert clinic_db.execute(
            "SELECT semantic->>'version' FROM policyc.applied_objects "
            "WHERE object_key = 'runtime'") == [(RUNTIME_VERSION,)]  # through 0.6.0
        # the same backend, now on 0.6.0's trigger: its chain continues without a gap
        conn.execute("UPDATE public.patients SET phone = '555-0102' WHERE id IN "
                     "(SELECT id FROM public.patients ORDER BY id LIMIT 4)")
    clinic_db.execute(
        "INSERT INTO audit.statements (record_id, session_id, agent, group_name, statement, "
        "decision, seq) SELECT gen_random_uuid(), %s, 'agent-a', 'research', 'SELECT ' || i, "
        "'allowed', i FROM generate_series(3, 4) i", (open_session,))
    assert queue(clinic_db, open_session) == [(0, 0, 32), (1, 1, 32), (2, 2, 32), (3, 4, 64)]
    chains = clinic_db.execute(
        "SELECT chain, min(seq), max(seq), count(*) FROM audit.row_changes "
        "WHERE operation = 'UPDATE' GROUP BY chain")
    assert [c[1:] for c in chains] == [(1, 12, 12)]
    assert clinic_db.execute("SELECT audit.checkpoint() IS NOT NULL") == [(True,)]
    assert clinic_db.execute("SELECT count(*) FROM audit.seal_queue") == [(0,)]
    assert clinic_db.execute(
        "SELECT sealed_seq FROM audit.chain_seals WHERE chain = %s", (chains[0][0],)) == [(12,)]
    assert problems(clinic_db) == []
