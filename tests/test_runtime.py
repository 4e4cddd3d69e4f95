"""The runtime as a real extension (control file, versioned scripts) and as scripts run by apply
when the extension is not installed on the server."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Database, clinic_policy
from policyc import RUNTIME_VERSION, runtime
from policyc.apply import apply_policy
from policyc.devcluster import find_bindir
from policyc.plan import make_plan


def test_render_writes_control_and_versioned_scripts(tmp_path: Path) -> None:
    written = {p.name for p in runtime.render(tmp_path)}
    assert "policyc.control" in written
    # one install script, then upgrade scripts up to the current version (PostgreSQL installs
    # 0.7.0 as 0.1.0 + the 0.1.0--0.2.0, ..., 0.6.0--0.7.0 upgrades)
    assert {"policyc--0.1.0.sql", "policyc--0.1.0--0.2.0.sql", "policyc--0.2.0--0.3.0.sql",
            "policyc--0.3.0--0.4.0.sql", "policyc--0.4.0--0.5.0.sql",
            "policyc--0.5.0--0.6.0.sql", f"policyc--0.6.0--{RUNTIME_VERSION}.sql"} <= written
    control = (tmp_path / "policyc.control").read_text()
    assert f"default_version = '{RUNTIME_VERSION}'" in control
    script = (tmp_path / "policyc--0.1.0.sql").read_text()
    assert script.startswith("\\echo Use")  # psql refuses to run it by accident
    assert "LANGUAGE plpython3u" in script and "transition tables" in script
    upgrade = (tmp_path / "policyc--0.1.0--0.2.0.sql").read_text()
    assert upgrade.startswith("\\echo Use") and "CREATE FUNCTION audit.approve" in upgrade
    chained = (tmp_path / "policyc--0.2.0--0.3.0.sql").read_text()
    assert chained.startswith("\\echo Use") and "CREATE FUNCTION audit.verify" in chained
    cheaper = (tmp_path / "policyc--0.3.0--0.4.0.sql").read_text()
    assert cheaper.startswith("\\echo Use") and "Runtime 0.4.0 writes exactly" in cheaper
    instances = (tmp_path / "policyc--0.4.0--0.5.0.sql").read_text()
    assert instances.startswith("\\echo Use") and "policyc.proxy_sessions" in instances
    cheaper_fence = (tmp_path / "policyc--0.5.0--0.6.0.sql").read_text()
    assert cheaper_fence.startswith("\\echo Use") and "policyc._kept_backend_start" in cheaper_fence
    latest = (tmp_path / f"policyc--0.6.0--{RUNTIME_VERSION}.sql").read_text()
    assert latest.startswith("\\echo Use") and "policy_hash" in latest
    for text in (script, upgrade, chained, cheaper, instances, cheaper_fence, latest):
        assert "{{" not in text and "{%" not in text


def test_upgrade_path_walks_scripts_in_order() -> None:
    path = runtime.upgrade_path(None)
    assert path[0].source is None and path[-1].target == RUNTIME_VERSION
    assert [(s.source, s.target) for s in path] == [
        (None, "0.1.0"), ("0.1.0", "0.2.0"), ("0.2.0", "0.3.0"), ("0.3.0", "0.4.0"),
        ("0.4.0", "0.5.0"), ("0.5.0", "0.6.0"), ("0.6.0", "0.7.0")]
    assert [(s.source, s.target) for s in runtime.upgrade_path("0.1.0")] == [
        ("0.1.0", "0.2.0"), ("0.2.0", "0.3.0"), ("0.3.0", "0.4.0"), ("0.4.0", "0.5.0"),
        ("0.5.0", "0.6.0"), ("0.6.0", "0.7.0")]
    assert [(s.source, s.target) for s in runtime.upgrade_path("0.3.0")] == [
        ("0.3.0", "0.4.0"), ("0.4.0", "0.5.0"), ("0.5.0", "0.6.0"), ("0.6.0", "0.7.0")]
    assert runtime.upgrade_path(RUNTIME_VERSION) == []
    with pytest.raises(LookupError, match=r"no upgrade script from runtime 0\.0\.1"):
        runtime.upgrade_path("0.0.1")


# What each released script renders to, byte for byte: a database that ran it must be upgradable
# by the scripts after it, so a released script never changes (a change goes into a new one).
RELEASED = {
    "policyc--0.1.0.sql": "710af8c4026d1492",
    "policyc--0.1.0--0.2.0.sql": "8e5320adff052469",
    "policyc--0.2.0--0.3.0.sql": "3690d6bc3e59b0be",
    "policyc--0.3.0--0.4.0.sql": "9b8fcc60f2159c0f",
    "policyc--0.4.0--0.5.0.sql": "53803493d75eaa9f",
    "policyc--0.5.0--0.6.0.sql": "4cd5b3eaa2ddd4ba",
}


def test_released_scripts_stay_frozen() -> None:
    rendered = {s.filename: hashlib.sha256(s.text.encode()).hexdigest()[:16]
                for s in runtime.scripts()}
    assert {name: rendered.get(name) for name in RELEASED} == RELEASED
    assert f"policyc--{RUNTIME_VERSION}.sql" in rendered or any(
        name.endswith(f"--{RUNTIME_VERSION}.sql") for name in rendered)


def test_script_path_records_version_in_the_ledger(applied_clinic: Database) -> None:
    assert applied_clinic.execute(
        "SELECT semantic->>'version', semantic->>'via' FROM policyc.applied_objects "
        "WHERE object_key = 'runtime'") == [(RUNTIME_VERSION, "script")]
    assert applied_clinic.execute(
        "SELECT count(*) FROM pg_extension WHERE extname = 'policyc'") == [(0,)]


def _sharedir() -> Path:
    out = subprocess.run([str(find_bindir() / "pg_config"), "--sharedir"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        out = subprocess.run(["pg_config", "--sharedir"], capture_output=True, text=True,
                             check=True)
    return Path(out.stdout.strip()) / "extension"


def test_create_extension_path(clinic_db: Database) -> None:
    target = _sharedir()
    if not os.access(target, os.W_OK):
        pytest.skip(f"{target} is not writable by this user (CI runs this as root)")
    files = runtime.render(target)
    try:
        policy = clinic_policy(clinic_db.name)
        with clinic_db.connect() as conn:
            plan = make_plan(conn, policy)
            assert [c.note for c in plan.changes if c.key == "runtime"] == [
                f"runtime - -> {RUNTIME_VERSION} (via extension)"]
            apply_policy(conn, policy)
            assert make_plan(conn, policy).empty
        assert clinic_db.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'policyc'") == [
            (RUNTIME_VERSION,)]
        # the extension owns its objects: they show in pg_depend as extension members
        assert clinic_db.execute(
            "SELECT count(*) > 10 FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid "
            "WHERE e.extname = 'policyc' AND d.deptype = 'e'") == [(True,)]
    finally:
        for path in files:
            path.unlink(missing_ok=True)
