"""``policyc service-password`` (issue #15, item 6): the service role's new password reaches
every group role in one transaction, so the proxy's upstream logins work with it (and no
longer with the old one) and plan shows no drift; the password never appears in the output,
in errors or in the server's log; the wrong role, database or input is refused in one line.

Logins are checked against a cluster of this module whose pg_hba.conf asks every role but the
superuser for a SCRAM password (the session cluster trusts everyone on loopback)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import CLINIC, Database, _drop_roles, _make_database, clinic_policy, load_module
from policyc.cli import main
from policyc.devcluster import FAST_TEST_SETTINGS, SUPERUSER, Cluster, throwaway_cluster
from policyc.proxy.config import parse_upstream
from policyc.servicepassword import read_password
from proxyharness import run_proxy

OLD = "old-Secret-4711"
NEW = "new-Secret-0815"
GROUPS = ("billing", "clinician", "research")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue() + capsys.readouterr().err


def policy_file(tmp_path: Path, database: str, service_role: str = "policyc_proxy") -> Path:
    text = (CLINIC / "policy.yaml").read_text().replace("database: clinic",
                                                        f"database: {database}")
    text = text.replace("service_role: policyc_proxy", f"service_role: {service_role}")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    (tmp_path / "dev-keys").mkdir(exist_ok=True)
    return path


def secret_file(tmp_path: Path, password: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(password + "\n")
    return path


def verifiers(db: Database, *roles: str) -> dict[str, str | None]:
    rows = db.execute("SELECT rolname::text, rolpassword FROM pg_authid "
                      "WHERE rolname = ANY(%s)", (list(roles),))
    return {name: password for name, password in rows}


# ---------------------------------------------------------------- a cluster that asks for passwords

@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[Cluster]:
    settings = {**FAST_TEST_SETTINGS, "log_statement": "all",
                "password_encryption": "scram-sha-256"}
    with throwaway_cluster(settings) as cluster:
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE hba_probe LOGIN")
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous: wait until a login without password fails
            try:
                psycopg.connect(cluster.dsn(user="hba_probe"), connect_timeout=5).close()
            except psycopg.OperationalError:
                break
            assert time.monotonic() < deadline, "pg_hba.conf reload not seen"
            time.sleep(0.1)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("DROP ROLE hba_probe")
        yield cluster


@pytest.fixture(scope="module")
def scram_template(scram_cluster: Cluster) -> str:
    janitor = _make_database(scram_cluster)
    seed = load_module(CLINIC / "seed.py", "clinic_seed")
    with psycopg.connect(scram_cluster.dsn(janitor.dbname), autocommit=True) as conn:
        conn.execute((CLINIC / "schema.sql").read_text().encode())
        seed.seed(conn, patients=30, seed=7)
    return janitor.dbname


@pytest.fixture
def scram_clinic(scram_cluster: Cluster, scram_template: str) -> Iterator[Database]:
    """The clinic database with its policy applied, in the cluster that checks passwords."""
    from policyc.apply import apply_policy

    janitor = _make_database(scram_cluster, template=scram_template)
    db = Database(scram_cluster, janitor.dbname)
    try:
        with db.connect() as conn:
            apply_policy(conn, clinic_policy(db.name))
        yield db
    finally:
        janitor.drop()
        _drop_roles(scram_cluster)


def logs_in(db: Database, role: str, password: str) -> bool:
    try:
        with psycopg.connect(f"{db.dsn_as(role)} password={password}", connect_timeout=10) as c:
            return c.execute("SELECT current_user").fetchone() == (role,)
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


# ------------------------------------------------------------------------------------ the tests

@pytest.mark.slow
def test_rotation_moves_the_service_role_and_every_group_role_to_the_new_password(
        scram_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = scram_clinic
    policy = policy_file(tmp_path, db.name)
    code, text = cli(capsys, "service-password", str(policy), "--dsn", db.dsn,
                     "--password-file", str(secret_file(tmp_path, OLD)))
    assert code == 0, text  # the first password, after the first apply
    assert all(logs_in(db, role, OLD) for role in ("policyc_proxy", *GROUPS))

    code, text = cli(capsys, "service-password", str(policy), "--dsn", db.dsn,
                     "--password-file", str(secret_file(tmp_path, NEW, "new")))
    assert code == 0, text
    assert OLD not in text and NEW not in text and "SCRAM-SHA-256$" not in text
    assert "service role policyc_proxy: set the new password" in text
    assert "onto billing, clinician, research" in text
    assert "kill -HUP" in text and "28P01" in text
    for role in ("policyc_proxy", *GROUPS):
        assert logs_in(db, role, NEW), role
        assert not logs_in(db, role, OLD), role
    code, text = cli(capsys, "plan", str(policy), "--dsn", db.dsn, "--check")
    assert (code, text.splitlines()[-1]) == (0, "no changes"), text
    # the server received verifiers only: its log (log_statement = all) has no password
    log = db.cluster.logfile.read_text(errors="replace")
    assert "ALTER ROLE" in log and OLD not in log and NEW not in log


@pytest.mark.slow
def test_the_proxy_logs_agents_in_with_the_new_password(
        scram_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = scram_clinic
    code, text = cli(capsys, "service-password", str(policy_file(tmp_path, db.name)), "--dsn",
                     db.dsn, "--password-file", str(secret_file(tmp_path, NEW)))
    assert code == 0, text
    upstream = f"{db.dsn_as('policyc_proxy')} password={NEW}"
    with run_proxy(clinic_policy(db.name), upstream, tmp_path / "spool") as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as agent:
        assert agent.execute("SELECT current_user").fetchone() == ("billing",)
        assert agent.execute("SELECT count(*) FROM patients").fetchone() is not None


@pytest.mark.db
def test_a_hand_rotation_is_drift_that_the_command_mends(
        applied_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = applied_clinic
    policy = policy_file(tmp_path, db.name)
    db.execute(f"ALTER ROLE policyc_proxy PASSWORD '{OLD}'")
    code, text = cli(capsys, "plan", str(policy), "--dsn", db.dsn, "--check", "--no-sql")
    assert code == 2 and "drift  role:billing" in text, text
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW + "\nsecond line ignored\n"))
    code, text = cli(capsys, "service-password", str(policy), "--dsn", db.dsn,
                     "--password-stdin")
    assert code == 0, text
    assert NEW not in text
    found = verifiers(db, "policyc_proxy", *GROUPS)
    assert found["policyc_proxy"] is not None
    assert found["policyc_proxy"].startswith("SCRAM-SHA-256$")
    assert set(found.values()) == {found["policyc_proxy"]}
    code, text = cli(capsys, "plan", str(policy), "--dsn", db.dsn, "--check")
    assert code == 0, text


@pytest.mark.db
def test_a_service_role_the_policy_names_is_the_one_rotated(
        clinic_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = clinic_db
    policy = policy_file(tmp_path, db.name, service_role="clinic_svc")
    assert cli(capsys, "apply", str(policy), "--dsn", db.dsn)[0] == 0
    before = verifiers(db, "policyc_proxy")
    code, text = cli(capsys, "service-password", str(policy), "--dsn", db.dsn,
                     "--password-file", str(secret_file(tmp_path, NEW)))
    assert code == 0 and "service role clinic_svc" in text, text
    found = verifiers(db, "clinic_svc", "policyc_proxy", *GROUPS)
    assert found["policyc_proxy"] == before["policyc_proxy"]  # not the one the policy names
    assert {found[g] for g in GROUPS} == {found["clinic_svc"]} != {None}
    assert cli(capsys, "plan", str(policy), "--dsn", db.dsn, "--check")[0] == 0


@pytest.mark.db
def test_a_group_not_applied_yet_is_left_to_apply(
        applied_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = applied_clinic
    policy = policy_file(tmp_path, db.name)
    assert cli(capsys, "service-password", str(policy), "--dsn", db.dsn, "--password-file",
               str(secret_file(tmp_path, OLD, "old")))[0] == 0
    before = verifiers(db, "research")
    assert before["research"] is not None
    policy.write_text(policy.read_text().replace("\n  research:\n", "\n  analysts:\n"))
    code, text = cli(capsys, "service-password", str(policy), "--dsn", db.dsn,
                     "--password-file", str(secret_file(tmp_path, NEW)))
    assert code == 0, text
    assert "onto billing, clinician\n" in text
    assert "group analysts: skipped, not applied here yet: apply creates its role" in text
    found = verifiers(db, "policyc_proxy", "billing", "clinician", "research")
    assert found["billing"] == found["clinician"] == found["policyc_proxy"] is not None
    assert found["research"] == before["research"]  # no longer the policy's: apply drops it


@pytest.mark.db
def test_dry_run_changes_nothing(applied_clinic: Database, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = applied_clinic
    db.execute(f"ALTER ROLE policyc_proxy PASSWORD '{OLD}'")
    before = verifiers(db, "policyc_proxy", *GROUPS)
    code, text = cli(capsys, "service-password", str(policy_file(tmp_path, db.name)), "--dsn",
                     db.dsn, "--password-file", str(secret_file(tmp_path, NEW)), "--dry-run")
    assert code == 0, text
    assert "would set the new password" in text and "would copy" in text
    assert "dry run: nothing was changed" in text and NEW not in text
    assert verifiers(db, "policyc_proxy", *GROUPS) == before


@pytest.mark.db
@pytest.mark.parametrize("createrole", [False, True])
def test_a_role_that_is_not_a_superuser_is_refused_in_one_line(
        applied_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        createrole: bool) -> None:
    # a CREATEROLE role could ALTER ROLE policyc_proxy itself: refused all the same
    db = applied_clinic
    db.execute(f"CREATE ROLE plain_dba LOGIN {'CREATEROLE' if createrole else ''}")
    before = verifiers(db, "policyc_proxy", *GROUPS)
    code, text = cli(capsys, "service-password", str(policy_file(tmp_path, db.name)), "--dsn",
                     db.dsn_as("plain_dba"), "--password-file",
                     str(secret_file(tmp_path, NEW)))
    assert code == 1, text
    assert "permission denied" in text and "service-password needs a superuser" in text
    assert "README \"Privileges\"" in text
    assert "Traceback" not in text and NEW not in text and len(text.strip().splitlines()) == 1
    assert verifiers(db, "policyc_proxy", *GROUPS) == before


@pytest.mark.db
def test_a_database_the_policy_was_never_applied_to_is_refused(
        clinic_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli(capsys, "service-password", str(policy_file(tmp_path, clinic_db.name)),
                     "--dsn", clinic_db.dsn, "--password-file", str(secret_file(tmp_path, NEW)))
    assert code == 1 and "never applied to database" in text and "policyc apply" in text, text
    assert NEW not in text and len(text.strip().splitlines()) == 1


@pytest.mark.db
def test_a_policy_of_another_database_is_refused(
        applied_clinic: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli(capsys, "service-password", str(policy_file(tmp_path, "elsewhere")),
                     "--dsn", applied_clinic.dsn, "--password-file",
                     str(secret_file(tmp_path, NEW)))
    assert code == 1 and "the policy is for database elsewhere" in text, text
    assert len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("content", ["", "\n", "\nsecond line\n", None, "dir", "a\x00b\n"])
def test_an_empty_missing_or_unreadable_password_file_is_refused(
        content: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    # refused before connecting: the connection string points nowhere
    code, text = cli(capsys, "service-password", str(CLINIC / "policy.yaml"), "--dsn",
                     "host=127.0.0.1 port=1", "--password-file", str(path))
    assert code == 1, text
    assert text.startswith("policyc service-password: ") and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    expected = {None: "no such file", "dir": "cannot read the password",
                "a\x00b\n": "holds a NUL byte"}.get(content, "is empty")
    assert expected in text


def test_a_password_source_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli(capsys, "service-password", str(CLINIC / "policy.yaml"))
    assert code == 64 and "--password-file" in text


@pytest.mark.parametrize("content", ["plain\n", "with spaces \r\nnext", "ünïcødé", "x\x0bnext"])
def test_the_file_is_read_as_the_proxy_reads_it(content: str, tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    upstream = parse_upstream("host=db dbname=clinic user=policyc_proxy",
                              password_file=str(path))
    assert read_password(str(path), None) == upstream.password

