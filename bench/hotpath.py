"""Where the time goes: cProfile summaries of the proxy under pgbench and of a no-op apply.

py-spy is not part of the environment, so the proxy runs under ``python -m cProfile`` (which
slows it down: read the shares, not the absolute times).  cProfile sees the event loop's
thread only; while fsyncs are fast the loop writes the spool itself, so the device flush is
``posix.fdatasync`` there (waiting, not CPU), else it runs on the spool thread, unseen.
"""

from __future__ import annotations

import os
import pstats
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import next_idbase
from loadgen import Sample, run_pgbench
from services import ROOT, proxy, python_env

Log = Callable[[str], None]


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name  # a built-in: "<method 'send' of '_socket.socket' objects>"
    path = filename
    for marker in ("/site-packages/", str(ROOT) + "/engine/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = Path(filename).name
    return f"{path}:{line}({name})"


def component(function: str) -> str:
    """A coarse bucket for a profiled function: a policyc module, a library, or a built-in."""
    if function.startswith("<") or function.startswith("{"):
        for word, bucket in (("socket", "socket I/O"), ("epoll", "event loop wait"),
                             ("select", "event loop wait"), ("uvloop", "event loop (uvloop)"),
                             ("_asyncio", "asyncio internals"), ("json", "json (C)"),
                             ("posix", "os calls"), ("_ssl", "TLS"), ("lock", "threads/locks"),
                             ("pglast", "pglast (C)"), ("hashlib", "hashing"),
                             ("_hashlib", "hashing")):
            if word in function:
                return bucket
        return "other built-ins"
    head = function.split(":", 1)[0]
    if head.startswith("policyc/"):
        return head.rsplit(".", 1)[0].replace("/", ".")
    return head.split("/", 1)[0].removesuffix(".py")


def summarize(profile: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own time (tottime) and by cumulative time, as shares of the total."""
    stats = pstats.Stats(str(profile))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt) or 1.0  # type: ignore[attr-defined]
    rows = [(func, cc, nc, tt, ct) for func, (cc, nc, tt, ct, _callers) in raw.items()]

    def entry(row: tuple[Any, int, int, float, float]) -> dict[str, Any]:
        func, _cc, nc, tt, ct = row
        return {"function": _where(func), "calls": nc, "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4), "own_share": round(tt / total, 4),
                "cum_share": round(ct / total, 4)}

    buckets: dict[str, float] = {}
    for func, _cc, _nc, tt, _ct in rows:
        key = component(_where(func))
        buckets[key] = buckets.get(key, 0.0) + tt
    components = [{"component": k, "own_s": round(v, 4), "own_share": round(v / total, 4)}
                  for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])]
    by_own = sorted(rows, key=lambda r: r[3], reverse=True)[:top]
    by_cum = sorted(rows, key=lambda r: r[4], reverse=True)[: top * 3]
    return {"total_s": round(total, 3), "components": components,
            "top_own": [entry(r) for r in by_own],
            "top_cumulative": [entry(r) for r in by_cum]}


@dataclass(frozen=True)
class ProfiledRun:
    """One workload to profile: its pgbench script and the agent token to run it with."""

    name: str
    script: Path
    token: str


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.exists():
        raise RuntimeError("the profiled proxy wrote no profile")


def profile_proxy(policy: Path, upstream_dsn: str, workdir: Path, *,
                  runs: Sequence[ProfiledRun], agent: str, dbname: str,
                  defines: dict[str, int], modes: Sequence[str], duration: float,
                  log: Log) -> dict[str, Any]:
    """The proxy under cProfile while pgbench (1 client) runs each workload in each mode.

    Per workload: a one-second warm-up run, unprofiled; then the profiler is switched on for
    the measured runs only (start-up and imports stay out of the profile).
    """
    out = workdir / "proxy.prof"
    summaries: dict[str, Any] = {}
    with proxy(policy, upstream_dsn, workdir, profile=out) as (port, pid):
        for run in runs:
            def bench(mode: str, seconds: float, run: ProfiledRun = run) -> Sample:
                return run_pgbench(port=port, user=agent, dbname=dbname, script=run.script,
                                   clients=1, mode=mode, duration=seconds, password=run.token,
                                   defines={**defines, "registered": 1, "seq": 0,
                                            "idbase": next_idbase()})

            bench(modes[0], 1)
            os.kill(pid, signal.SIGUSR1)
            tps: dict[str, float] = {}
            statements = 0
            for mode in modes:
                sample = bench(mode, duration)
                tps[mode] = sample.tps
                statements += sample.transactions
                log(f"  profiled proxy {run.name} -M {mode}: {sample.tps:.1f} tps under "
                    "cProfile")
            os.kill(pid, signal.SIGUSR2)
            _wait_for(out)
            saved = workdir / f"proxy-{run.name}.prof"
            out.rename(saved)
            summary = summarize(saved)
            summaries[run.name] = {
                "script": run.script.name, "clients": 1, "modes": list(modes),
                "window_s": duration * len(modes), "transactions": statements,
                "tps_under_profiler": tps, **summary}
    return summaries


def profile_apply(policy: Path, dsn: str, workdir: Path) -> dict[str, Any]:
    """A no-op ``policyc apply`` under cProfile."""
    out = workdir / "apply.prof"
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "policyc.cli", "apply",
         str(policy), "--dsn", dsn], capture_output=True, text=True, env=python_env(),
        cwd=ROOT, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profiled apply failed: {done.stderr[-1500:]}")
    return summarize(out)
