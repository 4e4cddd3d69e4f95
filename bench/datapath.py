"""Direct PostgreSQL vs PgBouncer vs the policyc proxy, with pgbench, in one run.

All three paths run the same pgbench script as the same group role, and the same database
work happens on each: baselines register the bench identity once per server connection
(bench/identity.sql) so row filters and audit triggers see the same claims the proxy
registers for its agent.  Paths are interleaved per configuration and their order rotates
between repetitions, so slow drift (table growth, checkpoints, autovacuum) hits each alike.
After every proxy run we wait until its audit log has drained into ``audit.statements``
(counting the rows), so the drain never steals CPU from the next measurement and the
"every statement audited" claim is checked, not assumed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import next_idbase, rotate
from loadgen import Sample, median_sample, run_pgbench

HERE = Path(__file__).resolve().parent
PATHS = ("direct", "pgbouncer", "proxy")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    """A pgbench script and who runs it."""

    name: str
    script: Path
    group: str
    statements_per_tx: int  # statements the proxy sees per transaction
    description: str


WORKLOADS = (
    Workload("select_pk", HERE / "select_pk.sql", "research", 1,
             "SELECT id, birth_date, zip FROM patients WHERE id = :id (research: masked "
             "birth year and ZIP3, no row filter)"),
    Workload("mixed_rw", HERE / "mixed_rw.sql", "clinician", 5,
             "BEGIN; SELECT a patient of clinic 2; INSERT a visit; UPDATE its notes; END "
             "(clinician, clinic_id=2: row filters on patients and visits, masked SSN/ZIP, "
             "PL/Python audit trigger hashing the PHI of visits)"),
    Workload("billing_rw", HERE / "billing_rw.sql", "billing", 5,
             "BEGIN; SELECT a patient of clinic 1 with a visit; INSERT a claim for it; UPDATE "
             "the claim's status; END (billing, clinic_id=1: row filters on patients and visits, "
             "claims filtered through subqueries on both, checked on INSERT and UPDATE; masked "
             "name, hashed SSN; audit trigger on claims)"),
)


@dataclass
class Endpoints:
    """Where each path listens, and what the proxy's agents authenticate with."""

    direct_port: int
    pgbouncer_port: int
    proxy_port: int
    dbname: str
    agent: str
    tokens: dict[str, str]  # group -> token
    admin_dsn: str
    defines: dict[str, int] = field(default_factory=dict)
    proxy_pid: int | None = None  # the proxy's process: its event loop's CPU is measured


def loop_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process's main thread, the proxy's event loop: the
    spool thread and the drain's threads are not in it."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audited_count(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT count(*) FROM audit.statements").fetchone()
    return int(row[0]) if row else 0


def wait_drained(admin: psycopg.Connection[Any], at_least: int, timeout: float = 120.0) -> int:
    """Poll until audit.statements holds ``at_least`` rows and stops growing; the count."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while time.monotonic() < deadline:
        count = audited_count(admin)
        stable = stable + 1 if count == last else 0
        if count >= at_least and stable >= 2:
            return count
        last = count
        time.sleep(0.2)
    return audited_count(admin)


def run_one(ep: Endpoints, wl: Workload, path: str, mode: str, clients: int,
            duration: float) -> Sample:
    port = {"direct": ep.direct_port, "pgbouncer": ep.pgbouncer_port,
            "proxy": ep.proxy_port}[path]
    user = ep.agent if path == "proxy" else wl.group
    # direct sessions register themselves in their first transaction; PgBouncer's server
    # connections and the proxy's upstream sessions are registered before any client runs.
    # New visit ids: a base unique to this run + client id * 10^7 + a per-client counter.
    defines = {**ep.defines, "registered": 0 if path == "direct" else 1, "seq": 0,
               "idbase": next_idbase()}
    return run_pgbench(port=port, user=user, dbname=ep.dbname, script=wl.script,
                       clients=clients, mode=mode, duration=duration, defines=defines,
                       password=ep.tokens[wl.group] if path == "proxy" else None)


def run_matrix(ep: Endpoints, workloads: Sequence[Workload], modes: Sequence[str],
               clients: Sequence[int], duration: float, reps: int,
               log: Log) -> dict[str, Any]:
    """Every (workload, mode, clients, path) ``reps`` times; medians, ratios and audit counts."""
    samples: dict[tuple[str, str, int, str], list[Sample]] = {}
    audit: dict[str, int] = {"executed": 0, "audited": 0}
    cpus: dict[tuple[str, str, int], list[float]] = {}
    with psycopg.connect(ep.admin_dsn, autocommit=True) as admin:
        for rep in range(reps):
            for wl in workloads:
                for mode in modes:
                    for n in clients:
                        for path in rotate(PATHS, rep + n):
                            before = audited_count(admin) if path == "proxy" else 0
                            cpu = loop_cpu_seconds(ep.proxy_pid) \
                                if path == "proxy" and ep.proxy_pid else None
                            sample = run_one(ep, wl, path, mode, n, duration)
                            samples.setdefault((wl.name, mode, n, path), []).append(sample)
                            note = ""
                            if path == "proxy":
                                executed = sample.transactions * wl.statements_per_tx
                                audited = wait_drained(admin, before + executed) - before
                                audit["executed"] += executed
                                audit["audited"] += audited
                                note = f", audited {audited}/{executed}"
                                if cpu is not None and executed:
                                    used = loop_cpu_seconds(ep.proxy_pid or 0) - cpu
                                    cpus.setdefault((wl.name, mode, n), []).append(
                                        used / executed * 1e6)
                                    note += f", loop {used / executed * 1e6:.0f} us/statement"
                            log(f"  run {rep + 1} {wl.name} -M {mode:<8} -c {n:>2} {path:<9} "
                                f"{sample.tps:9.1f} tps  p50 {sample.p50_ms:.3f} ms  "
                                f"p99 {sample.p99_ms:.3f} ms{note}")
    configs = summarize(samples, workloads, modes, clients)
    for cfg in configs:
        per_run = sorted(cpus.get((cfg["workload"], cfg["mode"], cfg["clients"]), []))
        if per_run:  # the median run: the event loop's CPU per statement, drain included
            cfg["proxy_loop_cpu_us_per_statement"] = per_run[len(per_run) // 2]
    return {"configs": configs, "audit": audit}


def summarize(samples: dict[tuple[str, str, int, str], list[Sample]],
              workloads: Sequence[Workload], modes: Sequence[str],
              clients: Sequence[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for wl in workloads:
        for mode in modes:
            for n in clients:
                paths = {p: median_sample(samples[(wl.name, mode, n, p)]) for p in PATHS}
                runs = {p: [s.as_json() for s in samples[(wl.name, mode, n, p)]] for p in PATHS}
                proxy, direct, bouncer = paths["proxy"], paths["direct"], paths["pgbouncer"]
                out.append({
                    "workload": wl.name, "mode": mode, "clients": n,
                    "paths": paths,
                    "ratios": {
                        "tps_proxy_over_direct": proxy["tps"] / direct["tps"],
                        "tps_proxy_over_pgbouncer": proxy["tps"] / bouncer["tps"],
                        "added_p50_ms_vs_direct": proxy["p50_ms"] - direct["p50_ms"],
                        "added_p50_ms_vs_pgbouncer": proxy["p50_ms"] - bouncer["p50_ms"],
                    },
                    "runs": runs,
                })
    return out
