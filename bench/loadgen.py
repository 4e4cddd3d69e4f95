"""Run pgbench once and turn its output and per-transaction log into numbers.

tps comes from pgbench's summary ("without initial connection time"); average, p50 and p99
latency come from the per-transaction log (``-l``), which records every transaction's
latency in microseconds, so percentiles are exact rather than estimated from buckets.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


class PgbenchError(RuntimeError):
    """pgbench failed or printed no result; the message carries its stderr tail."""


@dataclass(frozen=True)
class Sample:
    """One pgbench run: throughput and latency (milliseconds)."""

    tps: float
    lat_avg_ms: float
    p50_ms: float
    p99_ms: float
    transactions: int
    failed: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def read_latencies(logdir: Path, prefix: str) -> list[float]:
    """Latencies (ms) of successful transactions from every ``prefix.*`` log file."""
    out: list[float] = []
    for path in sorted(logdir.glob(f"{prefix}.*")):
        with path.open() as handle:
            for line in handle:
                fields = line.split()
                # client_id transaction_no time script_no time_epoch time_us [...]
                if len(fields) >= 6 and fields[2].isdigit():
                    out.append(int(fields[2]) / 1000.0)
    out.sort()
    return out


def parse_summary(stdout: str) -> tuple[float, int, int]:
    """(tps, transactions, failed) from pgbench's summary."""
    tps, done = _TPS.search(stdout), _DONE.search(stdout)
    if tps is None or done is None:
        raise PgbenchError(f"pgbench printed no result:\n{stdout[-1500:]}")
    failed = _FAILED.search(stdout)
    return float(tps.group(1)), int(done.group(1)), int(failed.group(1)) if failed else 0


def run_pgbench(*, port: int, user: str, dbname: str, script: Path, clients: int, mode: str,
                duration: float, defines: Mapping[str, str | int],
                password: str | None = None) -> Sample:
    """One fixed-duration pgbench run against 127.0.0.1:port."""
    threads = 1 if clients == 1 else 2
    logdir = Path(tempfile.mkdtemp(prefix="policyc-pgbench-"))
    try:
        argv = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", user,
                "-M", mode, "-c", str(clients), "-j", str(threads),
                "-T", str(max(1, round(duration))), "-f", str(script),
                "-l", f"--log-prefix={logdir / 'tx'}"]
        for name, value in defines.items():
            argv += ["-D", f"{name}={value}"]
        argv.append(dbname)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGSSLMODE"] = "disable"
        env["PGCONNECT_TIMEOUT"] = "10"
        if password is not None:
            env["PGPASSWORD"] = password
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=logdir,
                              timeout=duration + 120, check=False)
        if done.returncode != 0:
            raise PgbenchError(
                f"pgbench exited with {done.returncode} ({mode}, {clients} clients, "
                f"{script.name}):\n{done.stderr[-1500:]}")
        tps, transactions, failed = parse_summary(done.stdout)
        latencies = read_latencies(logdir, "tx")
        if not latencies:
            raise PgbenchError(f"pgbench wrote no transaction log ({script.name})")
        return Sample(tps=tps, lat_avg_ms=statistics.fmean(latencies),
                      p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                      transactions=transactions, failed=failed)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def median_sample(samples: Sequence[Sample]) -> dict[str, float]:
    """Per-field medians of several runs (each field independently)."""
    fields = ("tps", "lat_avg_ms", "p50_ms", "p99_ms")
    return {f: statistics.median(getattr(s, f) for s in samples) for f in fields}
