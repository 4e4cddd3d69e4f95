"""The benchmark harness at tiny size, so it does not rot: it must run end to end (cluster,
PgBouncer, proxy, pgbench, audit triggers, masking, apply, profiles) and write every section.

Structure only: benchmarks are never timed assertions; nothing here depends on machine speed.
Writes into a temporary directory, never over bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PGBOUNCER = Path("/usr/sbin/pgbouncer")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbench") is None or not PGBOUNCER.exists(),
                    reason="pgbench and PgBouncer come from scripts/system-deps.sh")
def test_bench_harness_smoke(tmp_path: Path) -> None:
    results_md = (ROOT / "bench" / "RESULTS.md")
    before = results_md.stat().st_mtime_ns if results_md.exists() else None
    env = {**os.environ, "PYTHONPATH": str(ROOT / "engine")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--smoke",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (results_md.stat().st_mtime_ns if results_md.exists() else None) == before

    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("date", "machine", "settings", "cluster_settings", "datapath", "profile",
                "masking", "audit_trigger", "rowfilters", "apply", "targets", "elapsed_s",
                "floor"):
        assert key in data, key
    assert 0 < data["floor"]["median_us"] <= data["floor"]["p99_us"]
    assert data["cluster_settings"]["fsync"] == "on"
    assert data["machine"]["cores"] >= 1 and data["machine"]["postgresql"]

    configs = data["datapath"]["configs"]
    assert {(c["workload"], c["mode"]) for c in configs} == {
        (w, m) for w in ("select_pk", "mixed_rw", "billing_rw") for m in ("simple", "prepared")}
    for cfg in configs:
        assert set(cfg["paths"]) == {"direct", "pgbouncer", "proxy"}
        for path in cfg["paths"].values():
            assert all(_positive(path[k]) for k in ("tps", "lat_avg_ms", "p50_ms", "p99_ms"))
            assert path["p50_ms"] <= path["p99_ms"]
        assert _positive(cfg["ratios"]["tps_proxy_over_direct"])
        assert _positive(cfg["ratios"]["tps_proxy_over_pgbouncer"])
    audit = data["datapath"]["audit"]
    assert audit["executed"] > 0 and audit["audited"] >= audit["executed"]

    seconds = data["audit_trigger"]["seconds"]
    assert set(seconds) == {"none", "policyc", "plpgsql"}
    assert all(_positive(v) for ops in seconds.values() for v in ops.values())
    assert data["audit_trigger"]["rows"] == 1000
    for group in ("research", "billing"):
        assert _positive(data["masking"][group]["ratio"]) and data["masking"][group]["rows"] > 0
    apply = data["apply"]
    assert (apply["tables"], apply["groups"]) == (10, 2)
    assert _positive(apply["first_apply_s"]["median"])
    assert _positive(apply["noop_reapply_s"]["median"])
    for name in ("select_pk", "mixed_rw", "billing_rw"):
        assert data["profile"]["proxy"][name]["top_own"]
    assert data["profile"]["apply"]["top_cumulative"]

    rowfilters = data["rowfilters"]
    assert rowfilters["claim_calls_per_transaction"]["literal"] == 0
    assert rowfilters["claim_calls_per_transaction"]["claim"] > 0
    assert all(_positive(v) for ms in rowfilters["ms"].values() for v in ms.values())
    names = {t["name"] for t in data["targets"]}
    assert "no-op re-apply" in names and any("proxy/direct" in n for n in names)
    assert "audit trigger, one-row UPDATE: policyc / no audit" in names
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Machine and versions", "## Targets", "## Data path",
                    "## Audit trigger", "## Masking views", "## Row filters", "## Compile/apply",
                    "## Profile"):
        assert heading in text, heading
