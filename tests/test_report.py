"""``policyc report`` (issue #16): the HIPAA evidence pack, on real clusters.

An empty trail, a busy one driven through the real proxy (every figure cross-checked against a
direct SQL count), a tampered one (the verdict turns red and names the record), a policy with
unused grants (section 8 lists them with their file:line), an auditor with nothing but
``policyc_auditor`` (works) and an agent's group role (refused in one line).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import CLINIC, Database
from policyc.cli import main
from policyc.report import gather, period, svg
from policyc.report.gather import Query
from proxyharness import wait_for

POLICY = str(CLINIC / "policy.yaml")
AUDITOR = "alice_auditor"


def auditor(db: Database) -> str:
    """A login role with nothing but membership in policyc_auditor."""
    with db.connect() as conn:
        conn.execute(f"CREATE ROLE {AUDITOR} LOGIN IN ROLE policyc_auditor")
    return db.dsn_as(AUDITOR)


def report(dsn: str, tmp_path: Path, *extra: str) -> tuple[int, str, dict[str, Any], str]:
    out = io.StringIO()
    html_path, json_path = tmp_path / "evidence.html", tmp_path / "evidence.json"
    code = main(["report", "--dsn", dsn, "--out", str(html_path), "--json", str(json_path),
                 *extra], out)
    document = json.loads(json_path.read_text()) if json_path.exists() else {}
    html = html_path.read_text() if html_path.exists() else ""
    return code, out.getvalue(), document, html


def section(document: dict[str, Any], key: str) -> dict[str, Any]:
    found = [s for s in document["sections"] if s["key"] == key]
    assert found, key
    return found[0]


def record_session(db: Database, agent: str, group: str, statements: list[dict[str, Any]],
                   *, close: bool = True) -> str:
    """A proxied session as the proxy records it (session row, seq 1.., close)."""
    sid = str(uuid.uuid4())
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO audit.sessions (session_id, agent, group_name, role_name, claims, "
            "client_addr, tls, tls_version, outcome) VALUES (%s, %s, %s, %s, "
            "jsonb_build_object('sub', %s::text, 'iss', 'https://idp.example/', 'iat', 1, "
            "'exp', 601), '10.0.0.1', true, 'TLSv1.3', 'open')",
            (sid, agent, group, group, agent))
        for seq, st in enumerate(statements, start=1):
            conn.execute(
                "INSERT INTO audit.statements (record_id, session_id, agent, group_name, "
                "statement, decision, kind, tables, phi_columns, rows, duration_ms, seq) "
                "VALUES (gen_random_uuid(), %s, %s, %s, 'SELECT ...', %s, %s, %s, %s, %s, 1.0, "
                "%s)",
                (sid, agent, group, st.get("decision", "allowed"), st.get("kind", "select"),
                 st.get("tables", []), st.get("phi", []), st.get("rows", 1), seq))
        if close:
            conn.execute(
                "UPDATE audit.sessions SET ended_at = now(), end_reason = 'client closed', "
                "outcome = 'closed', end_seq = %s WHERE session_id = %s",
                (len(statements) + 1, sid))
    return sid


# --- no database ---------------------------------------------------------------------------
def test_period_defaults_to_ninety_days_and_a_date_is_a_whole_day() -> None:
    now = dt.datetime(2026, 12, 31, 12, tzinfo=dt.UTC)
    start, end = period(None, None, now=now)
    assert end == now and end - start == dt.timedelta(days=90)
    parser_args = ["report", "--out", "x.html", "--from", "2026-10-01", "--to", "2026-12-31"]
    from policyc.cliargs import build_parser

    args = build_parser().parse_args(parser_args)
    assert args.start == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    assert args.end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)  # the 31st included


def test_every_query_says_what_it_answers() -> None:
    named = gather.queries()
    assert len(named) >= 20
    for name, query in named.items():
        assert query.answers, f"{query.relative} has no 'Answers:' header"
        assert re.fullmatch(r"[a-z_]+", name)
        assert set(query.parameters) <= {"from", "to", "groups", "tables"}, query.relative


def test_charts_are_plain_svg() -> None:
    bars = svg.stacked_bars(["2026-12-01", "2026-12-02"], {"allowed": [3, 0], "blocked": [1, 2]},
                            title="t")
    heat = svg.heat_map(["billing"], ["public.patients.ssn"], {("billing",
                                                                "public.patients.ssn"): 7},
                        title="h")
    for chart in (bars, heat):
        assert chart.startswith("<svg") and chart.endswith("</svg>")
        assert "<script" not in chart
    assert "2026-12-01: 3 allowed" in bars and "7 rows" in heat


# --- on clusters -----------------------------------------------------------------------------
def test_empty_trail(applied_clinic: Database, tmp_path: Path) -> None:
    code, out, doc, html = report(auditor(applied_clinic), tmp_path, "--policy", POLICY)
    assert code == 0, out
    assert doc["integrity"]["verdict"] == "ok" and "INTACT" in doc["integrity"]["text"]
    figures = section(doc, "summary")["figures"]
    assert figures["statements"] == 0 and figures["sessions"] == 0
    assert [s["number"] for s in doc["sections"]] == list(range(1, 12))
    # self-contained: no script, nothing fetched; every query shown in a fold
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@media print" in html
    assert html.count("<details>") >= len(gather.queries()) - 1
    assert "sql/report/01_overview.sql" in html
    # nothing to see is said plainly, and nothing unused can be judged without use
    assert section(doc, "access-control")["verdict"] in ("ok", "warn")


def test_busy_trail_figures_match_direct_counts(proxy: Any, applied_clinic: Database,
                                                tmp_path: Path) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("SELECT id, full_name, ssn FROM patients ORDER BY id LIMIT 5").fetchall()
        conn.execute("SELECT count(*) FROM claims").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE postgres")  # blocked
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE claims")  # held, then expired (hold 1 s)
    with psycopg.connect(proxy.dsn("research-1", "research", sslmode="require"),
                         autocommit=True) as conn:  # over TLS
        for _ in range(3):
            conn.execute("SELECT birth_date, zip FROM patients").fetchall()
    with proxy.connect("doc-1", "clinician", clinic_id=2) as conn:
        conn.execute("SELECT full_name FROM patients LIMIT 3").fetchall()
        conn.execute("INSERT INTO notes (id, patient_id, author, written_at, body) "
                     "SELECT 900000 + id, id, 'doc-1', now(), 'seen' FROM patients "
                     "WHERE clinic_id = 2 ORDER BY id LIMIT 2")
    with pytest.raises(psycopg.OperationalError):  # a refused login
        psycopg.connect(proxy.dsn("agent-9", "billing", token=proxy.token("agent-9", "nobody")))

    def count(sql: str) -> Any:
        return applied_clinic.execute(sql)[0][0]

    assert wait_for(lambda: count("SELECT count(*) FROM audit.statements") >= 10
                    and count("SELECT count(*) FROM audit.sessions WHERE outcome = 'open'") == 0)
    count("SELECT audit.checkpoint()")
    code, out, doc, html = report(auditor(applied_clinic), tmp_path, "--policy", POLICY)
    assert code == 0, out
    summary = section(doc, "summary")["figures"]
    for decision, n in summary["statements_by_decision"].items():
        assert n == count(f"SELECT count(*) FROM audit.statements WHERE decision = '{decision}'")
    assert summary["statements_by_decision"]["masked"] >= 4
    assert summary["statements_by_decision"]["blocked"] >= 1
    assert summary["statements_by_decision"]["held"] == 1
    assert summary["statements"] == count("SELECT count(*) FROM audit.statements")
    assert summary["sessions"] == count("SELECT count(*) FROM audit.sessions")
    assert summary["sessions_refused"] == 1
    assert summary["agents"] == count("SELECT count(DISTINCT agent) FROM audit.sessions")
    assert summary["phi_rows"] == count(
        "SELECT sum(rows) FROM audit.statements WHERE cardinality(phi_columns) > 0")
    assert summary["phi_columns_read"] == sorted(count(
        "SELECT array_agg(DISTINCT c) FROM audit.statements, unnest(phi_columns) c"))
    assert doc["integrity"]["verdict"] == "ok"
    heat = section(doc, "activity-review")["figures"]["phi_by_group_column"]
    for cell in heat:
        assert cell["rows"] == count(
            "SELECT coalesce(sum(rows), 0) FROM audit.statements WHERE group_name = "
            f"'{cell['group']}' AND '{cell['column']}' = ANY (phi_columns)")
    integrity = section(doc, "integrity")["figures"]
    assert integrity["row_changes"] == count("SELECT count(*) FROM audit.row_changes") == 2
    auth = section(doc, "authentication")["figures"]
    assert auth["refused"] == 1 and auth["refused_by_reason"] == {"no_matching_group": 1}
    assert auth["accepted"] == count("SELECT count(*) FROM audit.sessions "
                                     "WHERE outcome <> 'refused'")
    tls = section(doc, "transmission")["figures"]
    assert tls["over_tls"] == count("SELECT count(*) FROM audit.sessions "
                                    "WHERE tls AND outcome <> 'refused'") == 1
    assert tls["plaintext_sessions"] == 2
    approvals = section(doc, "approvals")["figures"]
    assert approvals["requests"] == count("SELECT count(*) FROM audit.approvals") == 1
    assert approvals["expired"] == 1
    assert section(doc, "access-control")["figures"]["drift"] == []
    controls = section(doc, "audit-controls")["figures"]
    assert controls["sessions_with_gaps"] == 0 and controls["verify"]["problems"] == 0
    # no statement text, parameters or results in the auditor's document
    assert "SELECT id, full_name" not in html and "TRUNCATE claims" not in html
    assert "<svg" in html


def test_tampered_trail_turns_red_and_names_the_record(applied_clinic: Database,
                                                       tmp_path: Path) -> None:
    db = applied_clinic
    record_session(db, "agent-a", "research", [
        {"tables": ["public.patients"], "phi": ["public.patients.zip"], "rows": 3}] * 3)
    db.execute("SELECT audit.checkpoint()")
    target = db.execute("SELECT min(id) FROM audit.statements")[0][0]
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit.statements SET rows = 0 WHERE id = %s", (target,))
    code, out, doc, html = report(auditor(db), tmp_path, "--policy", POLICY)
    assert code == 1
    verdict = doc["integrity"]
    assert verdict["verdict"] == "fail" and "BROKEN" in verdict["text"]
    assert f"record {target}" in verdict["text"] and "audit.statements" in verdict["text"]
    assert f"record {target}" in out
    assert 'class="verdict v-fail"' in html
    assert section(doc, "audit-controls")["verdict"] == "fail"


def test_unused_grants_are_listed_with_their_policy_line(applied_clinic: Database,
                                                         tmp_path: Path) -> None:
    db = applied_clinic
    record_session(db, "agent-7", "billing", [
        {"tables": ["public.patients"], "phi": ["public.patients.full_name",
                                                "public.patients.ssn"], "decision": "masked"},
        {"tables": ["public.claims"], "kind": "insert"},
    ])
    code, out, doc, html = report(auditor(db), tmp_path, "--policy", POLICY)
    assert code == 0, out
    unused = {(u["group"], u["grant"], u["kind"]): u["policy"]
              for u in section(doc, "minimum-necessary")["figures"]["unused"]}
    lines = Path(POLICY).read_text().splitlines()
    billing = lines.index("  billing:")
    visits = next(i for i, line in enumerate(lines) if i > billing
                  and line.strip().startswith("public.visits:")) + 1
    patients = next(i for i, line in enumerate(lines) if i > billing
                    and line.strip().startswith("public.patients: [")) + 1
    assert unused[("billing", "public.visits", "table (read)")] == f"{POLICY}:{visits}"
    assert unused[("billing", "public.patients.birth_date", "PHI column")] == \
        f"{POLICY}:{patients}"
    assert ("billing", "public.patients.ssn", "PHI column") not in unused  # it was read
    assert ("billing", "public.claims", "write grant") not in unused  # it was written
    # research used nothing at all: every table it reads is a candidate
    assert ("research", "public.patients", "table (read)") in unused
    assert f"{POLICY}:{visits}" in html


def test_a_group_role_is_refused_in_one_line(applied_clinic: Database, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, _doc, _html = report(applied_clinic.dsn_as("billing"), tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "policyc_auditor" in err, err
    assert not (tmp_path / "evidence.html").exists()


def test_the_snapshot_cannot_write(applied_clinic: Database,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Even as a superuser, a query of the report that writes is refused."""
    named = gather.queries()
    sneaky = Query("sneaky", Path("99_sneaky.sql"), "x", None,
                   "INSERT INTO public.claims (patient_id, amount, code) VALUES (1, 1, 'Z')")
    monkeypatch.setattr(gather, "queries", lambda: {**named, "sneaky": sneaky})
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        gather.gather(applied_clinic.dsn, now - dt.timedelta(days=1), now, groups=[], tables=[],
                      verify=False)


@pytest.mark.slow
def test_the_report_works_on_a_read_replica(tmp_path: Path) -> None:
    """A streaming standby of a database with a trail: the report is written from it as an
    auditor; the integrity verdict says plainly it was not verified there (audit.verify()
    needs temporary tables), never that the trail is intact."""
    from conftest import clinic_policy
    from policyc.apply import apply_policy
    from policyc.devcluster import (
        FAST_TEST_SETTINGS,
        Cluster,
        _server_user,
        find_bindir,
        throwaway_cluster,
    )

    with throwaway_cluster(FAST_TEST_SETTINGS) as primary:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE clinic")
        db = Database(primary, "clinic")
        with db.connect() as conn:
            conn.execute((CLINIC / "schema.sql").read_text().encode())
            apply_policy(conn, clinic_policy("clinic"))
        dsn = auditor(db)
        record_session(db, "agent-r1", "billing", [{"tables": ["public.claims"]}])
        # beside the primary, where the server's OS user can reach it (not under pytest's tmp)
        standby = Cluster(base=primary.base / "standby", settings=FAST_TEST_SETTINGS)
        standby.base.mkdir()
        standby.base.chmod(0o700)
        account = _server_user()
        if account is not None:
            os.chown(standby.base, account.pw_uid, account.pw_gid)
        standby._run([str(find_bindir() / "pg_basebackup"), "-D", str(standby.datadir), "-R",
                      "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p", str(primary.port),
                      "-U", "postgres", "--no-sync"])
        (standby.socketdir).mkdir()
        if account is not None:
            os.chown(standby.socketdir, account.pw_uid, account.pw_gid)
        standby.start()
        try:
            replica = dsn.replace(f"port={primary.port}", f"port={standby.port}")
            assert wait_for(lambda: psycopg.connect(replica).execute(
                "SELECT count(*) FROM audit.statements").fetchone() == (1,))
            code, out, doc, _ = report(replica, tmp_path, "--policy", POLICY)
            assert doc, out
            assert doc["integrity"]["verdict"] != "ok"
            assert "NOT VERIFIED" in doc["integrity"]["text"]
            assert "read replica" in doc["integrity"]["text"]
            assert section(doc, "summary")["figures"]["statements"] == 1
            assert code == 0, out  # not verified is said, not an error
        finally:
            standby.stop()
