"""A spool belongs to one database and one proxy process (issue #11, class 9).

The attack: a proxy killed with records in its spool, then a proxy for another database
started on the same directory, drained the first database's records into the second's
``audit.statements``.  Here it is tried with real ``policyc proxy`` processes, a real kill
and real clients; plus two proxies on one spool, a host name that starts pointing at another
database while the proxy runs, an unowned spool, and the default location.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import CLINIC, Database, _make_database, clinic_policy
from policyc.apply import apply_policy
from policyc.cli import build_parser
from policyc.devcluster import Cluster, free_port
from policyc.proxy.audit import AuditLog, AuditUnavailable
from policyc.proxy.audit.owner import (
    ADOPT_NAME,
    OWNER_NAME,
    SpoolOwnershipError,
    default_spool_dir,
    spool_leaf,
)
from policyc.proxy.audit.records import StatementOutcome, StatementRecord
from policyc.proxy.audit.spool import LOCK_NAME, Spool, SpoolLocked, read_segment
from policyc.proxy.config import ProxyConfig, parse_upstream
from policyc.proxy.server import ProxyServer
from proxyharness import run_proxy, wait_for

POLICY = CLINIC / "policy.yaml"


# --- helpers --------------------------------------------------------------------------------
@pytest.fixture
def other_clinic(pg_cluster: Cluster, clinic_template: str,
                 applied_clinic: Database) -> Iterator[Database]:
    """A second clinic database in the same cluster with its own audit trail: the clinic
    policy applied with its groups renamed (group roles belong to one database); dropped
    before the first one's roles are."""
    janitor = _make_database(pg_cluster, template=clinic_template)
    other = Database(pg_cluster, janitor.dbname)
    try:
        policy = clinic_policy(other.name)
        groups = tuple(dataclasses.replace(g, name=f"{g.name}_b") for g in policy.groups)
        with other.connect() as conn:
            apply_policy(conn, dataclasses.replace(policy, groups=groups))
        yield other
    finally:
        janitor.drop()


def start_cli_proxy(db: Database, spool: Path) -> tuple[subprocess.Popen[str], int]:
    """``policyc proxy`` as its own process; returns it and the port it listens on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyc.cli", "proxy", str(POLICY), "--listen", "127.0.0.1:0",
         "--upstream", db.dsn_as("policyc_proxy"), "--allow-plaintext-loopback",
         "--spool", str(spool), "--checkpoint-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "policyc proxy: listening on HOST:PORT, upstream ..."
    if "listening on" not in line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the proxy did not start: {err}")
    port = int(line.split("listening on ", 1)[1].split(",", 1)[0].rsplit(":", 1)[1])
    return proc, port


def run_cli_proxy(db: Database, spool: Path) -> subprocess.CompletedProcess[str]:
    """``policyc proxy`` expected to refuse to start (it would otherwise serve forever)."""
    return subprocess.run(
        [sys.executable, "-m", "policyc.cli", "proxy", str(POLICY), "--listen", "127.0.0.1:0",
         "--upstream", db.dsn_as("policyc_proxy"), "--allow-plaintext-loopback",
         "--spool", str(spool)],
        capture_output=True, text=True, timeout=120, check=False)


def agent_dsn(db: Database, port: int, token: str) -> str:
    return (f"host=127.0.0.1 port={port} dbname={db.name} user=agent-7 password={token} "
            "sslmode=disable")


def billing_token(db: Database) -> str:
    from policyc.identity.devkeys import mint_token
    from proxyharness import DEV_KEYS

    identity = clinic_policy(db.name).identity
    assert identity is not None
    return mint_token(DEV_KEYS / "dev-signing-key.pem", issuer=identity.issuer,
                      audience=identity.audience, subject="agent-7",
                      groups=["billing-agents"], claims={"clinic_id": 1}, ttl_seconds=600)


def spooled_texts(spool: Path) -> list[str]:
    texts = []
    for path in sorted(spool.glob("seg-*.jsonl")):
        for line in read_segment(path).splitlines():
            event = json.loads(line)
            if event.get("e") == "begin":
                texts.append(str(event["text"]))
    return texts


def spool_snapshot(spool: Path) -> dict[str, bytes]:
    """Every file but the lock (whose content names the last process that took it)."""
    return {p.name: p.read_bytes() for p in sorted(spool.iterdir()) if p.name != LOCK_NAME}


def recorded(db: Database, marker: str) -> int:
    rows = db.execute("SELECT count(*) FROM audit.statements WHERE statement LIKE %s",
                      (f"%{marker}%",))
    return int(rows[0][0])


def identity(db: Database) -> tuple[str, int]:
    rows = db.execute("SELECT system_identifier::text, (SELECT oid::bigint FROM pg_database "
                      "WHERE datname = current_database()) FROM pg_control_system()")
    return str(rows[0][0]), int(rows[0][1])


# --- the attack: a killed proxy's spool, then a proxy for another database ---------------------
def test_a_killed_proxys_spool_is_refused_by_another_database_and_drained_into_its_own(
        applied_clinic: Database, other_clinic: Database, tmp_path: Path) -> None:
    a, b = applied_clinic, other_clinic
    spool = tmp_path / "spool"
    marker = f"marker_{uuid.uuid4().hex}"
    proxy_a, port = start_cli_proxy(a, spool)
    try:
        owner = json.loads((spool / OWNER_NAME).read_text())
        assert (owner["system_identifier"], owner["database_oid"]) == identity(a)
        assert owner["database"] == a.name
        with a.connect() as locker:
            # the drainer cannot insert while this lock is held: the record stays spooled
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE audit.statements IN ACCESS EXCLUSIVE MODE")
            with psycopg.connect(agent_dsn(a, port, billing_token(a)),
                                 autocommit=True) as agent:
                assert agent.execute(f"SELECT 1 AS {marker}").fetchall() == [(1,)]
            # the answer came after its record was durable: it is in the spool now
            assert any(marker in text for text in spooled_texts(spool))
            proxy_a.send_signal(signal.SIGKILL)
            proxy_a.wait()
            # its backends (one may wait on the lock with a batch) die with it
            a.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s",
                      (a.name, locker.info.backend_pid))
            assert wait_for(lambda: not a.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND pid <> %s", (a.name, locker.info.backend_pid)))
            locker.execute("ROLLBACK")
    finally:
        if proxy_a.poll() is None:
            proxy_a.kill()
        proxy_a.communicate()
    assert recorded(a, marker) == 0  # only the spool has it
    before = spool_snapshot(spool)

    # a proxy for database B on A's spool refuses to start, naming both, touching nothing
    refused = run_cli_proxy(b, spool)
    assert refused.returncode == 1, refused.stderr
    message = refused.stderr
    sysid, oid_a = identity(a)
    _, oid_b = identity(b)
    assert f'database "{a.name}" (oid {oid_a}) of cluster {sysid}' in message
    assert f'database "{b.name}" (oid {oid_b}) of cluster {sysid}' in message
    assert "undrained record(s)" in message and "belongs to" in message
    assert marker not in message and "password" not in message.lower()
    assert spool_snapshot(spool) == before
    assert recorded(b, marker) == 0

    # A's own proxy delivers it, to A only; both trails verify
    with run_proxy(clinic_policy(a.name), a.dsn_as("policyc_proxy"), spool):
        assert wait_for(lambda: recorded(a, marker) == 1)
    assert recorded(b, marker) == 0
    assert not any(marker in text for text in spooled_texts(spool))
    for db in (a, b):
        assert db.execute("SELECT * FROM audit.verify()") == []


def test_a_foreign_spool_is_refused_through_the_server_too(
        applied_clinic: Database, other_clinic: Database, tmp_path: Path) -> None:
    """The library path (ProxyServer.start) refuses the same way, and the refused proxy
    releases the spool's lock: its owner can start on it at once."""
    spool = tmp_path / "spool"
    with run_proxy(clinic_policy(applied_clinic.name),
                   applied_clinic.dsn_as("policyc_proxy"), spool):
        pass
    server = ProxyServer(ProxyConfig(policy=clinic_policy(other_clinic.name),
                                     upstream=parse_upstream(other_clinic.dsn_as("policyc_proxy")),
                                     listen_port=0, allow_plaintext_loopback=True,
                                     spool_dir=spool))
    with pytest.raises(SpoolOwnershipError, match="belongs to"):
        asyncio.run(server.start())
    with run_proxy(clinic_policy(applied_clinic.name),
                   applied_clinic.dsn_as("policyc_proxy"), spool):
        pass


# --- one proxy process at a time ---------------------------------------------------------------
def test_two_proxies_on_one_spool(applied_clinic: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first, _port = start_cli_proxy(applied_clinic, spool)
    try:
        # same database, same spool: still refused while the first one runs
        refused = run_cli_proxy(applied_clinic, spool)
        assert refused.returncode == 1
        assert f"in use by another proxy (pid {first.pid})" in refused.stderr
        # and in this process (a second server object) too
        with pytest.raises(Exception, match="in use by another proxy") as caught, \
                run_proxy(clinic_policy(applied_clinic.name),
                          applied_clinic.dsn_as("policyc_proxy"), spool):
            pass
        assert isinstance(caught.value, AuditUnavailable)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    # the lock went with the process: the next proxy starts
    with run_proxy(clinic_policy(applied_clinic.name),
                   applied_clinic.dsn_as("policyc_proxy"), spool) as running, \
            running.connect() as agent:
        agent.execute("SELECT 1")


def test_the_lock_names_its_holder(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s")
    first.open()
    try:
        second = Spool(tmp_path / "s")
        with pytest.raises(SpoolLocked, match=rf"\(pid {os.getpid()}\)"):
            second.open()
        assert second._lock_fd == -1  # closed again
    finally:
        first.close()
    Spool(tmp_path / "s").open(begin=False)  # released with close()


# --- the owner is checked on every audit connection, not only at start ------------------------
def stmt(text: str) -> StatementRecord:
    return StatementRecord(record_id=uuid.uuid4(), session_id=uuid.uuid4(), seq=1,
                           at=time.time(), agent="agent-7", group="billing", text=text,
                           decision="allowed")


def test_a_database_that_changes_under_the_same_address_never_gets_the_records(
        applied_clinic: Database, other_clinic: Database, tmp_path: Path) -> None:
    """A host name that starts pointing at another database while the proxy runs (DNS, a
    rebuilt server): the audit log's next connection reaches it, and it refuses to drain."""
    a, b = applied_clinic, other_clinic
    marker = f"moved_{uuid.uuid4().hex}"

    async def body() -> None:
        upstream = parse_upstream(a.dsn_as("policyc_proxy"))
        log = AuditLog(upstream.conninfo(), tmp_path / "spool", proxy_name="p",
                       upstream=upstream, drain_interval=0.01)
        await log.start()
        try:
            # the move
            log._connector.conninfo = parse_upstream(b.dsn_as("policyc_proxy")).conninfo()
            conn, log._drainer.conn = log._drainer.conn, None
            if conn is not None:
                await conn.close()
            rec = stmt(f"SELECT 1 AS {marker}")
            await log.record_statement(rec, StatementOutcome(rec.record_id, 1, 1.0))
            assert not await log.flush(timeout=1.0)  # B is never written: an outage
            assert recorded(b, marker) == 0
            log._connector.conninfo = upstream.conninfo()  # the address points home again
            assert await log.flush(timeout=30.0)
        finally:
            await log.close()

    asyncio.run(body())
    assert recorded(a, marker) == 1 and recorded(b, marker) == 0


# --- unowned and damaged spools ------------------------------------------------------------------
def test_an_unowned_spool_with_records_is_refused_until_the_operator_adopts_it(
        applied_clinic: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    marker = f"legacy_{uuid.uuid4().hex}"
    dead = f"host=127.0.0.1 port={free_port()} dbname=nowhere user=policyc_proxy"

    async def legacy() -> None:  # as an older policyc: no owner file, the database away
        log = AuditLog(dead, spool, proxy_name="old", db_timeout=0.5)
        await log.start()
        rec = stmt(f"SELECT 1 AS {marker}")
        await log.record_statement(rec, StatementOutcome(rec.record_id, 1, 1.0))
        assert not await log.flush(timeout=0.2)
        await log.abort()

    asyncio.run(legacy())
    assert not (spool / OWNER_NAME).exists()
    before = spool_snapshot(spool)
    policy, dsn = clinic_policy(applied_clinic.name), applied_clinic.dsn_as("policyc_proxy")
    with pytest.raises(SpoolOwnershipError, match="no owner file") as caught, \
            run_proxy(policy, dsn, spool):
        pass
    assert str(spool / ADOPT_NAME) in str(caught.value)
    assert spool_snapshot(spool) == before and recorded(applied_clinic, marker) == 0
    (spool / ADOPT_NAME).touch()
    with run_proxy(policy, dsn, spool):
        assert wait_for(lambda: recorded(applied_clinic, marker) == 1)
    assert not (spool / ADOPT_NAME).exists()
    owner = json.loads((spool / OWNER_NAME).read_text())
    assert (owner["system_identifier"], owner["database_oid"]) == identity(applied_clinic)


def test_an_unreadable_owner_file_or_an_unreachable_upstream_refuses_to_start(
        applied_clinic: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    policy, dsn = clinic_policy(applied_clinic.name), applied_clinic.dsn_as("policyc_proxy")
    with run_proxy(policy, dsn, spool):
        pass
    owner = spool / OWNER_NAME
    assert stat.S_IMODE(owner.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert not (spool / "owner.json.tmp").exists()
    good = owner.read_bytes()
    owner.write_text("{not json")
    with pytest.raises(SpoolOwnershipError, match="unreadable"), run_proxy(policy, dsn, spool):
        pass
    owner.write_bytes(good)
    dead = f"host=127.0.0.1 port={free_port()} dbname={applied_clinic.name} user=policyc_proxy"
    with pytest.raises(AuditUnavailable, match="unreachable") as caught, \
            run_proxy(policy, dead, spool):
        pass
    assert "cannot start" in str(caught.value)
    # same database reached under another address: still its own, the address re-recorded
    other_address = applied_clinic.dsn_as("policyc_proxy").replace("127.0.0.1", "localhost")
    with run_proxy(policy, other_address, spool):
        pass
    assert json.loads(owner.read_text())["host"] == "localhost"


def test_a_service_role_without_pg_control_system_is_told_what_to_grant(
        applied_clinic: Database, tmp_path: Path) -> None:
    policy, dsn = clinic_policy(applied_clinic.name), applied_clinic.dsn_as("policyc_proxy")
    applied_clinic.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        with pytest.raises(SpoolOwnershipError, match="GRANT EXECUTE ON FUNCTION "
                           r"pg_control_system\(\)"), run_proxy(policy, dsn, tmp_path / "spool"):
            pass
    finally:
        applied_clinic.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
    assert not (tmp_path / "spool" / OWNER_NAME).exists()


# --- the default location ------------------------------------------------------------------------
@pytest.mark.parametrize(("env", "euid", "expected"), [
    ({"STATE_DIRECTORY": "/var/lib/private/policyc:/var/lib/other", "HOME": "/home/u"}, 1000,
     "/var/lib/private/policyc/spool/clinic-db.internal-5432"),
    ({"STATE_DIRECTORY": "/var/lib/policyc", "XDG_STATE_HOME": "/x"}, 0,
     "/var/lib/policyc/spool/clinic-db.internal-5432"),
    ({"XDG_STATE_HOME": "/x/state", "HOME": "/root"}, 0,
     "/var/lib/policyc/spool/clinic-db.internal-5432"),
    ({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}, 1000,
     "/x/state/policyc/spool/clinic-db.internal-5432"),
    ({"XDG_STATE_HOME": "relative/state", "STATE_DIRECTORY": "rel", "HOME": "/home/u"}, 1000,
     "/home/u/.local/state/policyc/spool/clinic-db.internal-5432"),
    ({"HOME": "/home/u"}, 1000, "/home/u/.local/state/policyc/spool/clinic-db.internal-5432"),
])
def test_default_spool_location(env: dict[str, str], euid: int, expected: str) -> None:
    assert default_spool_dir("db.internal", 5432, "clinic", environ=env, euid=euid) == Path(
        expected)


def test_default_spool_location_without_home_and_odd_names() -> None:
    path = default_spool_dir("/var/run/postgresql", 5433, "my db/../x", environ={},
                             euid=os.geteuid())
    assert path.is_absolute() and path.name == "my_db_.._x-_var_run_postgresql-5433"
    assert ".." not in path.parts
    long_a = spool_leaf("h", 1, "a" * 300)
    long_b = spool_leaf("h", 2, "a" * 300)
    assert len(long_a) <= 200 and long_a != long_b


def test_the_proxy_default_is_the_state_directory_not_the_working_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    args = build_parser().parse_args(["proxy", str(POLICY)])
    assert args.spool is None
    upstream = parse_upstream("host=db.internal port=5432 dbname=clinic user=policyc_proxy")
    config = ProxyConfig(policy=clinic_policy("clinic"), upstream=upstream)
    assert config.spool_path() == tmp_path / "state" / "spool" / "clinic-db.internal-5432"
    assert ProxyConfig(policy=config.policy, upstream=upstream,
                       spool_dir=tmp_path / "mine").spool_path() == tmp_path / "mine"


def test_the_spool_and_its_missing_parents_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "state" / "spool" / "clinic-h-5432")
        spool.open()
        spool.close()
    finally:
        os.umask(old)
    for path in (tmp_path / "state", tmp_path / "state" / "spool",
                 tmp_path / "state" / "spool" / "clinic-h-5432"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
