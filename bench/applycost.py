"""Compile/apply cost: a generated schema of many tables and a policy of many groups.

Every repetition gets a fresh throwaway cluster (group roles are cluster-wide, so a "first"
apply must really be the first), loads the generated schema, then times ``policyc apply`` as
a user runs it (a new process: interpreter start and imports included) and a no-op re-apply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hotpath
import psycopg
from common import CLUSTER_SETTINGS
from services import ROOT, python_env

from policyc.devcluster import throwaway_cluster

COLUMNS = (
    "id bigint PRIMARY KEY",
    "org_id int NOT NULL",
    "full_name text",
    "ssn text",
    "birth_date date",
    "zip text",
    "email text",
    "status text",
    "amount numeric(10,2)",
    "note text",
    "created_at timestamptz NOT NULL DEFAULT now()",
)
PHI_MASKS = {"ssn": "hash", "full_name": "partial", "birth_date": "year", "zip": "zip3",
             "email": "redact", "note": "redact"}


@dataclass(frozen=True)
class Generated:
    schema_sql: str
    policy_yaml: str
    tables: int
    groups: int
    views: int


def table_names(tables: int) -> list[str]:
    """``deptNN.tNNN``: 30 tables per schema."""
    return [f"dept{i // 30 + 1:02d}.t{i + 1:03d}" for i in range(tables)]


def generate(tables: int, groups: int, database: str) -> Generated:
    """A deterministic schema and policy: two thirds of the tables hold PHI; each group reads
    about a fifth of the tables (alternating explicit column lists and "*"), every third group
    writes some of them, every second group has a row filter, some groups unmask names."""
    names = table_names(tables)
    schemas = sorted({n.split(".")[0] for n in names})
    sql = [f"CREATE SCHEMA {s};" for s in schemas]
    sql += [f"CREATE TABLE {n} ({', '.join(COLUMNS)});" for n in names]
    lines = ["version: 1", f"database: {database}", "phi:"]
    phi_tables = [n for i, n in enumerate(names) if i % 3 != 2]
    for name in phi_tables:
        lines.append(f"  {name}:")
        lines += [f"    {col}: {mask}" for col, mask in PHI_MASKS.items()]
    lines.append("groups:")
    views = 0
    for g in range(1, groups + 1):
        mine = [n for i, n in enumerate(names) if (i * 7 + g) % 5 == 0] or names[:1]
        views += len(mine)
        lines += [f"  g{g:02d}:", f"    oidc_groups: [group-{g:02d}]", "    read:"]
        for i, name in enumerate(mine):
            cols = '"*"' if i % 2 else "[id, org_id, full_name, birth_date, status, amount]"
            lines.append(f"      {name}: {cols}")
        if g % 3 == 0:
            lines.append("    write:")
            for name in mine[::4]:
                lines.append(f"      {name}: {{insert: [org_id, status, amount], "
                             "update: [status], delete: false}")
        if g % 2 == 0:
            lines.append("    rows:")
            lines += [f"      {name}: \"org_id = policyc.claim('org_id')::int\"" for name in mine]
        unmask = [f"{n}.full_name" for n in mine[:3] if n in phi_tables] if g % 4 == 0 else []
        lines.append(f"    unmask: [{', '.join(unmask)}]")
        lines += ["    approval:", "      rows_over: 1000", "      statements: [ddl, truncate]"]
    lines += ["approvals:", "  approvers: [security_analysts]", "  hold: 2m", "  valid_for: 1h",
              "audit:", "  retention: 6y", "  results: digest"]
    return Generated("\n".join(sql) + "\n", "\n".join(lines) + "\n", tables, groups, views)


def _apply(policy: Path, dsn: str) -> tuple[float, int, int]:
    """Run ``policyc apply --json`` as a new process; (seconds, pending, executed)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "policyc.cli", "apply", str(policy), "--dsn", dsn, "--json"],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=1800, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"policyc apply failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return elapsed, int(result["pending"]), int(result["executed"])


def measure(tables: int, groups: int, reps: int, noops: int, settings: Mapping[str, str],
            log: Callable[[str], None], profile_dir: Path | None = None) -> dict[str, Any]:
    """First apply and no-op re-apply times (seconds) over ``reps`` fresh clusters; with
    ``profile_dir``, also a cProfile summary of one more no-op re-apply (key ``profile``)."""
    database = "applybench"
    gen = generate(tables, groups, database)
    first: list[float] = []
    noop: list[float] = []
    executed = 0
    profile: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="policyc-applybench-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(gen.policy_yaml)
        for rep in range(reps):
            with throwaway_cluster(settings) as cluster:
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {database}")
                dsn = cluster.dsn(database)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(gen.schema_sql.encode())
                seconds, _, executed = _apply(policy, dsn)
                first.append(seconds)
                log(f"  apply {tables} tables x {groups} groups, run {rep + 1}: first "
                    f"{seconds:.2f} s ({executed} statements)")
                for _ in range(noops):
                    seconds, pending, _ = _apply(policy, dsn)
                    if pending:
                        raise RuntimeError(f"re-apply was not a no-op: {pending} changes pending")
                    noop.append(seconds)
                log(f"  no-op re-apply: {', '.join(f'{s:.2f}' for s in noop[-noops:])} s")
                if profile_dir is not None and rep == reps - 1:
                    profile = hotpath.profile_apply(policy, dsn, profile_dir)
    return {
        "profile": profile,
        "tables": tables, "groups": groups, "views": gen.views,
        "phi_tables": sum(1 for i in range(tables) if i % 3 != 2),
        "statements_first_apply": executed,
        "first_apply_s": {"median": statistics.median(first), "runs": first},
        "noop_reapply_s": {"median": statistics.median(noop), "runs": noop},
    }


def main(argv: list[str] | None = None) -> int:
    """``python bench/applycost.py``: the compile/apply benchmark alone (first apply and no-op
    re-applies of the generated policy on fresh clusters); prints the result as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--reps", type=int, default=1, help="fresh clusters (1)")
    parser.add_argument("--noops", type=int, default=3, help="no-op re-applies per cluster (3)")
    args = parser.parse_args(argv)
    result = measure(args.tables, args.groups, args.reps, args.noops, CLUSTER_SETTINGS,
                     lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
