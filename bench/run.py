"""`make bench`: what the policyc data path costs, measured in one run on this machine.

One throwaway cluster with production-like durability holds the clinic example with its
policy applied; PgBouncer (the distribution's package) and ``policyc proxy`` (full audit: a
durable spool record before every statement) run in front of it.  Then, in order:

1. pgbench through direct / PgBouncer / proxy (bench/datapath.py);
2. the proxy under cProfile for a short pgbench run (bench/hotpath.py);
3. masking views and audit triggers in a scratch copy of the database (bench/dbcost.py);
4. billing's write path with row filters on policyc.claim() vs literals, on a cluster of its
   own (bench/rowfilters.py);
5. compile/apply of a generated large policy on fresh clusters (bench/applycost.py);

and writes RESULTS.md and results.json (bench/report.py) into ``--out`` (default: bench/).
Every process started here is stopped on the way out, failures included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT / "engine") not in sys.path:
    sys.path.insert(1, str(ROOT / "engine"))

import applycost  # noqa: E402
import common  # noqa: E402
import datapath  # noqa: E402
import dbcost  # noqa: E402
import floor  # noqa: E402
import hotpath  # noqa: E402
import report  # noqa: E402
import rowfilters  # noqa: E402
import scaling  # noqa: E402
import services  # noqa: E402
from common import (  # noqa: E402
    CLUSTER_SETTINGS,
    POLICY,
    load_seed,
    log,
    setup_clinic,
    tokens,
)

from policyc.devcluster import Cluster, throwaway_cluster  # noqa: E402
from policyc.policy import load_policy  # noqa: E402
from policyc.policy.model import TableName  # noqa: E402


@dataclass(frozen=True)
class Settings:
    label: str
    duration: float  # pgbench -T per run
    reps: int
    clients: tuple[int, ...]
    modes: tuple[str, ...]
    patients: int
    rows: int  # audit trigger and masking
    mask_runs: int
    tables: int
    groups: int
    apply_reps: int
    noops: int
    profile_seconds: float
    filter_rounds: int  # row filters, claim vs literal: rounds of both variants
    filter_transactions: int  # timed write paths per variant and round


FULL = Settings(label="full", duration=5, reps=3, clients=(1, 4, 16),
                modes=("simple", "prepared"), patients=3000, rows=100_000, mask_runs=7,
                tables=300, groups=30, apply_reps=3, noops=2, profile_seconds=5,
                filter_rounds=3, filter_transactions=300)
QUICK = replace(FULL, label="quick", duration=2, reps=2, mask_runs=3, apply_reps=1,
                profile_seconds=2, filter_rounds=2, filter_transactions=150)
SMOKE = replace(QUICK, label="smoke", duration=1, reps=1, clients=(1,), patients=300,
                rows=1000, mask_runs=1, tables=10, groups=2, noops=1, profile_seconds=1,
                filter_rounds=1, filter_transactions=20)


@contextlib.contextmanager
def data_path(cluster: Cluster, workdir: Path) -> Iterator[tuple[int, int, int]]:
    """PgBouncer and the proxy in front of ``clinic``; yields their ports and the proxy's pid."""
    with services.pgbouncer(workdir / "pgbouncer", cluster.port, "clinic",
                            ["research", "clinician", "billing"],
                            "SELECT bench_identity.register_self()") as bouncer, \
            services.proxy(POLICY, cluster.dsn("clinic", user="policyc_proxy"),
                           workdir / "proxy") as (proxy, pid):
        yield bouncer, proxy, pid


def section(into: dict[str, Any], key: str, title: str, measure: Callable[[], Any]) -> None:
    """Run one measurement into ``into[key]``; a failure is recorded there and the run goes
    on (so one broken section never costs the others' numbers), and makes the exit status 1.
    """
    log(title)
    try:
        into[key] = measure()
    except Exception as exc:
        traceback.print_exc()
        into[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        log(f"  FAILED: {title}")


def run(settings: Settings, outdir: Path) -> dict[str, Any]:
    began = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": asdict(settings), "cluster_settings": CLUSTER_SETTINGS,
        "load_average_start": list(os.getloadavg()),
    }
    # patients of clinic 1 (the billing agent's claim): ids 1, 4, 7, ...; of clinic 2 (the
    # clinician agent's): ids 2, 5, 8, ...
    defines = {"patients": settings.patients, "clinic1_patients": (settings.patients + 2) // 3,
               "clinic2_patients": (settings.patients + 1) // 3}
    with tempfile.TemporaryDirectory(prefix="policyc-bench-") as tmp, \
            throwaway_cluster(CLUSTER_SETTINGS) as cluster:
        work = Path(tmp)
        work.chmod(0o755)  # PgBouncer (as the cluster's OS user) reads its ini below here
        log(f"cluster on 127.0.0.1:{cluster.port}; loading clinic ({settings.patients} "
            "patients) and applying its policy")
        version, clinic_apply = setup_clinic(cluster, settings.patients)
        results["machine"] = report.machine(version, str(services.PGBOUNCER))
        results["clinic_first_apply_s"] = clinic_apply
        agent_tokens = tokens()

        def measure_datapath() -> dict[str, Any]:
            with data_path(cluster, work) as (bouncer_port, proxy_port, proxy_pid):
                endpoints = datapath.Endpoints(
                    direct_port=cluster.port, pgbouncer_port=bouncer_port,
                    proxy_port=proxy_port, dbname="clinic", agent=common.AGENT, tokens=agent_tokens,
                    admin_dsn=cluster.dsn("clinic"), defines=defines,
                    proxy_pid=proxy_pid)
                matrix = datapath.run_matrix(endpoints, datapath.WORKLOADS, settings.modes,
                                             settings.clients, settings.duration,
                                             settings.reps, log)
            workloads = [{"name": w.name, "group": w.group, "script": w.script.name,
                          "description": w.description} for w in datapath.WORKLOADS]
            return {"workloads": workloads, **matrix}

        section(results, "floor", "the per-statement floor: one spool flush",
                lambda: floor.spool_flush(work / "floor"))
        section(results, "datapath", "data path: direct vs PgBouncer vs proxy",
                measure_datapath)
        select_pk = datapath.WORKLOADS[0]
        section(results, "scaling", "data path: the proxy with 1 and 2 workers",
                lambda: scaling.scale_with_workers(
                    POLICY, cluster.dsn("clinic", user="policyc_proxy"), cluster.dsn("clinic"),
                    work / "scaling", workload=select_pk, token=agent_tokens[select_pk.group],
                    agent=common.AGENT, dbname="clinic", defines=defines, mode="prepared",
                    clients=max(settings.clients), duration=settings.duration, log=log))
        results["profile"] = {}
        section(results["profile"], "proxy", "profile: the proxy under cProfile",
                lambda: hotpath.profile_proxy(
                    POLICY, cluster.dsn("clinic", user="policyc_proxy"), work / "profile",
                    runs=[hotpath.ProfiledRun(w.name, w.script, agent_tokens[w.group])
                          for w in datapath.WORKLOADS],
                    agent=common.AGENT, dbname="clinic", defines=defines, modes=settings.modes,
                    duration=settings.profile_seconds, log=log))

        scratch = cluster.dsn("scratch")
        dbcost.bulk_up_patients(scratch, settings.rows, load_seed())
        section(results, "masking", f"masking views on {settings.rows} rows",
                lambda: dbcost.masking_cost(
                    scratch, lambda group: cluster.dsn("scratch", user=group),
                    settings.mask_runs, log))
        phi = sorted(load_policy(POLICY).phi[TableName("public", "patients")])
        section(results, "audit_trigger", f"audit triggers on {settings.rows} rows",
                lambda: dbcost.audit_trigger_cost(scratch, settings.rows, settings.reps, phi,
                                                  log))

    section(results, "rowfilters",
            "row filters: billing's write path with policyc.claim() vs a literal",
            lambda: rowfilters.on_own_cluster(settings.patients, settings.filter_rounds,
                                              settings.filter_transactions, log))
    with tempfile.TemporaryDirectory(prefix="policyc-bench-apply-") as tmp:
        section(results, "apply",
                f"compile/apply: {settings.tables} tables x {settings.groups} groups",
                lambda: applycost.measure(settings.tables, settings.groups,
                                          settings.apply_reps, settings.noops,
                                          CLUSTER_SETTINGS, log, profile_dir=Path(tmp)))
    if "error" not in results["apply"]:
        results["profile"]["apply"] = results["apply"].pop("profile")
    results["elapsed_s"] = time.perf_counter() - began
    results["load_average_end"] = list(os.getloadavg())
    data, text = report.write(outdir, results)
    log(f"wrote {text} and {data} in {results['elapsed_s'] / 60:.1f} min")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="-T 2, 2 repetitions: minutes, for a first look")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one client, one repetition (the smoke test)")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="directory for RESULTS.md and results.json (default: bench/)")
    parser.add_argument("--duration", type=float, help="override pgbench -T (seconds)")
    parser.add_argument("--reps", type=int, help="override the number of repetitions")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="only rewrite RESULTS.md (into --out) from a saved results.json")
    args = parser.parse_args(argv)
    if args.render:
        report.write(args.out, json.loads(args.render.read_text()))
        return 0
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.duration:
        settings = replace(settings, duration=args.duration)
    if args.reps:
        settings = replace(settings, reps=args.reps)
    results = run(settings, args.out)
    return 1 if report.failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
