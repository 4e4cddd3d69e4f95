"""The tamper-evident audit trail (runtime 0.3.0): chains, seals, verify, prune, signed exports.

Every tampering case is done the way a superuser would do it (triggers switched off with
session_replication_role, or partitions dropped) and must be named by ``audit.verify()`` and
``policyc audit verify``.  Records are written the way the proxy writes them: a session row,
statements numbered 1, 2, 3 ..., a close carrying the next number.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, apply_at_runtime, clinic_policy
from policyc import audittrail
from policyc.apply import apply_policy
from policyc.cli import main

pytestmark = pytest.mark.db

UTC = dt.UTC


def record_session(db: Database, statements: int, *, close: bool = True,
                   started: dt.datetime | None = None,
                   statement_times: list[dt.datetime] | None = None) -> str:
    """A proxied session as the proxy records it; returns its id."""
    sid = str(uuid.uuid4())
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO audit.sessions (session_id, started_at, agent, group_name, outcome) "
            "VALUES (%s, coalesce(%s, now()), 'agent-a', 'research', 'open')", (sid, started))
        for seq in range(1, statements + 1):
            at = statement_times[seq - 1] if statement_times else None
            conn.execute(
                "INSERT INTO audit.statements (record_id, session_id, at, agent, group_name, "
                "statement, decision, phi_columns, seq, duration_ms, rows) VALUES "
                "(gen_random_uuid(), %s, coalesce(%s, now()), 'agent-a', 'research', %s, "
                "'allowed', '{public.patients.zip}', %s, 0.123456789, 1)",
                (sid, at, f"SELECT zip FROM patients WHERE id = {seq}", seq))
        if close:
            conn.execute(
                "UPDATE audit.sessions SET ended_at = now(), end_reason = 'client closed', "
                "outcome = 'closed', end_seq = %s WHERE session_id = %s", (statements + 1, sid))
    return sid


def write_rows(db: Database, count: int) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO public.claims (patient_id, amount, code) "
            "SELECT id, 1, 'Z02' FROM public.patients ORDER BY id LIMIT %s", (count,))


def tamper(db: Database, sql: str, params: Any = None) -> None:
    """Change the trail the way only a superuser can: with every trigger off."""
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql.encode() if params is None else sql, params)


# a superuser's edit that also recomputes the record's own hash (only seals can catch it)
REWRITE_FIRST_STATEMENT = (
    "UPDATE audit.statements SET statement = 'SELECT 1', row_hash = audit.element_hash("
    "chain, seq, audit.statement_content(ROW(id, record_id, session_id, at, agent, "
    "group_name, 'SELECT 1', parameters, fingerprint, kind, tables, phi_columns, "
    "decision, reason, rows, duration_ms, sqlstate, result_digest, approval_id, result, "
    "chain, seq, row_hash)::audit.statements)) "
    "WHERE id = (SELECT min(id) FROM audit.statements)")


def problems(db: Database) -> list[audittrail.Problem]:
    with db.connect() as conn:
        return audittrail.verify(conn)


def checkpoint(db: Database) -> int | None:
    value = db.execute("SELECT audit.checkpoint()")[0][0]
    return int(value) if value is not None else None


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


@pytest.fixture
def trail(applied_clinic: Database) -> Database:
    """The clinic with a little of everything recorded and sealed."""
    db = applied_clinic
    record_session(db, 3)
    record_session(db, 2, close=False)
    with db.connect() as conn:
        request = conn.execute(
            "SELECT audit.request_approval(NULL, 'agent-a', NULL, 'billing', 'TRUNCATE claims', "
            "NULL, 'fp', '{public.claims}', '{}', 'truncate', NULL, interval '1 minute', NULL, "
            "'p1')").fetchone()
        assert request is not None
        conn.execute("SELECT audit.close_request(%s, 'expired', 'hold time passed')",
                     (request[0],))
    write_rows(db, 3)
    assert checkpoint(db) is not None
    return db


def test_an_untouched_trail_verifies(trail: Database) -> None:
    assert problems(trail) == []
    code, out = cli("audit", "verify", "--dsn", trail.dsn)
    assert code == 0 and "audit trail intact" in out and "sealed up to checkpoint" in out
    counts = trail.execute(
        "SELECT (SELECT count(*) FROM audit.seal_queue), "
        "(SELECT count(*) FROM audit.statements WHERE chain = session_id::text), "
        "(SELECT count(DISTINCT chain) FROM audit.row_changes WHERE chain LIKE 'rc:%')")
    assert counts == [(0, 5, 1)]
    # nothing new: no new checkpoint
    assert checkpoint(trail) is None


def test_hashes_do_not_depend_on_session_settings(trail: Database) -> None:
    with trail.connect() as conn:
        conn.execute("SET TimeZone = 'Pacific/Chatham'")
        conn.execute("SET extra_float_digits = -3")
        conn.execute("SET IntervalStyle = 'sql_standard'")
        conn.execute("SET DateStyle = 'German'")
        record_id = conn.execute(
            "INSERT INTO audit.statements (session_id, statement, decision, duration_ms, seq) "
            "SELECT session_id, 'SELECT 1', 'allowed', 1.0/3, 3 FROM audit.sessions "
            "WHERE outcome = 'open' RETURNING id").fetchone()
    assert record_id is not None
    assert problems(trail) == []


@pytest.mark.parametrize("case", [
    "statement text", "statement parameters", "decision", "result digest", "row change",
    "approval decision", "session claims", "undo a close", "swap positions",
])
def test_changing_any_record_is_caught(trail: Database, case: str) -> None:
    target = {
        "statement text": ("UPDATE audit.statements SET statement = 'SELECT 1' "
                           "WHERE id = (SELECT min(id) FROM audit.statements)", "statements"),
        "statement parameters": ("UPDATE audit.statements SET parameters = '[\"x\"]' "
                                 "WHERE id = (SELECT max(id) FROM audit.statements)",
                                 "statements"),
        "decision": ("UPDATE audit.statements SET decision = 'blocked' "
                     "WHERE id = (SELECT min(id) FROM audit.statements)", "statements"),
        "result digest": ("UPDATE audit.statements SET result_digest = 'ab' "
                          "WHERE id = (SELECT min(id) FROM audit.statements)", "statements"),
        "row change": ("UPDATE audit.row_changes SET new_row = new_row || '{\"amount\": 9}' "
                       "WHERE id = (SELECT min(id) FROM audit.row_changes)", "row_changes"),
        "approval decision": ("UPDATE audit.approvals SET decided_by = 'alice'",
                              "approvals"),
        "session claims": ("UPDATE audit.sessions SET claims = '{\"clinic_id\": 1}' "
                           "WHERE outcome = 'closed'", "sessions"),
        "undo a close": ("UPDATE audit.sessions SET ended_at = NULL, end_reason = NULL, "
                         "outcome = 'open' WHERE outcome = 'closed'", "sessions"),
        "swap positions": ("UPDATE audit.statements SET seq = 3 - seq WHERE seq IN (1, 2) "
                           "AND session_id = (SELECT session_id FROM audit.sessions "
                           "WHERE outcome = 'closed')", "statements"),
    }[case]
    tamper(trail, target[0])
    found = problems(trail)
    assert found, f"{case} was not detected"
    assert found[0].problem == "altered" and found[0].table == target[1], found
    code, out = cli("audit", "verify", "--dsn", trail.dsn)
    assert code == 1 and "audit trail BROKEN" in out and f"audit.{target[1]}" in out


def test_a_rewrite_with_recomputed_hashes_is_caught_by_the_seal(trail: Database) -> None:
    tamper(trail, REWRITE_FIRST_STATEMENT)
    found = problems(trail)
    assert [(p.problem, p.table) for p in found] == [("altered", "checkpoints")], found
    assert "differ from what checkpoint" in found[0].detail


def test_since_limits_the_work_to_recent_chains(trail: Database) -> None:
    trail.execute("SELECT audit.ensure_partitions(now() - interval '2 months')")
    old = dt.datetime.now(UTC) - dt.timedelta(days=40)
    record_session(trail, 2, started=old, statement_times=[old, old])
    checkpoint(trail)
    since = trail.execute("SELECT clock_timestamp()")[0][0]
    recent = record_session(trail, 2)
    checkpoint(trail)
    # scope: chains with records, or seals, since then (the old session has neither)
    tamper(trail, "UPDATE audit.statements SET statement = 'x' WHERE at < now() - "
           "interval '30 days'")
    with trail.connect() as conn:
        assert audittrail.verify(conn, since) == []
    assert problems(trail) != []  # the whole trail still shows it
    tamper(trail, "UPDATE audit.statements SET statement = 'y' WHERE session_id = %s AND seq = 1",
           (recent,))
    with trail.connect() as conn:
        found = audittrail.verify(conn, since)
    assert ("altered", "statements", recent) in [(p.problem, p.table, p.chain) for p in found]
    code, out = cli("audit", "verify", "--dsn", trail.dsn, "--since", since.isoformat())
    assert code == 1 and recent in out


def test_deleting_records_is_caught(trail: Database) -> None:
    sid = trail.execute("SELECT session_id FROM audit.sessions WHERE outcome = 'closed'")[0][0]
    tamper(trail, "DELETE FROM audit.statements WHERE session_id = %s AND seq = 2", (sid,))
    found = problems(trail)
    assert ("removed", "statements") in [(p.problem, p.table) for p in found]
    gap = next(p for p in found if p.table == "statements")
    assert gap.chain == str(sid) and "record 2 of the chain is missing" in gap.detail


def test_deleting_the_newest_records_is_caught_once_sealed(trail: Database) -> None:
    sid = record_session(trail, 2, close=False)
    checkpoint(trail)
    tamper(trail, "DELETE FROM audit.statements WHERE session_id = %s AND seq = 2", (sid,))
    found = problems(trail)
    assert [(p.problem, p.table, p.chain) for p in found] == [
        ("removed", "checkpoints", str(sid))], found


def test_deleting_a_whole_sealed_session_is_caught(trail: Database) -> None:
    sid = trail.execute("SELECT session_id FROM audit.sessions WHERE outcome = 'closed'")[0][0]
    tamper(trail, "DELETE FROM audit.statements WHERE session_id = %s", (sid,))
    tamper(trail, "DELETE FROM audit.sessions WHERE session_id = %s", (sid,))
    found = problems(trail)
    assert found and all(p.chain == str(sid) for p in found if p.chain)
    assert {p.problem for p in found} == {"removed"}


def test_a_forged_record_in_an_occupied_position_is_caught(trail: Database) -> None:
    sid = trail.execute("SELECT session_id FROM audit.sessions WHERE outcome = 'closed'")[0][0]
    trail.execute("INSERT INTO audit.statements (session_id, statement, decision, seq) "
                  "VALUES (%s, 'SELECT innocuous', 'allowed', 2)", (sid,))
    found = problems(trail)
    assert ("duplicate", str(sid), 2) in [(p.problem, p.chain, p.seq) for p in found]


def test_checkpoints_are_chained(trail: Database) -> None:
    record_session(trail, 1)
    checkpoint(trail)
    record_session(trail, 1)
    checkpoint(trail)
    middle = trail.execute("SELECT id FROM audit.checkpoints ORDER BY id DESC OFFSET 1 LIMIT 1")
    tamper(trail, "DELETE FROM audit.checkpoints WHERE id = %s", (middle[0][0],))
    found = problems(trail)
    assert ("removed", "checkpoints") in [(p.problem, p.table) for p in found]
    assert any("does not follow" in p.detail for p in found)


def test_dropping_a_partition_out_of_turn_is_caught(trail: Database) -> None:
    now = dt.datetime.now(UTC)
    trail.execute("SELECT audit.ensure_partitions(now() - interval '3 months')")
    month_ago = now - dt.timedelta(days=62)
    record_session(trail, 2, started=month_ago, statement_times=[month_ago] * 2)
    checkpoint(trail)
    partition = f"statements_{month_ago:%Y_%m}"
    trail.execute(f"DROP TABLE audit.{partition}")
    found = problems(trail)
    details = " | ".join(p.detail for p in found)
    assert any(p.problem == "removed" and p.table == "statements" and p.chain is None
               for p in found), details
    assert any(p.table == "checkpoints" for p in found), details


def test_dropping_the_oldest_partition_without_prune_is_caught(trail: Database) -> None:
    trail.execute("SELECT audit.ensure_partitions(now() - interval '2 months')")
    assert problems(trail) == []
    oldest = trail.execute(
        "SELECT partition_name FROM audit._partition_bounds('row_changes') "
        "WHERE NOT is_default ORDER BY range_from LIMIT 1")[0][0]
    trail.execute(f"DROP TABLE audit.{oldest}")
    found = problems(trail)
    assert [(p.problem, p.table) for p in found] == [("removed", "row_changes")]
    assert "are gone" in found[0].detail


def test_partitions_are_append_only_too(trail: Database) -> None:
    partition = trail.execute(
        "SELECT partition_name FROM audit._partition_bounds('statements') "
        "WHERE range_from <= now() AND range_to > now()")[0][0]
    for sql in (f"UPDATE audit.{partition} SET statement = 'x'",
                f"DELETE FROM audit.{partition}", f"TRUNCATE audit.{partition}"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            trail.execute(sql)


def test_partitions_are_created_ahead(applied_clinic: Database) -> None:
    months = applied_clinic.execute(
        "SELECT count(*) FROM audit._partition_bounds('statements') "
        "WHERE NOT is_default AND range_to > now()")
    assert months == [(4,)]  # this month and three ahead
    assert applied_clinic.execute("SELECT audit.ensure_partitions()") == [(0,)]


def test_concurrent_writers_keep_every_chain_whole(trail: Database) -> None:
    errors: list[BaseException] = []

    def agent(n: int) -> None:
        try:
            record_session(trail, 20)
            write_rows(trail, 5)
            with trail.connect() as conn:
                for _ in range(5):
                    with conn.transaction():
                        conn.execute("UPDATE public.claims SET amount = amount + 1 "
                                     "WHERE id IN (SELECT id FROM public.claims LIMIT 2)")
                    if n % 2:
                        conn.execute("SELECT audit.checkpoint()")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    checkpoint(trail)
    assert problems(trail) == []
    assert trail.execute("SELECT count(*) FROM audit.seal_queue") == [(0,)]


def test_a_rolled_back_savepoint_leaves_no_gap(trail: Database) -> None:
    with trail.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.claims (patient_id, amount, code) "
                     "SELECT min(id), 1, 'Z02' FROM public.patients")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("INSERT INTO public.claims (patient_id, amount, code) "
                         "SELECT min(id), 1, 'Z02' FROM public.patients")
            conn.execute("SELECT 1/0")
        conn.execute("INSERT INTO public.claims (patient_id, amount, code) "
                     "SELECT min(id), 1, 'Z02' FROM public.patients")
    checkpoint(trail)
    assert problems(trail) == []


def test_a_checkpoint_never_waits_for_an_open_writer(trail: Database) -> None:
    """An agent's long transaction holds its chain head; sealing must not queue behind it."""
    with trail.connect(autocommit=False) as writer:
        writer.execute("INSERT INTO public.claims (patient_id, amount, code) "
                       "SELECT min(id), 1, 'Z02' FROM public.patients")
        record_session(trail, 1)
        with trail.connect() as sealer:
            sealer.execute("SET statement_timeout = '5s'")
            assert sealer.execute("SELECT audit.checkpoint()").fetchone() != (None,)
        writer.commit()
    checkpoint(trail)
    assert problems(trail) == []


def test_auditors_verify_and_query_in_sql(trail: Database) -> None:
    trail.execute("CREATE ROLE auditor_ann LOGIN IN ROLE policyc_auditor")
    with trail.connect("auditor_ann") as conn:
        assert conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (0,)
        phi = conn.execute("SELECT DISTINCT table_name, column_name, agent "
                           "FROM audit.phi_access").fetchall()
        assert phi == [("public.patients", "zip", "agent-a")]
        sessions = conn.execute("SELECT agent, statements, touching_phi FROM "
                                "audit.agent_sessions ORDER BY statements").fetchall()
        assert sessions == [("agent-a", 2, 2), ("agent-a", 3, 3)]
        changes = conn.execute("SELECT count(*), min(table_name) FROM "
                               "audit.agent_row_changes").fetchone()
        assert changes == (3, "public.claims")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT audit.prune(interval '1 day')")


def test_refusals_view_lists_blocked_and_held(trail: Database) -> None:
    sid = record_session(trail, 0, close=False)
    trail.execute("INSERT INTO audit.statements (session_id, statement, decision, reason, seq) "
                  "VALUES (%s, 'DROP TABLE patients', 'blocked', 'ddl', 1)", (sid,))
    rows = trail.execute("SELECT decision, reason FROM audit.refusals")
    assert rows == [("blocked", "ddl")]


# --- prune ------------------------------------------------------------------------------------
def _years_ago(years: float, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(days=round(365.25 * years))


def test_prune_drops_only_whole_months_past_retention(trail: Database) -> None:
    now = dt.datetime.now(UTC)
    trail.execute("SELECT audit.ensure_partitions(%s)", (_years_ago(8, now),))
    very_old = _years_ago(7.5, now)
    just_past = _years_ago(6, now) - dt.timedelta(days=40)
    within = _years_ago(6, now) + dt.timedelta(days=3)
    for when in (very_old, just_past, within):
        record_session(trail, 2, started=when, statement_times=[when, when])
    # a session that straddles the cut: opened before it, its last statement after it
    straddler = record_session(trail, 2, started=just_past,
                               statement_times=[just_past, within])
    checkpoint(trail)
    before = trail.execute("SELECT count(*) FROM audit.statements WHERE at >= %s", (within,))

    # the fake clock: a year ago, only the 7.5-year-old month was past retention
    code, out = cli("audit", "prune", "--dsn", trail.dsn, "--retention", "6y",
                    "--now", (now - dt.timedelta(days=365)).isoformat(), "--dry-run")
    assert code == 0
    assert f"statements_{very_old:%Y_%m}" in out and f"{just_past:%Y_%m}" not in out

    code, out = cli("audit", "prune", "--dsn", trail.dsn, "--retention", "6y", "--dry-run")
    assert code == 0 and f"would drop audit.statements_{just_past:%Y_%m}" in out
    assert trail.execute("SELECT count(*) FROM audit.prunes") == [(0,)]

    code, out = cli("audit", "prune", "--dsn", trail.dsn, "--retention", "6y", "--json")
    assert code == 0
    dropped = json.loads(out)["partitions"]
    cutoff = now - dt.timedelta(seconds=audittrail.parse_duration("6y"))
    assert dropped and all(dt.datetime.fromisoformat(p["range_to"]) <= cutoff for p in dropped)
    # nothing younger than the retention is gone
    assert trail.execute("SELECT count(*) FROM audit.statements WHERE at >= %s",
                         (within,)) == before
    assert trail.execute("SELECT count(*) FROM audit.statements WHERE at < %s",
                         (cutoff,)) == [(0,)]
    assert trail.execute("SELECT count(*) FROM audit.statements WHERE session_id = %s",
                         (straddler,)) == [(1,)]
    recorded = trail.execute("SELECT count(*), min(retention) FROM audit.prunes")
    assert recorded[0][0] == len(dropped)
    # the chain stays verifiable across the prune, straddling session included
    assert problems(trail) == []
    record_session(trail, 1)
    checkpoint(trail)
    assert problems(trail) == []
    # and a later deletion in a kept chain is still caught
    tamper(trail, "DELETE FROM audit.statements WHERE session_id = %s", (straddler,))
    assert problems(trail) != []


def test_prune_gives_up_instead_of_queueing_behind_a_reader(trail: Database) -> None:
    now = dt.datetime.now(UTC)
    trail.execute("SELECT audit.ensure_partitions(%s)", (_years_ago(7, now),))
    with trail.connect(autocommit=False) as reader:
        reader.execute("SELECT count(*) FROM audit.statements WHERE at < now() - "
                       "interval '6 years 6 months'")
        with trail.connect() as conn, pytest.raises(psycopg.errors.LockNotAvailable):
            audittrail.prune(conn, audittrail.parse_duration("6y"), now=None, dry_run=False,
                             lock_timeout_ms=200)
        reader.rollback()
    assert trail.execute("SELECT count(*) FROM audit.prunes") == [(0,)]
    with trail.connect() as conn:
        assert audittrail.prune(conn, audittrail.parse_duration("6y"), now=None, dry_run=False)


def test_prune_refuses_a_future_clock_and_a_bad_retention(trail: Database) -> None:
    future = (dt.datetime.now(UTC) + dt.timedelta(days=400)).isoformat()
    code = main(["audit", "prune", "--dsn", trail.dsn, "--now", future], io.StringIO())
    assert code == 1
    code = main(["audit", "prune", "--dsn", trail.dsn, "--retention", "six years"],
                io.StringIO())
    assert code == 1
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="positive"):
        trail.execute("SELECT audit.prune(interval '-1 day')")


def test_prune_takes_the_retention_from_the_policy(trail: Database, tmp_path: Path) -> None:
    policy = Path(__file__).parent.parent / "examples" / "clinic" / "policy.yaml"
    code, out = cli("audit", "prune", "--dsn", trail.dsn, "--policy", str(policy), "--dry-run")
    assert code == 0 and "nothing to prune" in out


# --- signed exports ---------------------------------------------------------------------------
def test_a_signed_export_pins_history_even_against_a_superuser(trail: Database,
                                                              tmp_path: Path) -> None:
    key = tmp_path / "audit-signing.pem"
    code, _ = cli("audit", "keygen", str(key))
    assert code == 0 and (key.stat().st_mode & 0o777) == 0o600
    public = tmp_path / "audit-signing.pub.pem"
    export = tmp_path / "checkpoint.json"
    code, _ = cli("audit", "checkpoint", "--dsn", trail.dsn, "--sign", str(key),
                  "--out", str(export))
    assert code == 0
    args = ["audit", "verify", "--dsn", trail.dsn, "--trusted", str(export),
            "--public-key", str(public)]
    assert cli(*args)[0] == 0

    # a DBA rewrites a statement and then the whole seal machinery consistently
    tamper(trail, REWRITE_FIRST_STATEMENT)
    tamper(trail, "DELETE FROM audit.checkpoints")
    tamper(trail, "DELETE FROM audit.chain_seals")
    tamper(trail,
           "INSERT INTO audit.seal_queue SELECT chain, seq, row_hash, started_at "
           "FROM audit.sessions UNION ALL SELECT chain, end_seq, end_hash, started_at "
           "FROM audit.sessions WHERE end_hash IS NOT NULL UNION ALL SELECT chain, seq, "
           "row_hash, at FROM audit.statements UNION ALL SELECT chain, seq, row_hash, "
           "requested_at FROM audit.approvals UNION ALL SELECT chain, 1, decision_hash, "
           "requested_at FROM audit.approvals WHERE decision_hash IS NOT NULL UNION ALL "
           "SELECT chain, seq, row_hash, at FROM audit.row_changes")
    checkpoint(trail)
    assert problems(trail) == []  # consistent inside the database
    code, out = cli(*args)
    assert code == 1 and "signed in" in out

    # and an export edited after signing is refused
    document = json.loads(export.read_text())
    document["hash"] = "00" * 32
    export.write_text(json.dumps(document))
    code = main(args, io.StringIO())
    assert code == 1


# --- upgrade ----------------------------------------------------------------------------------
def test_upgrade_from_0_2_0_carries_rows_into_the_chained_trail(
        clinic_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = clinic_policy(clinic_db.name)
    apply_at_runtime(clinic_db, policy, "0.2.0", monkeypatch)
    sid = str(uuid.uuid4())
    with clinic_db.connect() as conn:
        conn.execute("INSERT INTO audit.sessions (session_id, agent, outcome) "
                     "VALUES (%s, 'agent-a', 'open')", (sid,))
        for n in range(3):
            conn.execute("INSERT INTO audit.statements (session_id, statement, decision) "
                         "VALUES (%s, %s, 'allowed')", (sid, f"SELECT {n}"))
        conn.execute("UPDATE audit.sessions SET ended_at = now(), end_reason = 'done', "
                     "outcome = 'closed' WHERE session_id = %s", (sid,))
        conn.execute("INSERT INTO audit.statements (statement, decision) VALUES ('x', 'error')")
        conn.execute("INSERT INTO public.claims (patient_id, amount, code) "
                     "SELECT id, 1, 'Z02' FROM public.patients LIMIT 2")
    with clinic_db.connect() as conn:
        apply_policy(conn, policy)
    assert clinic_db.execute(
        "SELECT seq, statement FROM audit.statements WHERE session_id = %s ORDER BY seq",
        (sid,)) == [(1, "SELECT 0"), (2, "SELECT 1"), (3, "SELECT 2")]
    assert clinic_db.execute("SELECT end_seq FROM audit.sessions") == [(4,)]
    assert clinic_db.execute("SELECT count(*) FROM audit.row_changes") == [(2,)]
    checkpoint(clinic_db)
    assert problems(clinic_db) == []
    # new rows keep numbering after the carried-over ones
    clinic_db.execute("INSERT INTO audit.statements (statement, decision) VALUES ('y', 'error')")
    checkpoint(clinic_db)
    assert problems(clinic_db) == []
