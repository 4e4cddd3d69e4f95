"""Shared fixtures: one throwaway PostgreSQL cluster per test session (started as an
unprivileged OS user when the suite runs as root), a fresh database per test made by
pytest-postgresql's DatabaseJanitor, and the clinic example loaded from a template."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from pytest_postgresql.janitor import DatabaseJanitor

from policyc.devcluster import FAST_TEST_SETTINGS, SUPERUSER, Cluster, throwaway_cluster

ROOT = Path(__file__).resolve().parent.parent
CLINIC = ROOT / "examples" / "clinic"
HOSPITAL = Path(__file__).resolve().parent / "fixtures" / "hospital"
_counter = itertools.count()


def load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    with throwaway_cluster(FAST_TEST_SETTINGS) as cluster:
        yield cluster
        # a backend that crashed during the suite is a bug even if no test noticed it
        log = cluster.logfile.read_text(errors="replace") if cluster.logfile.exists() else ""
        crashes = [line for line in log.splitlines() if "terminated by signal" in line]
        assert not crashes, "PostgreSQL backends crashed during the tests:\n" + "\n".join(crashes)


@dataclass
class Database:
    """A throwaway database in the session cluster."""

    cluster: Cluster
    name: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def dsn_as(self, role: str) -> str:
        return self.cluster.dsn(self.name, user=role)

    def connect(self, role: str = SUPERUSER, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn_as(role), autocommit=autocommit)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql.encode() if params is None else sql, params)
            return cur.fetchall() if cur.description else []


def _drop_roles(cluster: Cluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        roles = [
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname <> %s AND rolname NOT LIKE 'pg\\_%%'",
                (SUPERUSER,),
            )
        ]
        for role in roles:
            name = psycopg.sql.Identifier(role)
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {} CASCADE").format(name))
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(name))


def _make_database(cluster: Cluster, template: str | None = None) -> DatabaseJanitor:
    name = f"t{next(_counter)}"
    janitor = DatabaseJanitor(
        user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=name,
        template_dbname=template,
    )
    janitor.init()
    return janitor


@pytest.fixture
def db(pg_cluster: Cluster) -> Iterator[Database]:
    """An empty database; roles created by the test are dropped afterwards."""
    janitor = _make_database(pg_cluster)
    try:
        yield Database(pg_cluster, janitor.dbname)
    finally:
        janitor.drop()
        _drop_roles(pg_cluster)


@pytest.fixture(scope="session")
def clinic_template(pg_cluster: Cluster) -> str:
    """A template database with the clinic schema and a small deterministic data set."""
    janitor = _make_database(pg_cluster)
    seed = load_module(CLINIC / "seed.py", "clinic_seed")
    with psycopg.connect(pg_cluster.dsn(janitor.dbname), autocommit=True) as conn:
        conn.execute((CLINIC / "schema.sql").read_text().encode())
        seed.seed(conn, patients=300, seed=7)
        conn.execute("ANALYZE")
    return janitor.dbname


@pytest.fixture
def clinic_db(pg_cluster: Cluster, clinic_template: str) -> Iterator[Database]:
    """A fresh copy of the clinic database (policy not applied)."""
    janitor = _make_database(pg_cluster, template=clinic_template)
    try:
        yield Database(pg_cluster, janitor.dbname)
    finally:
        janitor.drop()
        _drop_roles(pg_cluster)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the cluster are marked ``db`` so ``make unit`` can skip them."""
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


def clinic_policy(database: str) -> Any:
    """The clinic example policy, pointed at a test database."""
    from policyc.policy import load_policy

    policy = load_policy(CLINIC / "policy.yaml")
    return dataclasses.replace(policy, database=database)


def register(db: Database, conn: psycopg.Connection[Any], agent: str, group: str,
             claims: dict[str, Any]) -> str:
    """Record ``conn``'s session identity the way the proxy does, through the owner side."""
    session_id = str(uuid.uuid4())
    pid = conn.info.backend_pid
    with db.connect() as admin:
        admin.execute(
            "SELECT policyc.register_session(%s, %s, %s, %s, %s)",
            (pid, session_id, agent, group, Jsonb({"sub": agent, **claims})),
        )
    return session_id


def apply_at_runtime(db: Database, policy: Any, version: str,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply ``policy`` as an older policyc would have: with runtime ``version`` only (for
    upgrade tests)."""
    import policyc.apply
    import policyc.compiler
    import policyc.plan
    from policyc import runtime

    upgrade_path = runtime.upgrade_path
    with monkeypatch.context() as patch:
        for module in (policyc.apply, policyc.compiler, policyc.plan):
            patch.setattr(module, "RUNTIME_VERSION", version)
        patch.setattr(runtime, "upgrade_path",
                      lambda installed, target=version: upgrade_path(installed, target))
        with db.connect() as conn:
            policyc.apply.apply_policy(conn, policy)


@pytest.fixture
def applied_clinic(clinic_db: Database) -> Database:
    """The clinic database with its policy applied."""
    from policyc.apply import apply_policy

    with clinic_db.connect() as conn:
        apply_policy(conn, clinic_policy(clinic_db.name))
    return clinic_db


@pytest.fixture
def proxy(applied_clinic: Database, tmp_path: Path) -> Iterator[Any]:
    """A running proxy in front of the applied clinic database (TLS and loopback plaintext)."""
    from proxyharness import run_proxy

    policy = clinic_policy(applied_clinic.name)
    # held statements give up after a second here (tests of holding set their own hold)
    policy = dataclasses.replace(
        policy, approvals=dataclasses.replace(policy.approvals, hold_seconds=1))
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running
