"""How long `policyc report` takes over a large trail (issue #16: under 30 s for 1 million
recorded statements).

Starts a throwaway cluster with the production-like settings of bench/common.py, loads the
clinic and applies its policy, then records N statements (default 1 000 000) in sessions of
100 spread over the last 90 days, written straight into audit.sessions and audit.statements
with every audit trigger on (each row stamped and hashed, queued and sealed as the proxy's
would be), and times the report as a role that is only a member of policyc_auditor.

    .venv/bin/python bench/report_bench.py [--statements N] [--keep]

Not part of `make bench` (filling the trail takes minutes); bench/README.md has the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import CLUSTER_SETTINGS, POLICY, log, setup_clinic

from policyc.cli import main as policyc
from policyc.devcluster import throwaway_cluster

PER_SESSION = 100
BATCH_SESSIONS = 1000  # 100 000 statements per transaction

SESSIONS = """
INSERT INTO audit.sessions (session_id, started_at, agent, group_name, role_name, oidc_groups,
                            claims, client_addr, client_port, tls, tls_version, proxy, outcome,
                            reason)
SELECT md5('s' || i)::uuid,
       now() - interval '90 days' + (i * interval '90 days' / %(sessions)s::int),
       'agent-' || (i %% 50), g.name, g.name, ARRAY[g.name || '-agents'],
       jsonb_build_object('sub', 'agent-' || (i %% 50), 'iss', 'https://idp.clinic.example/',
                          'iat', 1, 'exp', 3601, 'clinic_id', 1 + i %% 3),
       ('10.0.' || (i %% 50) || '.' || (1 + i %% 4))::inet, 40000 + i %% 1000, i %% 20 <> 0,
       CASE WHEN i %% 20 <> 0 THEN 'TLSv1.3' END, 'bench-proxy',
       CASE WHEN i %% 97 = 0 THEN 'refused' ELSE 'open' END,
       CASE WHEN i %% 97 = 0 THEN 'expired' END
  FROM generate_series(%(first)s::int, %(last)s::int) AS i,
       LATERAL (SELECT (ARRAY['billing', 'research', 'clinician'])[1 + i %% 3] AS name) g
"""

STATEMENTS = """
INSERT INTO audit.statements (record_id, session_id, at, agent, group_name, statement, kind,
                              tables, phi_columns, decision, reason, rows, duration_ms,
                              sqlstate, seq)
SELECT gen_random_uuid(), s.session_id, s.started_at + k * interval '2 seconds', s.agent,
       s.group_name, 'SELECT ... /* bench */', 'select', ARRAY['public.patients'],
       CASE WHEN d.decision IN ('masked', 'allowed') AND k %% 2 = 0
            THEN ARRAY['public.patients.zip', 'public.patients.birth_date']
            ELSE '{}'::text[] END,
       d.decision, CASE WHEN d.decision = 'blocked' THEN 'bench' END,
       CASE WHEN d.decision IN ('allowed', 'masked') THEN (k * 7) %% 200 END,
       CASE WHEN d.decision IN ('allowed', 'masked') THEN 0.5 END,
       CASE WHEN d.decision = 'blocked' THEN '42501' END, k
  FROM audit.sessions s, generate_series(1, %(per)s::int) AS k,
       LATERAL (SELECT CASE WHEN k %% 20 = 0 THEN 'blocked' WHEN k %% 3 = 0 THEN 'masked'
                            ELSE 'allowed' END AS decision) d
 WHERE s.outcome = 'open' AND s.proxy = 'bench-proxy'
   AND s.session_id IN (SELECT md5('s' || i)::uuid
                          FROM generate_series(%(first)s::int, %(last)s::int) i)
"""

CLOSE = """
UPDATE audit.sessions SET ended_at = started_at + interval '5 minutes', outcome = 'closed',
       end_reason = 'client closed the connection', end_seq = %(per)s + 1
 WHERE outcome = 'open' AND proxy = 'bench-proxy'
"""


def fill(dsn: str, statements: int) -> float:
    # one session in 97 is a refused login, with no statements
    sessions = -(-statements * 97 // (96 * PER_SESSION))
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT audit.ensure_partitions(now() - interval '100 days')")
        for first in range(1, sessions + 1, BATCH_SESSIONS):
            last = min(first + BATCH_SESSIONS - 1, sessions)
            with conn.transaction():
                params = {"first": first, "last": last, "sessions": sessions,
                          "per": PER_SESSION}
                conn.execute(SESSIONS, params)
                conn.execute(STATEMENTS, params)
            log(f"  sessions {first}..{last} recorded ({time.perf_counter() - started:.0f} s)")
        conn.execute(CLOSE, {"per": PER_SESSION})
        conn.execute("SELECT audit.checkpoint()")
        conn.execute("VACUUM ANALYZE")
        row = conn.execute("SELECT count(*) FROM audit.statements").fetchone()
        log(f"  {row[0] if row else 0} statements in the trail, sealed")
        conn.execute("CREATE ROLE bench_auditor LOGIN IN ROLE policyc_auditor")
    return time.perf_counter() - started


def run_report(dsn: str, out_dir: Path, *extra: str) -> tuple[float, int, dict[str, float]]:
    html, data = out_dir / "evidence.html", out_dir / "evidence.json"
    started = time.perf_counter()
    code = policyc(["report", "--dsn", dsn, "--policy", str(POLICY), "--out", str(html),
                    "--json", str(data), *extra], io.StringIO())
    seconds = time.perf_counter() - started
    queries = json.loads(data.read_text())["queries"]
    return seconds, code, {name: q["seconds"] for name, q in queries.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    args = parser.parse_args()
    with throwaway_cluster(CLUSTER_SETTINGS, keep=args.keep) as cluster:
        log(f"cluster at {cluster.base}")
        setup_clinic(cluster, patients=1000)
        filled = fill(cluster.dsn("clinic"), args.statements)
        log(f"filled in {filled:.0f} s")
        auditor = cluster.dsn("clinic", user="bench_auditor")
        out = Path(tempfile.mkdtemp(prefix="policyc-report-bench-"))
        results = {}
        for label, extra in (("report", ()), ("report --no-verify", ("--no-verify",))):
            seconds, code, queries = run_report(auditor, out, *extra)
            results[label] = seconds
            log(f"{label}: {seconds:.1f} s (exit {code})")
            slowest = sorted(queries.items(), key=lambda kv: -kv[1])[:6]
            log("  slowest queries: " + ", ".join(f"{n} {s:.2f} s" for n, s in slowest))
        with psycopg.connect(cluster.dsn("clinic"), autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM audit.verify()")
            log(f"audit.verify() alone, whole trail: {time.perf_counter() - started:.1f} s")
        log(f"report written to {out}/evidence.html")
    print(json.dumps({"statements": args.statements, "fill_s": round(filled, 1),
                      **{k: round(v, 2) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
