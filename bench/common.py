"""What the bench modules share: the clinic example, the production-like cluster settings, the
bench identity, and small helpers.  A leaf: it imports no other bench module except
``services``, and no bench module imports ``run`` (the harness), so the import graph of bench/
has no cycle (tests/test_bench_imports.py checks it).
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from policyc.cli import main as policyc
from policyc.devcluster import Cluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLINIC = ROOT / "examples" / "clinic"
POLICY = CLINIC / "policy.yaml"
AGENT = "bench-agent"
OIDC = {"research": ("research-agents", []),
        "clinician": ("clinician-agents", ["clinic_id=2"]),
        "billing": ("billing-agents", ["clinic_id=1"])}

# Production-like: every commit fsynced (never FAST_TEST_SETTINGS here).
CLUSTER_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
}

Log = Callable[[str], None]
_RUN_IDS = itertools.count(1)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rotate(items: Sequence[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: the order of variants changes between repetitions."""
    k = by % len(items)
    return list(items[k:]) + list(items[:k])


def next_idbase() -> int:
    """The first id of new visits for one pgbench run, unique per run within the process."""
    return next(_RUN_IDS) * 1_000_000_000


def load_seed() -> Any:
    spec = importlib.util.spec_from_file_location("clinic_seed", CLINIC / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(*argv: str) -> str:
    """Run a policyc command in-process; its output, or an error naming the command."""
    out = io.StringIO()
    code = policyc(list(argv), out=out)
    if code != 0:
        raise RuntimeError(f"policyc {argv[0]} failed with exit code {code}")
    return out.getvalue()


def setup_clinic(cluster: Cluster, patients: int) -> tuple[str, float]:
    """The clinic database with data, policy and bench identity; (server version, apply s)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE clinic")
        row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]) if row else "?"
    dsn = cluster.dsn("clinic")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((CLINIC / "schema.sql").read_text().encode())
        load_seed().seed(conn, patients=patients, seed=7)
    start = time.perf_counter()
    cli("apply", str(POLICY), "--dsn", dsn)
    applied = time.perf_counter() - start
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((HERE / "identity.sql").read_text().encode())
        conn.execute("VACUUM ANALYZE")
    # the scratch copy for dbcost, taken before any benchmark traffic touches clinic
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE scratch TEMPLATE clinic")
    return version, applied


def tokens() -> dict[str, str]:
    """A token per benchmarked group for the bench agent (two hours)."""
    out = {}
    for group, (oidc, claims) in OIDC.items():
        argv = ["token", str(POLICY), "--sub", AGENT, "--groups", oidc, "--ttl", "7200"]
        for claim in claims:
            argv += ["--claim", claim]
        out[group] = cli(*argv).strip()
    return out
