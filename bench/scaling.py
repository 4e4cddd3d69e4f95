"""How the proxy scales with ``--workers``: one workload through the proxy with 1, 2, ...
worker processes, tps and latency per worker count, every statement's record counted.

On this project's 2-core bench machine PostgreSQL, pgbench and the proxy share the cores, so
two workers can at best take the proxy's share of one core off the other; the ratio is
reported as measured, not as what more cores would give.  ``bench/run.py`` can call
:func:`scale_with_workers`; ``python bench/scaling.py`` runs it alone on its own cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from common import (
    AGENT,
    CLUSTER_SETTINGS,
    POLICY,
    Log,
    log,
    next_idbase,
    setup_clinic,
    tokens,
)
from datapath import WORKLOADS, Workload, audited_count, wait_drained
from loadgen import run_pgbench
from services import proxy

from policyc.devcluster import throwaway_cluster


def scale_with_workers(policy: Path, upstream_dsn: str, admin_dsn: str, workdir: Path, *,
                       workload: Workload, token: str, agent: str, dbname: str,
                       defines: dict[str, int], mode: str, clients: int, duration: float,
                       workers: Sequence[int] = (1, 2), log: Log = log) -> dict[str, Any]:
    """pgbench through a proxy with each worker count in ``workers``; tps, p50/p99 latency
    and audited/executed per count, and each count's tps over the first's."""
    runs: list[dict[str, Any]] = []
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for count in workers:
            with proxy(policy, upstream_dsn, workdir / f"workers-{count}",
                       workers=count) as (port, _pid):
                before = audited_count(admin)
                sample = run_pgbench(
                    port=port, user=agent, dbname=dbname, script=workload.script,
                    clients=clients, mode=mode, duration=duration, password=token,
                    defines={**defines, "registered": 1, "seq": 0, "idbase": next_idbase()})
                executed = sample.transactions * workload.statements_per_tx
                audited = wait_drained(admin, before + executed) - before
            runs.append({"workers": count, "tps": sample.tps, "p50_ms": sample.p50_ms,
                         "p99_ms": sample.p99_ms, "executed": executed, "audited": audited})
            log(f"  {workload.name} -M {mode} -c {clients} workers {count}: "
                f"{sample.tps:9.1f} tps  p50 {sample.p50_ms:.3f} ms  p99 {sample.p99_ms:.3f} ms"
                f"  audited {audited}/{executed}")
    base = runs[0]["tps"] or 1.0
    return {"workload": workload.name, "mode": mode, "clients": clients, "duration": duration,
            "runs": runs, "tps_over_first": {str(r["workers"]): r["tps"] / base for r in runs}}


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/scaling.py``: the worker scaling measurement alone, on its own throwaway
    cluster (same settings, data and policy as ``make bench``); prints the result as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("-T", "--duration", type=float, default=5.0, help="pgbench -T (5)")
    parser.add_argument("-c", "--clients", type=int, default=16, help="pgbench -c (16)")
    parser.add_argument("-M", "--mode", default="prepared", choices=["simple", "prepared"])
    parser.add_argument("--workload", default="select_pk", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--patients", type=int, default=3000)
    args = parser.parse_args(argv)
    workload = next(w for w in WORKLOADS if w.name == args.workload)
    defines = {"patients": args.patients, "clinic2_patients": (args.patients + 1) // 3}
    with tempfile.TemporaryDirectory(prefix="policyc-bench-scaling-") as tmp, \
            throwaway_cluster(CLUSTER_SETTINGS) as cluster:
        setup_clinic(cluster, args.patients)
        result = scale_with_workers(
            POLICY, cluster.dsn("clinic", user="policyc_proxy"), cluster.dsn("clinic"),
            Path(tmp), workload=workload, token=tokens()[workload.group], agent=AGENT,
            dbname="clinic", defines=defines, mode=args.mode, clients=args.clients,
            duration=args.duration, workers=args.workers)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
