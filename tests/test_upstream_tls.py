"""TLS between the proxy and the database, checked as libpq checks it: with ``sslmode=verify-ca``
or ``verify-full`` in ``--upstream`` the proxy talks only to a server whose certificate the
given CA signed (and, for ``verify-full``, that names the host), on every connection it makes:
the agents' sessions (its own protocol code) and its audit, approval and readiness connections
(libpq).  Someone in the middle between proxy and database gets neither the service password
nor PHI: the proxy refuses to start, or refuses the session."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import CLINIC, Database, _drop_roles, _make_database, clinic_policy, load_module
from policyc.devcluster import FAST_TEST_SETTINGS, Cluster, throwaway_cluster
from policyc.errors import PolicycError
from policyc.proxy.config import ProxyConfigError, parse_upstream
from proxyharness import run_proxy

pytestmark = pytest.mark.db


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(tmp: Path, name: str) -> tuple[Any, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _server_cert(ca_key: Any, ca: x509.Certificate, names: list[x509.GeneralName]
                 ) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("db")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A cluster serving TLS with a certificate for 127.0.0.1 signed by ``ca``; ``other``
    is a CA that signed nothing of it."""
    tmp = tmp_path_factory.mktemp("tls")
    tmp.chmod(0o755)
    ca_key, ca, ca_path = _ca(tmp, "ca")
    _, _, other_path = _ca(tmp, "other")
    cert, key = _server_cert(ca_key, ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    with throwaway_cluster(FAST_TEST_SETTINGS) as cluster:
        for name, data in (("server.crt", cert), ("server.key", key)):
            path = cluster.datadir / name
            path.write_bytes(data)
            path.chmod(0o600)
            owner = cluster.datadir.stat().st_uid
            if owner != os.getuid():
                os.chown(path, owner, pwd.getpwuid(owner).pw_gid)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        yield {"cluster": cluster, "ca": ca_path, "other": other_path}


@pytest.fixture
def tls_clinic(tls: dict[str, Any]) -> Iterator[Database]:
    from policyc.apply import apply_policy

    cluster: Cluster = tls["cluster"]
    janitor = _make_database(cluster)
    db = Database(cluster, janitor.dbname)
    seed = load_module(CLINIC / "seed.py", "clinic_seed")
    try:
        with db.connect() as conn:
            conn.execute((CLINIC / "schema.sql").read_text().encode())
            seed.seed(conn, patients=20, seed=7)
            apply_policy(conn, clinic_policy(db.name))
        yield db
    finally:
        janitor.drop()
        _drop_roles(cluster)


def test_verify_full_with_the_right_ca_serves_agents_over_verified_tls(
        tls: dict[str, Any], tls_clinic: Database, tmp_path: Path) -> None:
    dsn = f"{tls_clinic.dsn_as('policyc_proxy')} sslmode=verify-full sslrootcert={tls['ca']}"
    with run_proxy(clinic_policy(tls_clinic.name), dsn, tmp_path / "spool") as running:
        with running.connect("agent-t1", "billing", clinic_id=1) as conn:
            assert conn.execute("SELECT count(*) FROM claims").fetchone() is not None
        # the agent's upstream session really is TLS (its own backend, seen from the server)
        rows = tls_clinic.execute(
            "SELECT a.usename::text, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a "
            "USING (pid) WHERE a.application_name = 'policyc-proxy-audit'")
        assert rows and all(ssl_on for _user, ssl_on in rows)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_a_database_the_ca_does_not_vouch_for_is_refused_at_start(
        tls: dict[str, Any], tls_clinic: Database, tmp_path: Path, mode: str) -> None:
    """What a proxy pointed at an impostor (a certificate from another CA) does: it does not
    start, so the service password and no agent's statement ever reach it."""
    dsn = f"{tls_clinic.dsn_as('policyc_proxy')} sslmode={mode} sslrootcert={tls['other']}"
    with pytest.raises((PolicycError, psycopg.OperationalError)) as refused, \
            run_proxy(clinic_policy(tls_clinic.name), dsn, tmp_path / "spool"):
        pass
    assert "certificate verify failed" in str(refused.value)


def test_verify_full_checks_the_name_verify_ca_does_not(tls: dict[str, Any],
                                                        tls_clinic: Database,
                                                        tmp_path: Path) -> None:
    """The certificate names 127.0.0.1; reached as ``localhost`` it does not match."""
    base = tls_clinic.dsn_as("policyc_proxy").replace("host=127.0.0.1", "host=localhost")
    with run_proxy(clinic_policy(tls_clinic.name),
                   f"{base} sslmode=verify-ca sslrootcert={tls['ca']}",
                   tmp_path / "spool-ca") as running, \
            running.connect("agent-t2", "billing", clinic_id=1) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises((PolicycError, psycopg.OperationalError)) as refused, \
            run_proxy(clinic_policy(tls_clinic.name),
                      f"{base} sslmode=verify-full sslrootcert={tls['ca']}",
                      tmp_path / "spool-full"):
        pass
    assert "localhost" in str(refused.value)


def test_the_agents_sessions_verify_too(tls: dict[str, Any], tls_clinic: Database) -> None:
    """The agents' upstream sessions are opened by the proxy's own protocol code, not libpq:
    the same checks hold there (a CA that did not sign the certificate, a name it does not
    carry), and a session it does open is encrypted."""
    from policyc.proxy.upstream import UpstreamError, connect

    def open_as_billing(dsn: str) -> Any:
        async def run() -> Any:
            session = await connect(parse_upstream(dsn), "billing", {})
            session.writer.close()
            return session
        return asyncio.run(run())

    base = tls_clinic.dsn_as("policyc_proxy")
    session = open_as_billing(f"{base} sslmode=verify-full sslrootcert={tls['ca']}")
    assert session.writer.get_extra_info("ssl_object") is not None
    with pytest.raises(UpstreamError, match="certificate is not trusted"):
        open_as_billing(f"{base} sslmode=verify-ca sslrootcert={tls['other']}")
    local = base.replace("host=127.0.0.1", "host=localhost")
    with pytest.raises(UpstreamError, match=r"certificate is not trusted.*localhost"):
        open_as_billing(f"{local} sslmode=verify-full sslrootcert={tls['ca']}")
    assert open_as_billing(f"{local} sslmode=verify-ca sslrootcert={tls['ca']}")


def test_a_verifying_mode_without_a_usable_ca_file_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    with pytest.raises(ProxyConfigError, match=r"sslrootcert=.*root\.crt cannot be used"):
        parse_upstream("host=db dbname=clinic sslmode=verify-full")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    with pytest.raises(ProxyConfigError, match="needs the CA"):
        parse_upstream(f"host=db dbname=clinic sslmode=verify-ca sslrootcert={garbage}")
    with pytest.raises(ProxyConfigError, match="not supported"):
        parse_upstream("host=db dbname=clinic sslmode=verify-everything")
    assert parse_upstream("host=db dbname=clinic sslmode=verify-full "
                          "sslrootcert=system").sslrootcert == "system"
