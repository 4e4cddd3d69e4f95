"""What the database fence costs inside PostgreSQL: audit triggers and masking views.

Both run in a scratch copy of the applied clinic database whose ``public.patients`` is
bulked up to the benchmark size with the same deterministic generator as the example.

* Audit triggers: bulk INSERT then UPDATE of N rows into three identical copies of
  ``public.patients`` — no trigger, policyc's statement-level PL/Python trigger (created from
  the same template ``policyc apply`` uses), and the classic per-row PL/pgSQL trigger of
  bench/audit_baseline.sql.  A CHECKPOINT before each timed statement gives every variant the
  same starting point; each statement commits on its own (fsync on), and the commit is timed.
* Masking: one SELECT of every row a group may see through its masking view (as the group
  role, identity registered) against the same columns of the base table (as the owner,
  with the group's row filter written out), timed at the libpq level so no Python row
  objects are built; the median of interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from common import CLUSTER_SETTINGS, POLICY, load_seed, rotate, setup_clinic
from psycopg import pq

from policyc.compiler.render import statements
from policyc.devcluster import throwaway_cluster
from policyc.policy import load_policy
from policyc.policy.model import TableName

HERE = Path(__file__).resolve().parent
VARIANTS = ("none", "policyc", "plpgsql")
Log = Callable[[str], None]


def bulk_up_patients(dsn: str, total: int, seed_module: Any, seed: int = 7) -> int:
    """Fill ``public.patients`` up to ``total`` rows (ids 1..total); returns the row count.

    Loading is not what we measure: ``session_replication_role = replica`` skips the audit
    trigger (and FK checks) for this COPY only.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM public.patients").fetchone()
        have = int(row[0]) if row else 0
        if have < total:
            columns = ", ".join(seed_module.COLUMNS["patients"])
            rows = [r for r in seed_module.generate(total, seed).patients if r[0] > have]
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")
                with cur.copy(f"COPY public.patients ({columns}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
        conn.execute("VACUUM ANALYZE public.patients")
        row = conn.execute("SELECT count(*) FROM public.patients").fetchone()
        return int(row[0]) if row else 0


def _timed(conn: psycopg.Connection[Any], sql: str) -> float:
    start = time.perf_counter()
    conn.execute(sql.encode())
    return time.perf_counter() - start


def _install(conn: psycopg.Connection[Any], variant: str, table: str,
             phi: Sequence[str]) -> None:
    if variant == "policyc":
        for stmt in statements("audit_triggers.sql.j2", table=TableName("bench_audit", table),
                               pk=json.dumps(["id"]), phi=json.dumps(sorted(phi))):
            conn.execute(stmt.encode())
    elif variant == "plpgsql":
        conn.execute(f"CREATE TRIGGER classic_audit AFTER INSERT OR UPDATE OR DELETE "
                     f"ON bench_audit.{table} FOR EACH ROW EXECUTE FUNCTION bench_audit.log_row()")


#: One-row UPDATEs timed per variant and repetition (each its own transaction).
ONE_ROW_UPDATES = 400


def _one_row_updates(conn: psycopg.Connection[Any], table: str, rows: int) -> float:
    """Seconds per one-row UPDATE of a PHI column, each statement its own transaction, sent
    prepared from one session as an agent's write arrives.  ``synchronous_commit = off``: the
    commit's flush is the same for every variant and would hide what the trigger costs."""
    conn.execute("SET synchronous_commit = off")
    try:
        sql = f"UPDATE bench_audit.{table} SET phone = %s WHERE id = %s".encode()
        start = time.perf_counter()
        for i in range(ONE_ROW_UPDATES):
            conn.execute(sql, (f"555-{i:04d}", i * 7919 % rows + 1), prepare=True)
        return (time.perf_counter() - start) / ONE_ROW_UPDATES
    finally:
        conn.execute("RESET synchronous_commit")


def audit_trigger_cost(dsn: str, rows: int, reps: int, phi: Sequence[str],
                       log: Log) -> dict[str, Any]:
    """Seconds per bulk INSERT / UPDATE of ``rows`` rows, and per one-row UPDATE, for each
    variant (medians)."""
    times: dict[str, dict[str, list[float]]] = {
        v: {"insert": [], "update": [], "update_one": []} for v in VARIANTS}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((HERE / "audit_baseline.sql").read_text().encode())
        for rep in range(reps):
            for variant in rotate(VARIANTS, rep):
                table = f"t_{variant}"
                conn.execute(f"DROP TABLE IF EXISTS bench_audit.{table}")
                conn.execute(f"CREATE TABLE bench_audit.{table} "
                             "(LIKE public.patients INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                             "INCLUDING INDEXES)")
                _install(conn, variant, table, phi)
                conn.execute("CHECKPOINT")
                ins = _timed(conn, f"INSERT INTO bench_audit.{table} "
                                   f"SELECT * FROM public.patients WHERE id <= {int(rows)}")
                conn.execute("CHECKPOINT")
                upd = _timed(conn, f"UPDATE bench_audit.{table} SET phone = '555-0100', "
                                   "created_at = created_at + interval '1 day'")
                one = _one_row_updates(conn, table, rows)
                times[variant]["insert"].append(ins)
                times[variant]["update"].append(upd)
                times[variant]["update_one"].append(one)
                log(f"  audit trigger {variant:<8} run {rep + 1}: insert {ins:.3f} s, "
                    f"update {upd:.3f} s, one-row update {one * 1000:.3f} ms")
        counted = conn.execute("SELECT count(*) FROM bench_audit.t_none").fetchone()
        if not counted or int(counted[0]) != rows:
            raise RuntimeError(f"expected {rows} rows in the audit benchmark table")
    med = {v: {op: statistics.median(ts) for op, ts in ops.items()} for v, ops in times.items()}
    ratios = {}
    for op in ("insert", "update", "update_one"):
        ratios[f"{op}_policyc_over_none"] = med["policyc"][op] / med["none"][op]
        ratios[f"{op}_plpgsql_over_policyc"] = med["plpgsql"][op] / med["policyc"][op]
    return {"rows": rows, "seconds": med, "runs": times, "ratios": ratios}


def _query_seconds(conn: psycopg.Connection[Any], sql: str) -> tuple[float, int]:
    """One round trip at the libpq level: execute and receive every row, build nothing."""
    start = time.perf_counter()
    result = conn.pgconn.exec_(sql.encode())
    elapsed = time.perf_counter() - start
    try:
        if result.status != pq.ExecStatus.TUPLES_OK:
            message = (result.error_message or b"").decode(errors="replace")
            raise RuntimeError(f"masking query failed: {message.strip()}")
        return elapsed, result.ntuples
    finally:
        result.clear()


MASKING_CASES = (
    # group, query through the group's view, the same columns from the base table
    ("research",
     "SELECT id, birth_date, zip, clinic_id FROM patients",
     "SELECT id, birth_date, zip, clinic_id FROM public.patients"),
    ("billing",
     "SELECT id, clinic_id, full_name, ssn, birth_date FROM patients",
     "SELECT id, clinic_id, full_name, ssn, birth_date FROM public.patients WHERE clinic_id = 1"),
)


_FORCE_PARALLEL = ("SET parallel_setup_cost = 0", "SET parallel_tuple_cost = 0",
                   "SET min_parallel_table_scan_size = 0",
                   "SET max_parallel_workers_per_gather = 2")


def parallel_rows(agent: psycopg.Connection[Any], view_sql: str) -> int:
    """Rows the view returns when the planner is pushed to a parallel plan.

    A row filter reads the session's identity by backend pid; if a parallel worker (another
    pid) evaluates it, rows vanish.  Recorded as a correctness finding, not timed.
    """
    for setting in _FORCE_PARALLEL:
        agent.execute(setting)
    try:
        _, count = _query_seconds(agent, view_sql)
        return count
    finally:
        agent.execute("RESET ALL")


def masking_cost(owner_dsn: str, group_dsn: Callable[[str], str], runs: int,
                 log: Log) -> dict[str, Any]:
    """Seconds to SELECT every visible row through each group's view vs the base table.

    Timed with parallel query off in both sessions, so both do the same (serial) work; see
    :func:`parallel_rows` for what a parallel plan does to row filters.
    """
    out: dict[str, Any] = {}
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        owner.execute("SET max_parallel_workers_per_gather = 0")
        for group, view_sql, base_sql in MASKING_CASES:
            with psycopg.connect(group_dsn(group), autocommit=True) as agent:
                agent.execute("SELECT bench_identity.register_self()")
                in_parallel = parallel_rows(agent, view_sql)
                agent.execute("SET max_parallel_workers_per_gather = 0")
                view_t: list[float] = []
                base_t: list[float] = []
                _query_seconds(agent, view_sql)  # warm caches and plans once each
                _query_seconds(owner, base_sql)
                view_rows = base_rows = 0
                for i in range(runs):
                    pair = [(agent, view_sql, view_t), (owner, base_sql, base_t)]
                    for conn, sql, sink in pair if i % 2 == 0 else pair[::-1]:
                        seconds, count = _query_seconds(conn, sql)
                        sink.append(seconds)
                        if sink is view_t:
                            view_rows = count
                        else:
                            base_rows = count
                if view_rows != base_rows:
                    raise RuntimeError(f"{group}: the view returned {view_rows} rows, the base "
                                       f"table {base_rows}")
            view_s, base_s = statistics.median(view_t), statistics.median(base_t)
            out[group] = {"rows": view_rows, "view_s": view_s, "base_s": base_s,
                          "ratio": view_s / base_s, "view_runs": view_t, "base_runs": base_t,
                          "parallel_plan_rows": in_parallel}
            if in_parallel != view_rows:
                log(f"  masking {group}: a parallel plan returned {in_parallel} of "
                    f"{view_rows} rows")
            log(f"  masking {group}: {view_rows} rows, view {view_s * 1000:.1f} ms, base "
                f"{base_s * 1000:.1f} ms, ratio {view_s / base_s:.2f}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/dbcost.py masking|trigger``: the masking or audit trigger benchmark
    alone, on its own throwaway cluster (same settings, data and policy as ``make bench``);
    prints the result as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("part", choices=["masking", "trigger"])
    parser.add_argument("--rows", type=int, default=100_000, help="patients rows (100000)")
    parser.add_argument("--runs", type=int, default=None,
                        help="masking: interleaved runs (7); trigger: repetitions (3)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with throwaway_cluster(CLUSTER_SETTINGS) as cluster:
        setup_clinic(cluster, patients=min(3000, args.rows))
        scratch = cluster.dsn("scratch")
        bulk_up_patients(scratch, args.rows, load_seed())
        if args.part == "masking":
            result = masking_cost(scratch, lambda group: cluster.dsn("scratch", user=group),
                                  args.runs or 7, log)
            print(json.dumps({g: {k: v for k, v in r.items() if not k.endswith("_runs")}
                              for g, r in result.items()}, indent=1))
        else:
            phi = sorted(load_policy(POLICY).phi[TableName("public", "patients")])
            trigger = audit_trigger_cost(scratch, args.rows, args.runs or 3, phi, log)
            print(json.dumps({k: v for k, v in trigger.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
