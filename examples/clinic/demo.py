"""`make demo`: the clinic example end to end on a throwaway local PostgreSQL cluster.

Act 1 — the database fence: load the clinic schema and synthetic data, `policyc plan`, then
`policyc apply`; run the same query as three agent groups and show what each sees; make a
write as a clinician agent and show what landed in audit.row_changes.

Act 2 — the data path: `policyc proxy` in front of the database (TLS with the example's
development certificate); two agents of different groups connect with psql, their OIDC tokens
as passwords, run ordinary SQL, one tries a blocked statement, and an auditor reads
audit.statements and audit.sessions.

Act 3 — just-in-time approval: the billing agent starts a bulk export (COPY ... TO STDOUT, which
its group's policy holds for a human); from a "second terminal" the approver lists the request
with `policyc approvals` and approves it with `policyc approve`; the held export then runs.

Act 4 — the auditor replays a session and verifies the trail; a superuser edits a record with
the triggers off, and `policyc audit verify` names it.

Act 5 — the evidence: an auditor (a role that is only a member of policyc_auditor) writes the
HIPAA evidence report of the demo's own activity with `policyc report`, one HTML file.

In act 1, agent identities are registered through the runtime's owner-side function, exactly
as the proxy does after verifying a token.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from policyc.cli import main as policyc
from policyc.devcluster import free_port, throwaway_cluster

HERE = Path(__file__).resolve().parent
AGENTS = {  # group -> (agent name, token claims)
    "billing": ("billing-bot-7", {"clinic_id": 1}),
    "research": ("cohort-builder", {}),
    "clinician": ("scribe-agent-2", {"clinic_id": 2}),
}


def banner(text: str) -> None:
    print(f"\n\033[1m== {text} ==\033[0m", flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 22) -> None:
    def cell(value: Any) -> str:
        text = "NULL" if value is None else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print("  " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def load_seed() -> Any:
    spec = importlib.util.spec_from_file_location("clinic_seed", HERE / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register(admin: psycopg.Connection[Any], agent_conn: psycopg.Connection[Any],
             group: str) -> None:
    agent, claims = AGENTS[group]
    admin.execute(
        "SELECT policyc.register_session(%s, %s, %s, %s, %s)",
        (agent_conn.info.backend_pid, str(uuid.uuid4()), agent, group,
         Jsonb({"sub": agent, **claims})),
    )


def run() -> int:
    banner("starting a throwaway PostgreSQL cluster")
    with throwaway_cluster() as cluster:
        print(f"  {cluster.dsn()} (data in {cluster.base})")
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE clinic")
        dsn = cluster.dsn("clinic")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((HERE / "schema.sql").read_text().encode())
            counts = load_seed().seed(conn, patients=3000, seed=7)
            conn.execute("ANALYZE")
        print("  loaded synthetic data: " + ", ".join(f"{n} {t}" for t, n in counts.items()))

        policy = str(HERE / "policy.yaml")
        banner("policyc check")
        if policyc(["check", policy]) != 0:
            return 1
        banner("policyc plan (without SQL; `policyc plan` prints it)")
        policyc(["plan", policy, "--dsn", dsn, "--no-sql"])
        banner("policyc apply")
        if policyc(["apply", policy, "--dsn", dsn]) != 0:
            return 1
        banner("policyc apply again: nothing to do")
        policyc(["apply", policy, "--dsn", dsn])

        query = "SELECT * FROM patients ORDER BY id LIMIT 4"
        with psycopg.connect(dsn, autocommit=True) as admin:
            for group, (agent, claims) in AGENTS.items():
                banner(f"{query}   -- as {agent} (group {group}, claims {claims})")
                with psycopg.connect(cluster.dsn("clinic", user=group), autocommit=True) as conn:
                    register(admin, conn, group)
                    with conn.cursor() as cur:
                        cur.execute(query)
                        assert cur.description is not None
                        table([d.name for d in cur.description], cur.fetchall())
                        cur.execute("SELECT count(*) FROM patients")
                        visible = cur.fetchone()
                    print(f"  rows visible to {group}: {visible[0] if visible else 0} of 3000")

            banner("a write by scribe-agent-2 (clinician, clinic 2), then audit.row_changes")
            with psycopg.connect(cluster.dsn("clinic", user="clinician"), autocommit=True) as conn:
                register(admin, conn, "clinician")
                sql = ("UPDATE visits SET diagnosis = 'J45.909 asthma, uncomplicated' "
                       "WHERE id = (SELECT min(id) FROM visits)")
                print(f"  {sql}")
                conn.execute(sql)
                try:
                    conn.execute(
                        "INSERT INTO visits (id, patient_id, clinic_id, visited_at) "
                        "VALUES (900001, 1, 1, now())"
                    )  # clinic 1 is not this agent's clinic
                except psycopg.errors.InsufficientPrivilege as exc:
                    print(f"  refused as expected: {exc.diag.message_primary}")
            rows = admin.execute(
                "SELECT table_name, operation, agent, db_user, "
                "old_row->>'diagnosis' AS old_diagnosis, new_row->>'diagnosis' AS new_diagnosis "
                "FROM audit.row_changes ORDER BY id"
            ).fetchall()
            table(["table", "op", "agent", "db_user", "old diagnosis (HMAC)",
                   "new diagnosis (HMAC)"], rows)
            print("  PHI columns are keyed-HMAC pseudonyms in the audit trail, never values.")
        act_two(cluster.dsn("clinic", user="policyc_proxy"), dsn)
        report = act_five(dsn, policy)
    banner("done: the cluster is gone")
    print(f"  the HIPAA evidence report of this demo's activity: {report}")
    print(f"  (and its figures as JSON: {report.with_suffix('.json')}); open it in a browser")
    return 0


def psql(port: int, agent: str, token: str, *commands: str) -> None:
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require"}
    argv = ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", agent, "-d", "clinic"]
    for command in commands:
        argv += ["-c", command]
    print(f"  $ psql \"host=127.0.0.1 port={port} dbname=clinic user={agent} "
          "password=$TOKEN sslmode=require\" " + " ".join(f"-c {c!r}" for c in commands))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    for line in (done.stdout + done.stderr).splitlines():
        print(f"    {line}")


def token(policy: str, agent: str, groups: str, *claims: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "policyc.cli", "token", policy, "--sub", agent, "--groups",
         groups, *[arg for c in claims for arg in ("--claim", c)]],
        capture_output=True, text=True, check=True)
    return out.stdout.strip()


def act_three(port: int, policy: str, billing_token: str, admin_dsn: str) -> None:
    banner("act 3: a bulk export is held until a human approves it")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    export = "COPY (SELECT id, full_name, birth_date FROM patients ORDER BY id LIMIT 5) TO STDOUT"
    env = {**os.environ, "PGPASSWORD": billing_token, "PGSSLMODE": "require"}
    print(f"  [agent terminal] $ psql ... -c {export!r}")
    agent = subprocess.Popen(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "billing-bot-7", "-d", "clinic",
         "-c", export], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    where = conninfo_to_dict(admin_dsn)
    human = {**os.environ, "PGUSER": "alice", "PGHOST": str(where["host"]),
             "PGPORT": str(where["port"]), "PGDATABASE": str(where["dbname"])}
    time.sleep(1.5)
    print("  [approver terminal] $ policyc approvals")
    subprocess.run([sys.executable, "-m", "policyc.cli", "approvals"], env=human, check=False)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        pending = admin.execute(
            "SELECT max(id) FROM audit.approvals WHERE status = 'pending'").fetchone()
    request = pending[0] if pending else None
    print(f"  [approver terminal] $ policyc approve {request} --reason 'quarterly billing export'")
    subprocess.run([sys.executable, "-m", "policyc.cli", "approve", str(request), "--reason",
                    "quarterly billing export"], env=human, check=False)
    output, _ = agent.communicate(timeout=60)
    print("  [agent terminal] the held export ran:")
    for line in output.splitlines():
        print(f"    {line}")


def cli(*args: str) -> None:
    shown = ["$AUDITOR_DSN" if a.startswith("host=") else a for a in args]
    print("  $ policyc " + " ".join(shown))
    out = subprocess.run([sys.executable, "-m", "policyc.cli", *args], capture_output=True,
                         text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        print(f"    {line}")
    print(f"    (exit {out.returncode})")


def act_four(admin_dsn: str) -> None:
    banner("act 4: the auditor replays a session and proves the trail intact")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        found = admin.execute(
            "SELECT s.session_id FROM audit.sessions s JOIN audit.statements t USING (session_id) "
            "WHERE s.agent = 'cohort-builder' ORDER BY s.started_at LIMIT 1").fetchone()
    cli("audit", "checkpoint", "--dsn", admin_dsn)
    if found:
        cli("replay", str(found[0]), "--dsn", admin_dsn)
    cli("audit", "verify", "--dsn", admin_dsn)
    banner("a superuser edits history with triggers off; verify names the record")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE audit.statements SET statement = 'SELECT 1' "
                      "WHERE id = (SELECT min(id) FROM audit.statements)")
    print("  (UPDATE audit.statements SET statement = 'SELECT 1' WHERE id = <the first>)")
    cli("audit", "verify", "--dsn", admin_dsn)


def act_five(admin_dsn: str, policy: str) -> Path:
    """The auditor's evidence pack for everything the demo did, as a role that is only a
    member of policyc_auditor (read only). The trail now holds the superuser's edit of act
    4, so its integrity verdict is red and names the record."""
    banner("act 5: the auditor writes the HIPAA evidence report (policyc report)")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("CREATE ROLE demo_auditor LOGIN IN ROLE policyc_auditor")
    where = {**conninfo_to_dict(admin_dsn), "user": "demo_auditor"}
    auditor_dsn = " ".join(f"{k}={where[k]}" for k in ("host", "port", "dbname", "user"))
    out = Path(tempfile.gettempdir()) / "policyc-demo"
    out.mkdir(exist_ok=True)
    html = out / "evidence.html"
    cli("report", "--dsn", auditor_dsn, "--policy", policy, "--out", str(html), "--json",
        str(html.with_suffix(".json")))
    return html


def act_two(service_dsn: str, admin_dsn: str) -> None:
    if shutil.which("psql") is None:
        print("  psql is not installed: skipping the proxy act")
        return
    policy = str(HERE / "policy.yaml")
    keys = HERE / "dev-keys"
    port = free_port()
    spool = tempfile.mkdtemp(prefix="policyc-spool-")
    banner(f"act 2: policyc proxy on 127.0.0.1:{port} (TLS, development certificate)")
    proxy = subprocess.Popen(
        [sys.executable, "-m", "policyc.cli", "proxy", policy, "--listen", f"127.0.0.1:{port}",
         "--upstream", service_dsn, "--tls-cert", str(keys / "dev-tls.crt"),
         "--tls-key", str(keys / "dev-tls.key"), "--spool", spool],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proxy.stdout is not None
        print("  " + proxy.stdout.readline().strip())
        billing = token(policy, "billing-bot-7", "billing-agents", "clinic_id=1")
        research = token(policy, "cohort-builder", "research-agents")
        print("  tokens minted with `policyc token` (development key; NOT for production)")
        banner("billing-bot-7 (billing, clinic 1) through the proxy")
        psql(port, "billing-bot-7", billing,
             "SELECT id, full_name, ssn, birth_date FROM patients ORDER BY id LIMIT 3",
             "SET ROLE postgres")
        banner("cohort-builder (research) through the proxy")
        psql(port, "cohort-builder", research,
             "SELECT date_part('year', birth_date) AS year, count(*) FROM patients "
             "GROUP BY 1 ORDER BY 2 DESC LIMIT 3")
        banner("a forged token is refused")
        psql(port, "billing-bot-7", billing[:-4] + "AAAA", "SELECT 1")
        act_three(port, policy, billing, admin_dsn)
        time.sleep(0.5)  # the audit spool drains asynchronously
        banner("what an auditor sees: audit.statements and audit.sessions")
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT agent, group_name, decision, rows, sqlstate, left(statement, 40), "
                "phi_columns FROM audit.statements ORDER BY id").fetchall()
            table(["agent", "group", "decision", "rows", "sqlstate", "statement",
                   "PHI columns"], rows, width=40)
            rows = admin.execute(
                "SELECT agent, group_name, outcome, reason, tls, tls_version "
                "FROM audit.sessions ORDER BY started_at").fetchall()
            print()
            table(["agent", "group", "outcome", "reason", "tls", "tls version"], rows)
        act_four(admin_dsn)
    finally:
        proxy.terminate()
        proxy.wait(10)
        shutil.rmtree(spool, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run())
