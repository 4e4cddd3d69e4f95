"""Real clients through the real proxy: psycopg (simple, extended, pipeline, COPY), asyncpg
(binary, prepared), psql and pgbench; every statement lands in audit.statements."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Any

import psycopg
import pytest

from conftest import Database
from proxyharness import RunningProxy, wait_for


def audit_rows(db: Database, where: str = "true") -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT agent, group_name, statement, decision, rows, sqlstate, kind, phi_columns, "
        f"parameters, result_digest FROM audit.statements WHERE {where} ORDER BY id"
    )


def test_psycopg_simple_query_is_masked_filtered_and_audited(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        rows = conn.execute("SELECT id, clinic_id, ssn, birth_date FROM patients").fetchall()
        assert rows and {r[1] for r in rows} == {1}
        assert all(len(r[2]) == 64 for r in rows)  # HMAC pseudonym, not an SSN
        assert conn.execute("SELECT current_user, policyc.agent()").fetchone() == (
            "billing", "agent-7")
    found = wait_for(lambda: audit_rows(applied_clinic, "statement LIKE 'SELECT id,%'"))
    assert len(found) == 1
    agent, group, _, decision, count, sqlstate, kind, phi, _, digest = found[0]
    assert (agent, group, decision, count, sqlstate, kind) == (
        "agent-7", "billing", "masked", len(rows), None, "select")
    assert "public.patients.ssn" in phi and digest and len(digest) == 64
    sessions = applied_clinic.execute(
        "SELECT agent, group_name, outcome, tls, claims->>'clinic_id' FROM audit.sessions")
    assert ("agent-7", "billing", "open", False, "1") in sessions or (
        "agent-7", "billing", "closed", False, "1") in sessions


def test_blocked_statement_gets_42501_and_session_stays_usable(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        for attack in ("SET ROLE postgres", "RESET ROLE", "SET standard_conforming_strings = off",
                       "SELECT set_config('role', 'postgres', false)",
                       "SET search_path = public", "COPY patients TO PROGRAM 'cat'",
                       "SELECT pg_read_file('/etc/passwd')", "DO $$ BEGIN END $$"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="policyc"):
                conn.execute(attack)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # inside a transaction the refusal aborts it, exactly as a server error would
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE postgres")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT current_user").fetchone() == ("billing",)
    blocked = wait_for(lambda: len(audit_rows(applied_clinic, "decision = 'blocked'")) >= 9
                       and audit_rows(applied_clinic, "decision = 'blocked'"))
    assert len(blocked) >= 9
    assert {r[2] for r in blocked} >= {"SET ROLE postgres", "RESET ROLE",
                                       "SET standard_conforming_strings = off"}
    assert all(r[5] == "42501" for r in blocked)


def test_multi_statement_query_runs_up_to_the_blocked_one(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1; SET ROLE postgres; SELECT 2")
        assert conn.execute("SELECT 3").fetchone() == (3,)
    rows = wait_for(lambda: len(audit_rows(applied_clinic)) >= 4 and audit_rows(applied_clinic))
    texts = {r[2]: (r[3], r[5]) for r in rows}
    assert texts["SET ROLE postgres"] == ("blocked", "42501")
    assert texts["SELECT 1"][0] == "allowed"
    assert "SELECT 2" in texts  # recorded as not run


def test_psycopg_extended_prepared_and_pipeline(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        for _ in range(7):  # psycopg prepares server-side after 5 executions
            row = conn.execute("SELECT count(*) FROM patients WHERE id > %s", (0,)).fetchone()
        assert row is not None and row[0] > 0
        with conn.pipeline():
            cur1 = conn.execute("SELECT id FROM patients WHERE id = %s", (1,))
            cur2 = conn.execute("SELECT %s::int + 1", (41,))
        assert cur2.fetchone() == (42,) and cur1.fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT set_config('role', %s, false)", ("postgres",))
            conn.execute("SELECT %s::int", (2,))
        assert conn.execute("SELECT %s::text", ("still usable",)).fetchone() == ("still usable",)
    rows = wait_for(lambda: audit_rows(applied_clinic, "parameters = '[\"41\"]'"))
    assert rows and rows[0][2] == "SELECT $1::int + 1", audit_rows(applied_clinic)
    refused = audit_rows(applied_clinic, "statement LIKE '%set_config%'")
    assert [r[3] for r in refused] == ["blocked"]


def test_copy_in_runs_and_copy_out_is_held(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="was expired"), \
                conn.cursor() as cur, cur.copy("COPY patients TO STDOUT") as copy:
            for _ in copy:
                pass
        # COPY FROM reaches the database, which cannot copy into a masking view: the
        # agent gets PostgreSQL's own error and the attempt is recorded with its SQLSTATE
        with pytest.raises(psycopg.errors.WrongObjectType), conn.cursor() as cur, cur.copy(
            "COPY claims (patient_id, amount, code) FROM STDIN"
        ) as copy:
            copy.write_row((1, 10, "Z10"))
        assert conn.execute("SELECT 1").fetchone() == (1,)
    copies = wait_for(lambda: len(audit_rows(
        applied_clinic, "kind IN ('copy_out', 'copy_in')")) == 3 and audit_rows(
        applied_clinic, "kind IN ('copy_out', 'copy_in')"))
    assert sorted((r[6], r[3], r[5]) for r in copies) == [
        ("copy_in", "allowed", "42809"), ("copy_out", "expired", "42501"),
        ("copy_out", "held", None)]


def test_copy_out_counts_rows_when_the_policy_allows_it(
    applied_clinic: Database, tmp_path: Any
) -> None:
    import dataclasses

    from conftest import clinic_policy
    from proxyharness import run_proxy

    policy = clinic_policy(applied_clinic.name)
    research = policy.group("research")
    relaxed = dataclasses.replace(
        research, approval=dataclasses.replace(research.approval, statements=()))
    policy = dataclasses.replace(
        policy, groups=tuple(relaxed if g.name == "research" else g for g in policy.groups))
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool") as px:
        with px.connect("r-1", "research") as conn, conn.cursor() as cur:
            lines = []
            with cur.copy("COPY (SELECT id, zip FROM patients ORDER BY id LIMIT 5) TO STDOUT") \
                    as copy:
                for data in copy:
                    lines.append(bytes(data))
        assert len(lines) == 5
        copies = wait_for(lambda: audit_rows(applied_clinic, "kind = 'copy_out'"))
        assert [(r[3], r[4]) for r in copies] == [("masked", 5)]


def test_asyncpg_binary_and_prepared(applied_clinic: Database, proxy: RunningProxy) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> tuple[Any, ...]:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="agent-8", database=proxy.database,
            password=proxy.token("agent-8", "research"), ssl=False)
        try:
            stmt = await conn.prepare("SELECT id, birth_date, zip FROM patients WHERE id = $1")
            first = await stmt.fetchrow(2)
            count = await conn.fetchval("SELECT count(*) FROM visits WHERE patient_id < $1", 50)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute("RESET ROLE")
            again = await conn.fetchval("SELECT $1::int * 2", 21)
            return first, count, again
        finally:
            await conn.close()

    first, count, again = asyncio.run(run())
    assert first["id"] == 2 and first["birth_date"].month == 1 and again == 42 and count > 0
    where = "agent = 'agent-8' AND parameters IS NOT NULL AND statement LIKE '%WHERE id = $1'"
    rows = wait_for(lambda: audit_rows(applied_clinic, where))
    assert [r[8] for r in rows] == [["2"]], audit_rows(applied_clinic)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql(applied_clinic: Database, proxy: RunningProxy) -> None:
    env = {**os.environ, "PGPASSWORD": proxy.token("doc-1", "clinician", clinic_id=2)}
    done = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-At", "-h", "127.0.0.1", "-p", str(proxy.port),
         "-U", "doc-1", "-d", proxy.database, "-c", "SELECT count(*) FROM patients",
         "-c", "SET ROLE postgres", "-c", "SELECT current_user"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    lines = done.stdout.split()
    assert lines[0].isdigit() and lines[-1] == "clinician", done
    assert "42501" in done.stderr or "policyc" in done.stderr


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_over_tls(applied_clinic: Database, proxy: RunningProxy) -> None:
    env = {**os.environ, "PGPASSWORD": proxy.token("doc-1", "clinician", clinic_id=2),
           "PGSSLMODE": "require"}
    done = subprocess.run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "doc-1",
         "-d", proxy.database, "-c", "SELECT 'hello'"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.stdout.strip() == "hello", done.stderr
    tls = wait_for(lambda: applied_clinic.execute(
        "SELECT tls, tls_version FROM audit.sessions WHERE agent = 'doc-1'"))
    assert tls[0][0] is True and str(tls[0][1]).startswith("TLS")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(applied_clinic: Database, proxy: RunningProxy, tmp_path: Any,
                 mode: str) -> None:
    script = tmp_path / "read.sql"
    script.write_text("\\set pid random(1, 300)\nSELECT id, ssn FROM patients WHERE id = :pid;\n")
    env = {**os.environ, "PGPASSWORD": proxy.token("bench-1", "billing", clinic_id=1)}
    done = subprocess.run(
        ["pgbench", "-n", "-M", mode, "-c", "2", "-t", "50", "-f", str(script),
         "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "bench-1", proxy.database],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "number of failed transactions: 0" in done.stdout
    rows = wait_for(lambda: len(audit_rows(applied_clinic, "agent = 'bench-1'")) >= 100 and
                    audit_rows(applied_clinic, "agent = 'bench-1'"))
    assert len([r for r in rows if "FROM patients" in r[2]]) == 100


def test_psycopg_async_prepared_and_pipeline(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    async def run() -> tuple[Any, ...]:
        conn = await psycopg.AsyncConnection.connect(
            proxy.dsn("async-1", "clinician", clinic_id=3), autocommit=True)
        async with conn:
            cur = await conn.execute("SELECT count(*) FROM visits WHERE clinic_id = %s", (3,),
                                     prepare=True)
            visits = await cur.fetchone()
            async with conn.pipeline():
                first = await conn.execute("SELECT %s::int", (1,))
                second = await conn.execute("SELECT policyc.claim('clinic_id')")
            return visits, await first.fetchone(), await second.fetchone()

    visits, first, second = asyncio.run(run())
    assert visits is not None and visits[0] > 0
    assert (first, second) == ((1,), ("3",))
    rows = wait_for(lambda: len(audit_rows(applied_clinic, "agent = 'async-1'")) == 3 and
                    audit_rows(applied_clinic, "agent = 'async-1'"))
    assert [r[3] for r in rows] == ["allowed", "allowed", "allowed"]
    assert rows[0][8] == ["3"]


def test_agents_cannot_listen_or_notify_on_policyc_channels(proxy: RunningProxy) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        for statement in ("LISTEN policyc_approvals", 'LISTEN "policyc_approval_requests"',
                          "NOTIFY policyc_approvals, '{\"id\": 1, \"status\": \"approved\"}'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="channels"):
                conn.execute(statement)
        conn.execute("LISTEN my_own_channel")  # other channels are the agent's business
