"""The machine description, the targets (data path: issue #13; the rest: issue #6), and
RESULTS.md / results.json.

The JSON is the record (every run of every measurement); the Markdown is for people: medians,
ratios, each target met or missed and by how much, and the profile summary.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import policyc


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def machine(server_version: str, pgbouncer: str) -> dict[str, Any]:
    """Cores, memory, CPU model and the versions of everything measured."""
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio (uvloop not installed)"
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "postgresql": server_version,
        "pgbouncer": _first_line([pgbouncer, "--version"]),
        "pgbench": _first_line(["pgbench", "--version"]),
        "python": platform.python_version(),
        "policyc": policyc.__version__,
        "proxy_event_loop": loop,
    }


# ---- targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    bound: float
    at_least: bool  # value >= bound, else value <= bound
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def miss(self) -> str:
        """How far from the target, in words; empty when met."""
        if self.met:
            return ""
        if self.unit == "ms":
            return f"{self.value - self.bound:+.3f} ms over"
        if self.unit == "µs":
            return f"{self.value - self.bound:+.0f} µs over"
        if self.unit == "s":
            return f"{self.value - self.bound:.2f} s ({self.value / self.bound - 1:.0%}) over"
        if self.at_least:
            return f"{1 - self.value / self.bound:.0%} short (needs {self.bound / self.value:.2f}x)"
        return f"{self.value / self.bound - 1:.0%} over"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.bound,
                "at_least": self.at_least, "unit": self.unit, "met": self.met,
                "miss": self.miss()}


SECTIONS = ("datapath", "masking", "audit_trigger", "rowfilters", "apply")


def failures(results: dict[str, Any]) -> list[str]:
    """Sections that failed, as ``section: error``."""
    found = [f"{k}: {results[k]['error']}" for k in SECTIONS
             if "error" in results.get(k, {"error": "missing"})]
    found += [f"profile.{k}: {v['error']}" for k, v in results.get("profile", {}).items()
              if "error" in v]
    return found


def _ok(results: dict[str, Any], key: str) -> bool:
    return key in results and "error" not in results[key]


#: Issue #14's bounds for the masking views (billing's masks include an HMAC).
MASKING_BOUNDS = {"research": 1.3, "billing": 1.5}


def targets(results: dict[str, Any]) -> list[Target]:
    """The targets, evaluated on this run's medians (data path: issue #13; the database
    fence: issue #14); targets of a failed section are left out (the failure is reported
    instead)."""
    out: list[Target] = []
    if _ok(results, "datapath"):
        out += _datapath_targets(results["datapath"])
    if _ok(results, "audit_trigger"):
        ratios = results["audit_trigger"]["ratios"]
        for op, bound in (("insert", 4.0), ("update", 3.0)):
            out.append(Target(f"audit trigger, 100k-row {op.upper()}: policyc / no audit",
                              ratios[f"{op}_policyc_over_none"], bound, False))
        out.append(Target("audit trigger, 100k-row INSERT: per-row PL/pgSQL / policyc",
                          ratios["insert_plpgsql_over_policyc"], 1.5, True))
        if "update_one_policyc_over_none" in ratios:
            out.append(Target("audit trigger, one-row UPDATE: policyc / no audit",
                              ratios["update_one_policyc_over_none"], 1.5, False))
    if _ok(results, "masking"):
        for group, m in results["masking"].items():
            out.append(Target(f"masking ({group}): view / base table", m["ratio"],
                              MASKING_BOUNDS.get(group, 1.2), False))
    if _ok(results, "rowfilters"):
        out.append(Target("row filters, billing write path: policyc.claim() / literal",
                          results["rowfilters"]["ratios"]["total"], 1.2, False))
    if _ok(results, "apply"):
        out.append(Target("no-op re-apply", results["apply"]["noop_reapply_s"]["median"],
                          2.0, False, "s"))
    return out


def _datapath_targets(datapath: dict[str, Any]) -> list[Target]:
    """Issue #13's data-path targets (select_pk on research's masked view; mixed_rw)."""
    goals = {("select_pk", "prepared", 1): 0.50, ("select_pk", "simple", 1): 0.55,
             ("select_pk", "prepared", 16): 0.35, ("select_pk", "simple", 16): 0.40,
             ("mixed_rw", "prepared", 1): 0.70, ("mixed_rw", "simple", 1): 0.70}
    out: list[Target] = []
    for cfg in datapath["configs"]:
        key = (cfg["workload"], cfg["mode"], cfg["clients"])
        tag = f"{cfg['workload']} -M {cfg['mode']}, {cfg['clients']} client" + \
            ("s" if cfg["clients"] > 1 else "")
        r = cfg["ratios"]
        if key in goals:
            out.append(Target(f"{tag}: proxy/direct tps", r["tps_proxy_over_direct"],
                              goals[key], True))
        if cfg["clients"] != 1:
            continue
        if cfg["workload"] == "select_pk":
            out.append(Target(f"{tag}: added p50 latency vs direct",
                              r["added_p50_ms_vs_direct"], 0.15, False, "ms"))
            cpu = cfg.get("proxy_loop_cpu_us_per_statement")
            if cpu is not None:
                out.append(Target(f"{tag}: proxy event-loop CPU per statement (µs)", cpu, 80.0,
                                  False, "µs"))
        if cfg["workload"] == "mixed_rw":
            paths = cfg["paths"]
            out.append(Target(f"{tag}: p99 proxy / p99 direct",
                              paths["proxy"]["p99_ms"] / paths["direct"]["p99_ms"], 2.0, False))
    audit = datapath["audit"]
    if audit["executed"]:
        out.append(Target("proxy: statements audited / executed",
                          audit["audited"] / audit["executed"], 1.0, True))
    return out


# ---- Markdown ---------------------------------------------------------------------------


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _fmt_target(t: Target) -> list[str]:
    if t.unit == "ms":
        value, bound = f"{t.value:.3f} ms", f"≤ {t.bound:.2f} ms"
    elif t.unit == "s":
        value, bound = f"{t.value:.2f} s", f"< {t.bound:.0f} s"
    elif t.unit == "µs":
        value, bound = f"{t.value:.0f} µs", f"≤ {t.bound:.0f} µs"
    else:
        value, bound = f"{t.value:.2f}", ("≥ " if t.at_least else "≤ ") + f"{t.bound:.2f}"
    return [t.name, value, bound, "met" if t.met else "**missed**", t.miss()]


def _profile_lines(name: str, profile: dict[str, Any]) -> list[str]:
    per_tx = profile["total_s"] / max(1, profile["transactions"]) * 1000
    lines = [f"**{name}** ({profile['script']}, 1 client, modes {', '.join(profile['modes'])}): "
             "tps under the profiler "
             + ", ".join(f"{m} {v:.0f}" for m, v in profile["tps_under_profiler"].items())
             + f". The event-loop thread was busy {profile['total_s']:.2f} s of the "
             f"{profile['window_s']:g} s window ({profile['total_s'] / profile['window_s']:.0%})"
             f", {per_tx:.3f} ms per transaction (profiler overhead included); the rest of "
             "the time it waited for the client, the database or the spool's fsync.", ""]
    lines += _table(["component (own time)", "share"], (
        [c["component"], f"{c['own_share']:.1%}"] for c in profile["components"][:12]))
    lines += _table(["top functions by own time", "calls", "own", "cumulative"], (
        [f"`{r['function']}`", str(r["calls"]), f"{r['own_share']:.1%}",
         f"{r['cum_share']:.1%}"] for r in profile["top_own"][:12]))
    return lines


_PLUMBING = ("<frozen ", "<built-in method builtins.exec>", "<string>:", "runpy")


def _apply_profile_lines(profile: dict[str, Any]) -> list[str]:
    rows = profile["top_cumulative"]
    imports = max((r["cum_share"] for r in rows if "_find_and_load" in r["function"]),
                  default=0.0)
    lines = [f"{profile['total_s']:.2f} s profiled; module imports take {imports:.0%} of it. "
             "Top functions by cumulative time (import machinery left out):", ""]
    lines += _table(["function", "calls", "own", "cumulative"], (
        [f"`{r['function']}`", str(r["calls"]), f"{r['own_share']:.1%}",
         f"{r['cum_share']:.1%}"] for r in [
            r for r in rows
            if not r["function"].startswith(_PLUMBING) and "_bootstrap" not in r["function"]
        ][:20]))
    return lines


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    out = ["# policyc benchmark results", "",
           f"Written by `bench/run.py` ({s['label']} run) on {results['date']} in "
           f"{results['elapsed_s'] / 60:.1f} min. See bench/README.md for what is measured "
           "and how to read it. Every number is the median of "
           f"{s['reps']} runs unless noted.", "",
           "## Machine and versions", ""]
    out += _table(["", ""], [
        ["CPU", f"{m['cpu_model']} ({m['cores']} cores)"], ["memory", f"{m['memory_gib']} GiB"],
        ["kernel", m["kernel"]], ["PostgreSQL", m["postgresql"]], ["PgBouncer", m["pgbouncer"]],
        ["pgbench", m["pgbench"]], ["Python", m["python"]], ["policyc", m["policyc"]],
        ["proxy event loop", m["proxy_event_loop"]],
        ["load average (1/5/15 min) at start, end",
         " / ".join(f"{x:.2f}" for x in results.get("load_average_start", [])) + "; "
         + " / ".join(f"{x:.2f}" for x in results.get("load_average_end", []))]])
    out += ["## Settings", "",
            f"- cluster: {', '.join(f'{k}={v}' for k, v in results['cluster_settings'].items())}"
            " (production-like durability: every commit is fsynced)",
            f"- pgbench: -T {s['duration']:g} s per run, clients {s['clients']}, modes "
            f"{s['modes']}, {s['reps']} repetitions, paths interleaved and rotated",
            f"- clinic data: {s['patients']} patients; PgBouncer: session pooling, auth trust; "
            "proxy: plaintext loopback, durable spool (fdatasync before a statement is "
            "forwarded, or — for a statement that changes nothing, or nothing outside a "
            "transaction block — before its answer is), audit drained into audit.statements",
            f"- audit trigger and masking: {s['rows']} rows; compile/apply: {s['tables']} "
            f"tables x {s['groups']} groups", ""]

    tlist = [Target(**{k: t[k] for k in ("name", "value", "unit")}, bound=t["target"],
                    at_least=t["at_least"]) for t in results["targets"]]
    met = sum(1 for t in tlist if t.met)
    out += [f"## Targets (data path: issue #13; database: issue #14): {met} of {len(tlist)} "
            "met", ""]
    out += _table(["target", "measured", "goal", "", "missed by"], (_fmt_target(t) for t in tlist))

    out += ["What is left, by target: for the proxy, the floor below (one durable flush per "
            "statement) and the cProfile at the end of this file (the event loop's own time); "
            "for the audit trigger and the masking views, the per-row breakdowns in "
            "bench/README.md (sections 3 and 4): an HMAC-SHA256 through PostgreSQL's sha256() "
            "costs about 1.3 µs a value, more than either budget leaves for a whole row.", ""]
    out += _floor_lines(results)
    errors = failures(results)
    if errors:
        out += ["## Failed sections", ""] + [f"- {e}" for e in errors] + [""]
    for title, key, render in (
            ("Data path: direct vs PgBouncer vs proxy", "datapath", _datapath_lines),
            ("Data path: the proxy with 1 and 2 workers", "scaling", _scaling_lines),
            ("Audit trigger: bulk writes into a PHI table", "audit_trigger", _trigger_lines),
            ("Masking views: SELECT of every visible row", "masking", _masking_lines),
            ("Row filters: billing's write path, policyc.claim() vs a literal", "rowfilters",
             _rowfilter_lines),
            ("Compile/apply", "apply", _apply_lines)):
        if _ok(results, key):
            out += [f"## {title}", "", *render(results)]

    prof = results.get("profile", {})
    if prof.get("proxy") and "error" not in prof["proxy"]:
        out += ["## Profile: the proxy's hot path (cProfile, steady state)", ""]
        for name, profile in prof["proxy"].items():
            out += _profile_lines(name, profile)
    if prof.get("apply") and "error" not in prof["apply"]:
        out += ["## Profile: a no-op re-apply (cProfile)", ""]
        out += _apply_profile_lines(prof["apply"])
    return "\n".join(out).rstrip() + "\n"


def _floor_lines(results: dict[str, Any]) -> list[str]:
    """What one durable flush costs here, against what the 1-client targets leave for it."""
    flush = results.get("floor")
    if not _ok(results, "floor") or not _ok(results, "datapath") or not flush:
        return []
    out = [f"**The floor.** Every statement's record is fdatasync'ed before its answer "
           f"leaves the proxy. One spool flush of a {flush['bytes']}-byte record on this "
           f"machine, measured before the data-path runs: median "
           f"{flush['median_us']:.0f} µs, p99 {flush['p99_us']:.0f} µs "
           f"({flush['count']} flushes). What the 1-client targets leave for everything the "
           "proxy adds (parsing, policy, the record, two more socket hops, the flush):", ""]
    rows = []
    for c in results["datapath"]["configs"]:
        if c["clients"] != 1:
            continue
        direct_ms = c["paths"]["direct"]["lat_avg_ms"]
        budget_us = direct_ms * (1 / 0.60 - 1) * 1000
        rows.append([c["workload"], c["mode"], f"{direct_ms * 1000:.0f} µs",
                     f"{budget_us:.0f} µs per transaction", "100 µs (p50)",
                     f"{flush['median_us']:.0f} µs per statement"])
    out += _table(["workload", "mode", "direct latency", "budget at 0.60 of direct tps",
                   "budget for added p50", "one flush"], rows)
    return out


def _datapath_lines(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    data = results["datapath"]
    for wl in data["workloads"]:
        out += [f"**{wl['name']}** ({wl['group']}): {wl['description']}", ""]
        configs = [c for c in data["configs"] if c["workload"] == wl["name"]]
        rows = [[c["mode"], str(c["clients"]), path, f"{p['tps']:.0f}",
                 f"{p['lat_avg_ms']:.3f}", f"{p['p50_ms']:.3f}", f"{p['p99_ms']:.3f}"]
                for c in configs for path, p in c["paths"].items()]
        out += _table(["mode", "clients", "path", "tps", "avg ms", "p50 ms", "p99 ms"], rows)
        out += _table(["mode", "clients", "proxy/direct tps", "proxy/PgBouncer tps",
                       "added p50 vs direct (ms)", "vs PgBouncer (ms)"], (
            [c["mode"], str(c["clients"]), f"{c['ratios']['tps_proxy_over_direct']:.2f}",
             f"{c['ratios']['tps_proxy_over_pgbouncer']:.2f}",
             f"{c['ratios']['added_p50_ms_vs_direct']:+.3f}",
             f"{c['ratios']['added_p50_ms_vs_pgbouncer']:+.3f}"] for c in configs))
    audit = data["audit"]
    return [*out, f"Audit: {audit['audited']} statements in audit.statements for "
            f"{audit['executed']} executed through the proxy (pgbench-completed transactions "
            "x statements each; statements of transactions cut off by the timer are audited "
            "too).", ""]


def _scaling_lines(results: dict[str, Any]) -> list[str]:
    data = results["scaling"]
    out = [f"**{data['workload']}** -M {data['mode']}, {data['clients']} clients, "
           f"`policyc proxy --workers N` (one process per worker, one port). On this 2-core "
           "machine PostgreSQL, pgbench and the proxy share the cores.", ""]
    out += _table(["workers", "tps", "p50 ms", "p99 ms", "tps vs 1 worker", "audited"], (
        [str(r["workers"]), f"{r['tps']:.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
         f"{data['tps_over_first'][str(r['workers'])]:.2f}", f"{r['audited']}/{r['executed']}"]
        for r in data["runs"]))
    return [*out, ""]


def _trigger_lines(results: dict[str, Any]) -> list[str]:
    a = results["audit_trigger"]
    sec = a["seconds"]
    one = all("update_one" in sec[v] for v in sec)
    out = [f"{a['rows']} rows per bulk statement"
           + ("; one-row UPDATE: the mean of 400, each its own transaction, "
              "synchronous_commit off." if one else "."), ""]
    out += _table(["variant", "INSERT s", "UPDATE s", "INSERT vs none", "UPDATE vs none",
                   *(["one-row UPDATE ms", "vs none"] if one else [])], (
        [v, f"{sec[v]['insert']:.3f}", f"{sec[v]['update']:.3f}",
         f"{sec[v]['insert'] / sec['none']['insert']:.2f}x",
         f"{sec[v]['update'] / sec['none']['update']:.2f}x",
         *([f"{sec[v]['update_one'] * 1000:.3f}",
            f"{sec[v]['update_one'] / sec['none']['update_one']:.2f}x"] if one else [])]
        for v in ("none", "policyc", "plpgsql")))
    return [*out, "`policyc`: the statement-level PL/Python trigger apply creates (PHI "
            "HMAC-hashed); `plpgsql`: the classic per-row trigger of bench/audit_baseline.sql "
            "(PHI in clear).", ""]


def _masking_lines(results: dict[str, Any]) -> list[str]:
    runs = results["settings"]["mask_runs"]
    out = [f"Median of {runs} interleaved runs each, at the libpq level, parallel query off "
           "in both sessions.", ""]
    out += _table(["group", "rows", "view ms", "base table ms", "ratio",
                   "rows with a parallel plan"], (
        [g, str(v["rows"]), f"{v['view_s'] * 1000:.1f}", f"{v['base_s'] * 1000:.1f}",
         f"{v['ratio']:.2f}", str(v.get("parallel_plan_rows", "?"))]
        for g, v in results["masking"].items()))
    lost = [g for g, v in results["masking"].items()
            if v.get("parallel_plan_rows", v["rows"]) != v["rows"]]
    if lost:
        out += [f"**Correctness:** through {', '.join(lost)}'s view a parallel plan returns "
                "fewer rows than a serial one: row filters read the session identity by "
                "backend pid, which a parallel worker does not have (`policyc.claim()` is "
                "PARALLEL SAFE). Rows are hidden, never leaked, but answers are wrong.", ""]
    return out


def _rowfilter_lines(results: dict[str, Any]) -> list[str]:
    rf = results["rowfilters"]
    ms, calls = rf["ms"], rf["claim_calls_per_transaction"]
    out = [f"As `billing` (clinic 1, {rf['patients_of_clinic']} patients), prepared statements, "
           f"{rf['rounds']} rounds of {rf['transactions_per_round']} timed transactions per "
           "variant, variants alternating: SELECT a patient with its first visit, INSERT a "
           "claim, UPDATE its status, COMMIT. `claim`: the shipped filters; `literal`: the same "
           "with `policyc.claim('clinic_id')::int` written as `1`. Median ms.", ""]
    parts = ("select", "insert", "update", "commit", "total")
    out += _table(["variant", *parts, "policyc.claim() calls"], (
        [v, *(f"{ms[v][p]:.3f}" for p in parts), str(calls[v])] for v in ("claim", "literal")))
    out += _table(["", *parts], [["claim / literal",
                                  *(f"{rf['ratios'][p]:.2f}" for p in parts)]])
    return out


def _apply_lines(results: dict[str, Any]) -> list[str]:
    ap = results["apply"]
    out = [f"{ap['tables']} tables ({ap['phi_tables']} with PHI), {ap['groups']} groups, "
           f"{ap['views']} views; first apply executes {ap['statements_first_apply']} "
           "statements. Timed as a user runs it: a new `policyc apply` process each time, "
           "a fresh cluster for each first apply.", ""]
    return out + _table(["", "median s", "runs"], [
        ["first apply", f"{ap['first_apply_s']['median']:.2f}",
         ", ".join(f"{x:.2f}" for x in ap["first_apply_s"]["runs"])],
        ["no-op re-apply", f"{ap['noop_reapply_s']['median']:.2f}",
         ", ".join(f"{x:.2f}" for x in ap["noop_reapply_s"]["runs"])]])


def write(outdir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write results.json and RESULTS.md into ``outdir`` (targets evaluated afresh)."""
    outdir.mkdir(parents=True, exist_ok=True)
    results["targets"] = [t.as_json() for t in targets(results)]
    data, text = outdir / "results.json", outdir / "RESULTS.md"
    data.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    text.write_text(markdown(results))
    return data, text
