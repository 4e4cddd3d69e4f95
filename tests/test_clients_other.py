"""Clients other than Python's, unchanged, through the real proxy (issue #12): psql's meta
commands and \\copy, node-postgres, the PostgreSQL JDBC driver and pg_dump. Each runs as a
subprocess against the in-process proxy and asserts the rows it got and, for errors, the
SQLSTATE the client saw (docs/clients.md says how each one connects)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Database, clinic_policy
from proxyharness import RunningProxy, run_proxy, wait_for

CLIENTS = Path(__file__).resolve().parent / "clients"
NODE_DIR = CLIENTS / "node"
JDBC_SOURCE = CLIENTS / "jdbc" / "Scenario.java"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
AGENT = "agent-7"  # a billing agent of clinic 1 unless a test says otherwise
MASKED_SSN_LENGTH = 64  # billing sees the HMAC pseudonym of an SSN, hex

needs_psql = pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
needs_pg_dump = pytest.mark.skipif(shutil.which("pg_dump") is None,
                                   reason="pg_dump is not installed")
needs_node = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node is not installed (scripts/system-deps.sh installs it)")
needs_java = pytest.mark.skipif(
    shutil.which("java") is None or not JDBC_JAR.exists(),
    reason=f"java or {JDBC_JAR} is missing (scripts/system-deps.sh installs "
           "default-jdk-headless and libpostgresql-jdbc-java)")


def _env(proxy: RunningProxy, agent: str, group: str, **claims: Any) -> dict[str, str]:
    """libpq's environment for an agent: the token is the password, plaintext on loopback."""
    return {**os.environ, "PGPASSWORD": proxy.token(agent, group, **claims),
            "PGSSLMODE": "disable", "PGHOST": "127.0.0.1", "PGPORT": str(proxy.port),
            "PGUSER": agent, "PGDATABASE": proxy.database}


def psql(proxy: RunningProxy, *args: str, stdin: str | None = None, group: str = "billing",
         agent: str = AGENT) -> subprocess.CompletedProcess[str]:
    """psql without ~/.psqlrc, SQLSTATEs in its error lines, errors not stopping the script."""
    return subprocess.run(
        ["psql", "-X", "-v", "VERBOSITY=verbose", "-v", "ON_ERROR_STOP=0", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
        env=_env(proxy, agent, group, clinic_id=1),
    )


def error_lines(stderr: str) -> list[str]:
    """psql's ERROR lines without the ``psql:<stdin>:4:`` prefix of script input."""
    return [line[line.index("ERROR:"):] for line in stderr.splitlines() if "ERROR:" in line]


def clinic_patients(db: Database, clinic: int) -> list[int]:
    return [r[0] for r in db.execute(
        "SELECT id FROM public.patients WHERE clinic_id = %s ORDER BY id", (clinic,))]


# --- psql ---------------------------------------------------------------------------------


@needs_psql
@pytest.mark.parametrize("command", ["\\d", "\\dv"])
def test_psql_lists_the_group_views(proxy: RunningProxy, command: str) -> None:
    done = psql(proxy, "-At", "-c", command)
    assert done.returncode == 0 and not done.stderr, done
    assert done.stdout.splitlines() == [
        "billing|claims|view|policyc_owner", "billing|patients|view|policyc_owner",
        "billing|visits|view|policyc_owner"]


@needs_psql
def test_psql_describes_a_view_with_only_the_granted_columns(proxy: RunningProxy) -> None:
    done = psql(proxy, "-c", "\\d patients")
    assert done.returncode == 0 and not done.stderr, done
    assert 'View "billing.patients"' in done.stdout
    shown = psql(proxy, "-At", "-c", "\\d patients").stdout.splitlines()
    assert [line.split("|")[:2] for line in shown] == [
        ["id", "integer"], ["clinic_id", "integer"], ["full_name", "text"], ["ssn", "text"],
        ["birth_date", "date"]]  # no zip, email or phone: billing does not read them


@needs_psql
def test_psql_lists_functions_and_schemas(proxy: RunningProxy) -> None:
    done = psql(proxy, "-At", "-c", "\\df", "-c", "\\df policyc.claim", "-c", "\\dn")
    assert done.returncode == 0 and not done.stderr, done
    lines = done.stdout.splitlines()
    assert "policyc|claim|text|name text|func" in lines
    assert {"billing|policyc_owner", "public|pg_database_owner"} <= set(lines)


@needs_psql
def test_psql_dp_is_refused_naming_pg_policy(proxy: RunningProxy) -> None:
    """\\dp reads pg_policy (row-security rules): refused on purpose, and it must say so."""
    done = psql(proxy, "-c", "\\dp", "-c", "SELECT 'still usable'")
    assert error_lines(done.stderr) == [
        "ERROR:  42501: policyc: statement blocked: catalog relation pg_catalog.pg_policy is "
        "not readable by agents (other sessions' activity, statistics or security rules) "
        "unless the policy lists it under groups.billing.catalog"], done
    assert "still usable" in done.stdout


@needs_psql
def test_psql_catalog_meta_commands_work(proxy: RunningProxy) -> None:
    """The describe commands that read only vetted catalogs all answer (one psql run)."""
    commands = ["\\dt", "\\di", "\\ds", "\\dm", "\\dT", "\\do", "\\dD", "\\dn+", "\\df+",
                "\\du", "\\dx", "\\dconfig", "\\ddp", "\\dy", "\\dRp", "\\dd", "\\dL",
                "\\d+ patients", "\\sv patients", "\\sf policyc.claim", "\\conninfo"]
    done = psql(proxy, *[arg for command in commands for arg in ("-c", command)])
    assert done.returncode == 0 and not error_lines(done.stderr), done
    assert done.stderr.splitlines() == ["Did not find any relations."] * 4  # \dt \di \ds \dm
    assert "WHERE patients.clinic_id = (( SELECT policyc.claim('clinic_id'::text)" \
        in done.stdout  # \sv shows the row filter the view applies


# meta command -> what the proxy names when it refuses it (docs/clients.md says why)
REFUSED_META = {
    "\\z": "catalog relation pg_catalog.pg_policy is not readable",
    "\\dRs": "catalog relation pg_catalog.pg_subscription is not readable",
    "\\drds": "catalog relation pg_catalog.pg_db_role_setting is not readable",
    "\\dl": "catalog relation pg_catalog.pg_largeobject_metadata is not readable",
    "\\d+": "function pg_table_size is a",
    "\\l+": "function pg_database_size is a",
    "\\db": "function pg_tablespace_location is a",
}


@needs_psql
@pytest.mark.parametrize("command", REFUSED_META)
def test_psql_refused_meta_commands_name_what_they_read(proxy: RunningProxy,
                                                        command: str) -> None:
    done = psql(proxy, "-c", command, "-c", "SELECT 'still usable'")
    (line,) = error_lines(done.stderr)
    assert line.startswith("ERROR:  42501: policyc: statement blocked: " + REFUSED_META[command])
    assert "still usable" in done.stdout


@needs_psql
@pytest.mark.parametrize("verbosity", ["verbose", "sqlstate"])
def test_psql_error_in_transaction_is_the_real_error(applied_clinic: Database,
                                                     proxy: RunningProxy, verbosity: str) -> None:
    script = (f"\\set VERBOSITY {verbosity}\nBEGIN;\nSELECT count(*) FROM patients;\n"
              "SELECT nosuchcol FROM patients;\nSELECT 1;\nROLLBACK;\nSELECT 'after rollback';\n")
    done = psql(proxy, "-At", stdin=script)
    first = 'ERROR:  42703: column "nosuchcol" does not exist' if verbosity == "verbose" \
        else "ERROR:  42703"
    # the bad column is reported as itself; only the statement after it meets 25P02
    assert [line.split(":  ")[1][:5] for line in error_lines(done.stderr)] == [
        "42703", "25P02"], done.stderr
    assert error_lines(done.stderr)[0] == first
    assert done.stdout.splitlines() == [
        "BEGIN", str(len(clinic_patients(applied_clinic, 1))), "ROLLBACK", "after rollback"]


@needs_psql
def test_psql_copy_out_is_held_and_expires_with_a_clear_error(proxy: RunningProxy) -> None:
    """copy_out needs approval in the clinic policy; the fixture gives up after a second."""
    done = psql(proxy, "-c", "\\copy (SELECT id FROM patients ORDER BY id) TO STDOUT",
                "-c", "SELECT 'still usable'")
    assert "NOTICE:  00000: policyc: approval request 1 is waiting for an approver" \
        in done.stderr, done
    assert error_lines(done.stderr) == [
        "ERROR:  42501: policyc: approval request 1 was expired; the statement did not run"]
    assert "still usable" in done.stdout


@pytest.fixture
def approving_proxy(applied_clinic: Database, tmp_path: Path) -> Iterator[RunningProxy]:
    """A proxy whose held statements wait 30 s, and an approver ``alice``."""
    applied_clinic.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    policy = clinic_policy(applied_clinic.name)
    policy = dataclasses.replace(
        policy, approvals=dataclasses.replace(policy.approvals, hold_seconds=30))
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running


@needs_psql
def test_psql_copy_out_runs_once_approved(applied_clinic: Database,
                                          approving_proxy: RunningProxy, tmp_path: Path) -> None:
    """The data export recipe of docs/clients.md: \\copy of a query to a file, approved."""
    out = tmp_path / "patients.csv"
    command = ["psql", "-X", "-v", "VERBOSITY=verbose", "-c",
               f"\\copy (SELECT id, clinic_id, ssn FROM patients ORDER BY id) TO '{out}' CSV"]
    with subprocess.Popen(command, env=_env(approving_proxy, AGENT, "billing", clinic_id=1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as client:
        pending = wait_for(lambda: applied_clinic.execute(
            "SELECT id, agent, statement FROM audit.approvals WHERE status = 'pending'"))
        assert pending and pending[0][1] == AGENT, pending
        assert pending[0][2].startswith("COPY") and "TO STDOUT" in pending[0][2], pending
        with applied_clinic.connect("alice") as conn:
            conn.execute("SELECT audit.approve(%s, 'export for claims audit')", (pending[0][0],))
        stdout, stderr = client.communicate(timeout=30)
    assert client.returncode == 0, stderr
    assert stdout.strip() == f"COPY {len(clinic_patients(applied_clinic, 1))}"
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert [int(r[0]) for r in rows] == clinic_patients(applied_clinic, 1)
    assert {r[1] for r in rows} == {"1"} and {len(r[2]) for r in rows} == {MASKED_SSN_LENGTH}


@needs_psql
def test_psql_csv_select_exports_masked_rows_without_copy(applied_clinic: Database,
                                                          proxy: RunningProxy) -> None:
    """Below the group's rows_over a plain SELECT with --csv needs no approval."""
    done = psql(proxy, "--csv", "-c", "SELECT id, clinic_id, ssn FROM patients ORDER BY id")
    assert done.returncode == 0 and not done.stderr, done
    header, *rows = [line.split(",") for line in done.stdout.splitlines()]
    assert header == ["id", "clinic_id", "ssn"]
    assert [int(r[0]) for r in rows] == clinic_patients(applied_clinic, 1)
    assert {len(r[2]) for r in rows} == {MASKED_SSN_LENGTH}


@needs_psql
def test_psql_copy_in_to_a_view_gets_postgresql_error(applied_clinic: Database,
                                                      proxy: RunningProxy) -> None:
    """A group's tables are views and PostgreSQL cannot COPY into a view: the client gets the
    server's own error (42809), nothing is written, and INSERT is the way in."""
    first, other = clinic_patients(applied_clinic, 1)[0], clinic_patients(applied_clinic, 2)[0]
    done = psql(proxy, "-c", "\\copy claims (patient_id, visit_id, amount, code) FROM STDIN",
                stdin=f"{first}\t\\N\t12.50\tPSQL-1\n\\.\n")
    assert error_lines(done.stderr) == ['ERROR:  42809: cannot copy to view "claims"'], done
    assert "HINT:  To enable copying to a view, provide an INSTEAD OF INSERT trigger." \
        in done.stderr
    insert = ("INSERT INTO claims (patient_id, visit_id, amount, code) "
              "VALUES ({}, NULL, 12.50, 'PSQL-1')")
    done = psql(proxy, "-c", insert.format(first), "-c", insert.format(other))
    assert done.stdout.splitlines() == ["INSERT 0 1"], done
    # another clinic's patient: row security's WITH CHECK refuses it
    assert error_lines(done.stderr) == [
        'ERROR:  42501: new row violates row-level security policy "policyc_billing" for '
        'table "claims"'], done
    assert applied_clinic.execute(
        "SELECT patient_id FROM public.claims WHERE code = 'PSQL-1'") == [(first,)]


# --- node-postgres ------------------------------------------------------------------------


def node(proxy: RunningProxy, scenario: str, agent: str = "node-1") -> dict[str, Any]:
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules is missing: run `make node-deps` first")
    token = proxy.token(agent, "billing", clinic_id=1)
    url = (f"postgresql://{agent}:{token}@127.0.0.1:{proxy.port}/{proxy.database}"
           "?sslmode=disable")
    done = subprocess.run(["node", str(NODE_DIR / "scenario.js"), url, scenario],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@needs_node
def test_node_simple_query(applied_clinic: Database, proxy: RunningProxy) -> None:
    steps = node(proxy, "simple")["steps"]
    assert steps[0] == {"ok": True, "command": "SELECT", "rows": [
        {"group": "billing", "n": len(clinic_patients(applied_clinic, 1))}]}
    assert steps[1] == {"ok": True, "results": [{"command": "SELECT", "rows": [{"a": 1}]},
                                                {"command": "SELECT", "rows": [{"b": 2}]}]}


@needs_node
def test_node_extended_query_with_params(applied_clinic: Database,
                                         proxy: RunningProxy) -> None:
    mine, other = clinic_patients(applied_clinic, 1)[0], clinic_patients(applied_clinic, 2)[0]
    steps = node(proxy, "extended")["steps"]
    assert [s["ok"] for s in steps] == [True, True, True], steps
    (row,) = steps[0]["rows"]
    assert (row["id"], row["clinic_id"], len(row["ssn"])) == (mine, 1, MASKED_SSN_LENGTH)
    assert steps[1]["rows"] == [{"sum": 42}]
    assert other == 2 and steps[2]["rows"] == []  # another clinic's patient is not there


@needs_node
def test_node_error_after_begin_is_the_real_error(proxy: RunningProxy) -> None:
    steps = node(proxy, "tx_error")["steps"]
    assert [(s["ok"], s.get("code")) for s in steps] == [
        (True, None), (False, "42703"), (True, None), (True, None)], steps
    assert steps[1]["message"] == 'column "nosuchcol" does not exist'
    assert steps[3]["rows"] == [{"after": "usable"}]


@needs_node
def test_node_named_prepared_statement_twice(applied_clinic: Database,
                                             proxy: RunningProxy) -> None:
    first, second = clinic_patients(applied_clinic, 1)[:2]
    steps = node(proxy, "prepared")["steps"]
    assert [s.get("rows") for s in steps] == [
        [{"id": first, "clinic_id": 1}], [{"id": second, "clinic_id": 1}]], steps
    recorded = wait_for(lambda: len(runs := applied_clinic.execute(
        "SELECT parameters, decision FROM audit.statements WHERE agent = 'node-1' "
        "AND statement LIKE '%WHERE id = $1' ORDER BY id")) >= 2 and runs)
    assert recorded == [([str(first)], "allowed"), ([str(second)], "allowed")]


# --- JDBC ---------------------------------------------------------------------------------


def jdbc(proxy: RunningProxy, *scenarios: str, agent: str = "jdbc-1") -> dict[str, Any]:
    """Run scenarios in one JVM; returns each scenario's steps by name."""
    url = f"jdbc:postgresql://127.0.0.1:{proxy.port}/{proxy.database}?sslmode=disable"
    done = subprocess.run(
        ["java", "-cp", str(JDBC_JAR), str(JDBC_SOURCE), url, agent,
         proxy.token(agent, "billing", clinic_id=1), ",".join(scenarios)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {line["scenario"]: line["steps"] for line in lines}


@needs_java
def test_jdbc(applied_clinic: Database, proxy: RunningProxy) -> None:
    """Metadata, a batch insert, an error with autocommit off, a statement past
    prepareThreshold and a refusal, in one JVM (start-up is the slow part)."""
    runs = jdbc(proxy, "metadata", "batch", "tx_error", "prepared", "blocked")
    patients = clinic_patients(applied_clinic, 1)
    problems = [f"{name}: {problem}" for name, check in _JDBC_CHECKS.items()
                if (problem := check(runs[name], patients))]
    assert not problems, "\n".join(problems) + "\n" + json.dumps(runs, indent=1)
    rows = applied_clinic.execute(
        "SELECT patient_id, amount::text FROM public.claims WHERE code = 'JDBC-BATCH' ORDER BY 1")
    assert rows == [(1, "12.50"), (4, "12.50"), (7, "12.50")]


def _jdbc_metadata(steps: list[dict[str, Any]], _: list[int]) -> str | None:
    expected = [{"ok": True, "schema": "billing", "tables": [
                    ["claims", "VIEW"], ["patients", "VIEW"], ["visits", "VIEW"]]},
                {"ok": True, "columns": [["id", "int4"], ["clinic_id", "int4"],
                                         ["full_name", "text"], ["ssn", "text"],
                                         ["birth_date", "date"]]}]
    return None if steps == expected else "getTables/getColumns differ"


def _jdbc_batch(steps: list[dict[str, Any]], _: list[int]) -> str | None:
    expected = [{"ok": True, "counts": [1, 1, 1]}, {"ok": True, "rows": [["1"], ["4"], ["7"]]}]
    return None if steps == expected else "executeBatch did not insert the three claims"


def _jdbc_tx_error(steps: list[dict[str, Any]], patients: list[int]) -> str | None:
    codes = [(s["ok"], s.get("code")) for s in steps]
    if codes != [(True, None), (False, "42703"), (True, None)]:
        return f"expected 42703 then a usable session after rollback, got {codes}"
    if steps[0]["rows"] != [[str(len(patients))]] or steps[2]["rows"] != [["usable"]]:
        return "wrong rows"
    return None


def _jdbc_prepared(steps: list[dict[str, Any]], patients: list[int]) -> str | None:
    if [s.get("rows") for s in steps] != [[[str(p), "1"]] for p in patients[:7]]:
        return "wrong rows or an error"
    if not steps[-1]["server_prepared"]:
        return "the last runs were not server-prepared (prepareThreshold)"
    return None


def _jdbc_blocked(steps: list[dict[str, Any]], _: list[int]) -> str | None:
    if (steps[0]["ok"], steps[0].get("code")) != (False, "42501") or \
            "policyc: statement blocked" not in steps[0]["message"]:
        return "SET ROLE was not refused with 42501"
    return None if steps[1] == {"ok": True, "rows": [["billing"]]} else "session not usable"


_JDBC_CHECKS = {"metadata": _jdbc_metadata, "batch": _jdbc_batch, "tx_error": _jdbc_tx_error,
                "prepared": _jdbc_prepared, "blocked": _jdbc_blocked}


# --- pg_dump ------------------------------------------------------------------------------


def pg_dump(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg_dump", "--schema=billing", "--no-subscriptions", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=_env(proxy, "dump-1", "billing", clinic_id=1))


@pytest.fixture
def dumpable(applied_clinic: Database, proxy: RunningProxy,
             tmp_path: Path) -> Iterator[RunningProxy]:
    """The recipe of docs/clients.md: the DBA lets billing read pg_policy, which pg_dump 15
    always reads (the registry refuses it: it holds every group's row-security rules)."""
    groups = tuple(dataclasses.replace(g, catalog=("pg_catalog.pg_policy",))
                   if g.name == "billing" else g for g in proxy.policy.groups)
    with run_proxy(dataclasses.replace(proxy.policy, groups=groups),
                   applied_clinic.dsn_as("policyc_proxy"), tmp_path / "dump-spool") as own:
        yield own


@needs_pg_dump
def test_pg_dump_without_the_catalog_entry_stops_with_a_clear_refusal(
        proxy: RunningProxy) -> None:
    done = pg_dump(proxy, "--schema-only")
    assert done.returncode == 1
    assert "catalog relation pg_catalog.pg_policy is not readable by agents" in done.stderr
    assert "groups.billing.catalog" in done.stderr


@needs_pg_dump
def test_pg_dump_schema_only(dumpable: RunningProxy) -> None:
    done = pg_dump(dumpable, "--schema-only")
    assert done.returncode == 0, done.stderr
    assert "CREATE VIEW billing.patients WITH (security_barrier='true') AS" in done.stdout
    assert "CREATE VIEW billing.claims WITH (security_barrier='true') AS" in done.stdout
    assert "FROM public.patients" in done.stdout  # the view's definition, filter and masks included
    assert "CREATE TABLE" not in done.stdout  # the group's schema holds views only


@needs_pg_dump
def test_pg_dump_data_only_has_no_view_rows(dumpable: RunningProxy) -> None:
    """pg_dump never dumps a view's rows: a group's data leaves by \\copy or SELECT instead
    (the tests above); this pins that pg_dump itself completes and says nothing of the rows."""
    done = pg_dump(dumpable, "--data-only")
    assert done.returncode == 0, done.stderr
    assert "COPY billing." not in done.stdout and "INSERT INTO" not in done.stdout
