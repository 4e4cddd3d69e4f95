"""Live reload (issue #15, item 2), in process: ``ProxyServer.reload()`` reads the policy, its
JWKS, the TLS pair and the service password again; new sessions get the new policy, open ones
keep the rules they started with; a bad file changes nothing and says why; sessions record the
hash of the policy they ran under; nothing is dropped or lost while reloads run under load; a
rotated service password is picked up when the database refuses the old one (28P01).

The CLI process (SIGHUP, ``--workers``, ``--reload-on-change``) is tests/test_proxy_reload_cli.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Database
from policyc import logs
from policyc.policy import load_policy
from policyc.proxy import reload as reloading
from policyc.proxy.config import ProxyConfigError, parse_upstream, read_service_password
from proxyharness import DEV_KEYS, RunningProxy, run_proxy, wait_for, write_clinic_policy

pytestmark = pytest.mark.db

SIZE = "SELECT pg_relation_size('patients')"  # research may call it only when it lists it
RESEARCH = "  research:\n    oidc_groups: [research-agents]\n"


def allow_size(text: str) -> str:
    """research lists pg_catalog.pg_relation_size under ``functions:``: a change the proxy
    alone enforces (no re-apply)."""
    assert RESEARCH in text
    return text.replace(RESEARCH, RESEARCH + "    functions: [pg_catalog.pg_relation_size]\n")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_of(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT policyc.session_id()").fetchone()
    assert row is not None
    return str(row[0])


def may_size(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session's judgement lets it call pg_relation_size."""
    try:
        conn.execute(SIZE).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        assert "pg_relation_size" in str(exc)
        return False
    return True


def versions(db: Database, *session_ids: str) -> dict[str, str | None]:
    """Each session's recorded policy version."""
    def found() -> dict[str, str | None] | None:
        rows = db.execute("SELECT session_id::text, policy_hash FROM audit.sessions "
                          "WHERE session_id = ANY(%s::uuid[])", (list(session_ids),))
        return dict(rows) if len(rows) == len(session_ids) else None
    return wait_for(found) or {}


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@dataclass
class Live:
    """A proxy on a policy file of its own, with a TLS pair of its own (both may change)."""

    proxy: RunningProxy
    db: Database
    policy: Path
    tls_cert: Path
    tls_key: Path

    def write(self, edit: Callable[[str], str] | None = None) -> str:
        """Write the policy (the clinic's, edited) and return its hash."""
        write_clinic_policy(self.policy, self.db.name, edit)
        return sha256_of(self.policy)

    def reload(self) -> bool:
        return bool(self.proxy.call(self.proxy.server.reload()))


@pytest.fixture
def live(applied_clinic: Database, tmp_path: Path) -> Iterator[Live]:
    policy = write_clinic_policy(tmp_path / "policy.yaml", applied_clinic.name)
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, key = tls / "proxy.crt", tls / "proxy.key"
    shutil.copy(DEV_KEYS / "dev-tls.crt", cert)
    shutil.copy(DEV_KEYS / "dev-tls.key", key)
    with run_proxy(load_policy(policy), applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool", tls_cert=cert, tls_key=key) as running:
        yield Live(running, applied_clinic, policy, cert, key)


# -- the files, without a database ----------------------------------------------------------------
def test_the_policy_hash_is_the_files_bytes_as_loaded(tmp_path: Path) -> None:
    path = write_clinic_policy(tmp_path / "policy.yaml", "clinic")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM is read, and hashed
    policy = load_policy(path)
    assert policy.sha256 == sha256_of(path) == reloading.policy_hash(policy)
    elsewhere = load_policy(write_clinic_policy(tmp_path / "elsewhere.yaml", "clinic"))
    assert elsewhere.sha256 != policy.sha256  # the BOM
    assert elsewhere.sha256 == load_policy(
        write_clinic_policy(tmp_path / "copy.yaml", "clinic")).sha256  # bytes, not path
    commented = load_policy(write_clinic_policy(tmp_path / "c.yaml", "clinic",
                                                lambda t: t + "# a comment\n"))
    assert commented.sha256 != elsewhere.sha256 and commented.groups == elsewhere.groups


def test_watched_files_and_what_counts_as_a_change(tmp_path: Path) -> None:
    path = write_clinic_policy(tmp_path / "policy.yaml", "clinic")
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    from policyc.proxy.config import ProxyConfig

    config = ProxyConfig(policy=load_policy(path), upstream=parse_upstream(""),
                         tls_cert=DEV_KEYS / "dev-tls.crt", tls_key=DEV_KEYS / "dev-tls.key",
                         password_file=secret)
    watched = reloading.watched_files(config)
    assert watched == [path, DEV_KEYS / "jwks.json", DEV_KEYS / "dev-tls.crt",
                       DEV_KEYS / "dev-tls.key", secret]
    seen = reloading.stamps(watched)
    assert not reloading.changed(seen, reloading.stamps(watched))
    secret.write_text("pw2\n")  # size and mtime
    assert reloading.changed(seen, reloading.stamps(watched))
    seen = reloading.stamps(watched)
    replaced = tmp_path / "new"
    replaced.write_text("pw3\n")
    replaced.rename(secret)  # another inode (a secret manager's atomic rename)
    assert reloading.changed(seen, reloading.stamps(watched))
    seen = reloading.stamps(watched)
    secret.unlink()
    assert reloading.changed(seen, reloading.stamps(watched))
    # a file newly watched (a reloaded policy's other JWKS) is no change of its own
    assert not reloading.changed(seen, {**seen, tmp_path / "other.json": (1, 2, 3)})


def test_reading_the_password_again_says_what_failed_never_the_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\nignored\n")
    assert read_service_password(secret, None) == "hunter2"
    assert read_service_password(None, "printf 'hunter3\\n'") == "hunter3"
    assert read_service_password(None, None) is None
    secret.write_text("")
    for source, command, expected in (
            (secret, None, "is empty"), (tmp_path / "nope", None, "cannot be read"),
            (None, "sh -c 'echo hunter4; exit 3'", "exited with 3"),
            (None, "true", "printed no password"), (None, "/nonexistent/cmd", "did not run")):
        with pytest.raises(ProxyConfigError, match=expected) as caught:
            read_service_password(source, command)
        assert "hunter" not in str(caught.value)


def test_a_proxy_that_cannot_start_leaves_sighup_as_it_was(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """The proxy holds SIGHUP blocked while it starts; one that stops there (here: nobody
    listens upstream) gives the mask back, or every process its caller starts later would
    inherit SIGHUP blocked (a supervisor would never see one)."""
    from policyc.cli import main

    policy = write_clinic_policy(tmp_path / "policy.yaml", "clinic")
    assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    code = main(["proxy", str(policy), "--listen", "127.0.0.1:0", "--upstream",
                 "host=127.0.0.1 port=1 dbname=clinic user=policyc_proxy",
                 "--allow-plaintext-loopback", "--spool", str(tmp_path / "spool")])
    assert code == 1 and "unreachable" in capsys.readouterr().err
    assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


# -- reloads ---------------------------------------------------------------------------------
def test_new_sessions_get_the_new_policy_open_ones_keep_theirs(live: Live) -> None:
    server = live.proxy.server
    first = server.policy_hash
    assert first == sha256_of(live.policy)
    before = live.proxy.connect("agent-rl1", "research")
    assert not may_size(before)

    second = live.write(allow_size)
    assert live.reload()
    assert server.policy_hash == second != first
    after = live.proxy.connect("agent-rl2", "research")
    assert may_size(after)
    assert not may_size(before)  # the open session keeps the judgement it started with

    assert live.write() == first  # the same bytes: the same version
    assert live.reload()
    third = live.proxy.connect("agent-rl3", "research")
    assert not may_size(third)
    assert may_size(after) and not may_size(before)
    assert server.reload_counts == {"ok": 2}

    ids = [session_of(c) for c in (before, after, third)]
    assert versions(live.db, *ids) == dict(zip(ids, [first, second, first], strict=True))
    for conn in (before, after, third):
        conn.close()
    expected = [("agent-rl1", ["blocked"] * 3), ("agent-rl2", ["allowed"] * 2),
                ("agent-rl3", ["blocked"])]

    def decisions() -> list[tuple[Any, ...]]:
        return live.db.execute(
            "SELECT agent, array_agg(decision ORDER BY seq) FROM audit.statements WHERE "
            "statement = %s GROUP BY agent ORDER BY agent", (SIZE,))
    wait_for(lambda: decisions() == expected)
    assert decisions() == expected


BAD_POLICIES: list[tuple[str, Callable[[str], str], str]] = [
    ("yaml", lambda t: t + "groups: [unclosed\n", r"policy\.yaml:\d+: "),
    ("schema", lambda t: t.replace("    unmask: []\n", "    unmask: []\n    colour: red\n", 1),
     r"policy\.yaml:\d+: groups\.billing"),
    ("database", lambda t: re.sub(r"(?m)^database: .*$", "database: elsewhere", t),
     r"policy\.yaml:\d+: database: the policy is for database 'elsewhere'"),
    ("identity", lambda t: re.sub(r"(?m)^identity:\n(?:  .*\n)+", "", t),
     r"policy\.yaml:1: identity: missing"),
    ("jwks", lambda t: re.sub(r"jwks: .*", "jwks: http://idp.example/jwks.json", t),
     r"policy\.yaml:\d+: identity\.jwks: .*https"),
]


@pytest.mark.parametrize(("case", "edit", "reason"), BAD_POLICIES,
                         ids=[case for case, _, _ in BAD_POLICIES])
def test_a_bad_policy_keeps_the_old_one_and_says_why(
        live: Live, caplog: pytest.LogCaptureFixture, case: str,
        edit: Callable[[str], str], reason: str) -> None:
    caplog.set_level(logging.INFO)
    server = live.proxy.server
    first = server.policy_hash
    opened = live.proxy.connect("agent-bad1", "research")
    live.write(lambda t: edit(allow_size(t)))  # would allow the call, if it loaded
    assert not live.reload()
    assert server.reload_counts == {"failed": 1}
    assert server.last_reload_error is not None
    assert re.search(reason, server.last_reload_error), server.last_reload_error
    assert server.policy_hash == first
    # every session, old and new, still works under the old rules
    fresh = live.proxy.connect("agent-bad2", "research")
    assert not may_size(fresh) and not may_size(opened)
    assert fresh.execute("SELECT count(*) FROM patients").fetchone() is not None
    assert versions(live.db, session_of(fresh)) == {session_of(fresh): first}
    failed, = events(caplog, "reload_failed")
    assert failed.levelno == logging.WARNING
    assert failed.reason == server.last_reload_error  # type: ignore[attr-defined]
    assert json.loads(logs.JsonLines().format(failed))["reason"] == server.last_reload_error
    # fixed: the next reload takes it
    second = live.write(allow_size)
    assert live.reload()
    assert server.reload_counts == {"failed": 1, "ok": 1}
    assert server.last_reload_error is None and server.policy_hash == second
    reloaded, = events(caplog, "policy_reloaded")
    assert reloaded.policy_hash == second  # type: ignore[attr-defined]
    with live.proxy.connect("agent-bad3", "research") as conn:
        assert may_size(conn)
    fresh.close()
    opened.close()


def test_a_jwks_without_usable_keys_fails_the_reload(live: Live, tmp_path: Path) -> None:
    empty = tmp_path / "empty-jwks.json"
    empty.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    live.write(lambda t: re.sub(r"jwks: .*", f"jwks: {empty}", t))
    assert not live.reload()
    assert "identity.jwks: JWKS has no usable signature keys" in str(
        live.proxy.server.last_reload_error)
    with live.proxy.connect("agent-jw", "billing", clinic_id=1) as conn:  # the old keys
        conn.execute("SELECT 1")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def served_certificate(port: int) -> bytes:
    """The certificate the proxy presents to a client that asks for TLS (SSLRequest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_tls_certificate_is_read_again_and_a_bad_pair_keeps_the_old(
        live: Live, tmp_path: Path) -> None:
    server = live.proxy.server
    port = live.proxy.port
    original = served_certificate(port)
    tls = psycopg.connect(live.proxy.dsn("agent-tls1", "billing", sslmode="require",
                                         clinic_id=1), autocommit=True)
    cert, key, der = _self_signed(tmp_path, "renewed")
    _, other_key, _ = _self_signed(tmp_path, "other")
    shutil.copy(cert, live.tls_cert)
    shutil.copy(other_key, live.tls_key)  # a pair that does not match
    assert not live.reload()
    assert "key values mismatch" in str(server.last_reload_error)
    assert served_certificate(port) == original
    live.tls_cert.write_text("not a certificate\n")
    assert not live.reload()
    assert "TLS certificate" in str(server.last_reload_error)
    assert served_certificate(port) == original
    shutil.copy(key, live.tls_key)
    shutil.copy(cert, live.tls_cert)
    assert live.reload()
    assert served_certificate(port) == der != original
    with psycopg.connect(live.proxy.dsn("agent-tls2", "billing", sslmode="require",
                                        clinic_id=1), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert tls.execute("SELECT 1").fetchone() == (1,)  # the session before the renewal
    tls.close()
    assert server.reload_counts == {"failed": 2, "ok": 1}


@dataclass
class Client:
    """One agent's loop: sessions of ``per_session`` statements until told to stop."""

    index: int
    statements: int = 0
    sessions: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    error: BaseException | None = None


def test_reload_under_load_drops_no_session_and_loses_no_statement(live: Live) -> None:
    """Eight clients run reads, writes and transactions through the proxy while it reloads
    ten times (the policy alternating between two versions): every statement is answered,
    no session ends early, and once the drain caught up the audit trail holds exactly the
    statements that ran, each session with the version it started under."""
    server = live.proxy.server
    first = server.policy_hash
    second = hashlib.sha256(
        write_clinic_policy(live.policy.with_suffix(".probe"), live.db.name,
                            allow_size).read_bytes()).hexdigest()
    live.write()
    stop = threading.Event()
    clients = [Client(i) for i in range(8)]

    def run(client: Client) -> None:
        try:
            while not stop.is_set():
                with live.proxy.connect(f"agent-load{client.index}", "billing",
                                        clinic_id=1) as conn:
                    client.sessions.append(session_of(conn))
                    client.statements += 1
                    for n in range(20):
                        started = time.monotonic()
                        if n % 4 == 3:  # BEGIN, INSERT, COMMIT: three records
                            with conn.transaction():
                                conn.execute("INSERT INTO claims (patient_id, amount, code) "
                                             "SELECT id, 1, 'R01' FROM patients ORDER BY id "
                                             "LIMIT 1")
                            client.statements += 3
                        else:
                            row = conn.execute("SELECT count(*) FROM claims").fetchone()
                            assert row is not None
                            client.statements += 1
                        client.latencies.append(time.monotonic() - started)
        except BaseException as exc:
            client.error = exc

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    timings = []
    try:
        for turn in range(10):
            time.sleep(0.3)
            live.write(allow_size if turn % 2 == 0 else None)
            started = time.monotonic()
            assert live.reload(), server.last_reload_error
            timings.append(time.monotonic() - started)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert [c.error for c in clients] == [None] * len(clients)
    assert server.reload_counts == {"ok": 10}
    executed = sum(c.statements for c in clients)
    sessions = [s for c in clients for s in c.sessions]
    assert executed > 500 and len(sessions) > 16

    def recorded() -> int:
        return int(live.db.execute("SELECT count(*) FROM audit.statements WHERE agent LIKE "
                                   "'agent-load%'")[0][0])
    assert wait_for(lambda: recorded() >= executed, timeout=30)
    assert recorded() == executed
    def closed() -> list[tuple[Any, ...]] | None:
        rows = live.db.execute(
            "SELECT session_id::text, outcome, end_reason, policy_hash FROM audit.sessions "
            "WHERE agent LIKE 'agent-load%'")
        return rows if len(rows) == len(sessions) and all(
            r[1] == "closed" for r in rows) else None
    rows = wait_for(closed, timeout=30)
    assert rows, "every session recorded and closed"
    assert {r[2] for r in rows} == {"client terminated the session"}  # none ended early
    assert {r[3] for r in rows} == {first, second}  # sessions began under both versions
    latencies = sorted(x for c in clients for x in c.latencies)
    print(f"\nreload under load: {executed} statements in {len(sessions)} sessions, 10 "
          f"reloads of {statistics.median(timings) * 1000:.1f} ms (median), statement "
          f"p50 {statistics.median(latencies) * 1000:.2f} ms, max {latencies[-1] * 1000:.1f} ms")


def test_reloads_one_at_a_time(live: Live) -> None:
    """Ten SIGHUPs at once (the handler starts a reload for each): they run one after the
    other and all succeed."""
    server = live.proxy.server

    async def many() -> list[bool]:
        import asyncio

        return list(await asyncio.gather(*(server.reload() for _ in range(10))))
    assert live.proxy.call(many()) == [True] * 10
    assert server.reload_counts == {"ok": 10}


# -- the service password ------------------------------------------------------------------------
GROUP_ROLES = ("billing", "research", "clinician")


@pytest.fixture
def scram(applied_clinic: Database) -> Iterator[Database]:
    """The test database checks passwords (scram-sha-256) for every role but the superuser,
    as a production pg_hba.conf does for the proxy's logins (the cluster's other databases
    keep trust authentication)."""
    hba = applied_clinic.cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    name = applied_clinic.name
    hba.write_text(f"host {name} postgres 127.0.0.1/32 trust\n"
                   f"host {name} all 127.0.0.1/32 scram-sha-256\n" + original)
    set_service_password(applied_clinic, "first-secret")
    applied_clinic.execute("SELECT pg_reload_conf()")

    def refused() -> bool:
        try:
            psycopg.connect(applied_clinic.dsn_as("policyc_proxy"), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            return "password" in str(exc)
        return False
    assert wait_for(refused), "pg_hba.conf was not reloaded"
    try:
        yield applied_clinic
    finally:
        hba.write_text(original)
        applied_clinic.execute("SELECT pg_reload_conf()")


def set_service_password(db: Database, password: str) -> None:
    """What ``policyc service-password`` does: the service role's new password, copied to
    every group role."""
    with db.connect() as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE policyc_proxy PASSWORD {}").format(
            psycopg.sql.Literal(password)))
        for role in GROUP_ROLES:
            conn.execute("SELECT policyc._copy_credential(%s, 'policyc_proxy')", (role,))


def test_a_rotated_service_password_is_read_again_when_the_database_refuses_the_old(
        scram: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(reloading, "PASSWORD_REREAD_SECONDS", 2.0)
    secret, reads = tmp_path / "secret", tmp_path / "reads"
    secret.write_text("first-secret\n")
    command = f"sh -c 'echo . >> {reads}; cat {secret}'"  # counts how often it runs
    dsn = scram.dsn_as("policyc_proxy")
    policy = write_clinic_policy(tmp_path / "policy.yaml", scram.name)
    with run_proxy(load_policy(policy), dsn, tmp_path / "spool",
                   upstream=parse_upstream(dsn, password_command=command),
                   password_command=command) as proxy:
        def read_count() -> int:
            return len(reads.read_text().splitlines())
        started_reads = read_count()
        old = proxy.connect("agent-pw1", "billing", clinic_id=1)
        assert old.execute("SELECT count(*) FROM claims").fetchone() is not None

        # rotation: the secret manager first, then the database (policyc service-password)
        secret.write_text("second-secret\n")
        set_service_password(scram, "second-secret")
        new = proxy.connect("agent-pw2", "billing", clinic_id=1)  # 28P01, read, retried
        assert new.execute("SELECT count(*) FROM claims").fetchone() is not None
        assert read_count() == started_reads + 1
        assert proxy.server.config.upstream.password == "second-secret"
        assert len(events(caplog, "service_password_changed")) == 1
        assert old.execute("SELECT 1").fetchone() == (1,)  # a session open stays open

        # the proxy's own connections reconnect with the new password too
        scram.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      "datname = current_database() AND usename = 'policyc_proxy'")
        for _ in range(3):
            new.execute("SELECT count(*) FROM claims")
        sid = session_of(new)
        assert wait_for(lambda: scram.execute(
            "SELECT count(*) FROM audit.statements WHERE session_id = %s", (sid,)) == [(5,)],
            timeout=20)
        with proxy.connect("agent-pw3", "billing", clinic_id=1) as third:  # audit open, too
            assert third.execute("SELECT 1").fetchone() == (1,)

        # a reload reads a new password the database does not take yet: the old one stays
        time.sleep(2.1)
        secret.write_text("third-secret\n")
        assert proxy.call(proxy.server.reload())
        assert proxy.server.config.upstream.password == "second-secret"
        assert len(events(caplog, "service_password_pending")) == 1
        with proxy.connect("agent-pw4", "billing", clinic_id=1) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        set_service_password(scram, "third-secret")  # now the database does
        with proxy.connect("agent-pw5", "billing", clinic_id=1) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert proxy.server.config.upstream.password == "third-secret"

        # the database's password changed without the source: a burst of logins reads the
        # source once per PASSWORD_REREAD_SECONDS, and each is refused
        time.sleep(2.1)
        set_service_password(scram, "fourth-secret")
        before = read_count()
        failures: list[BaseException] = []

        def attempt(i: int) -> None:
            try:
                psycopg.connect(proxy.dsn(f"agent-pw-burst{i}", "billing", clinic_id=1)).close()
            except psycopg.OperationalError as exc:
                failures.append(exc)
        burst = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join(30)
        assert len(failures) == 6
        assert all("the database refused the session" in str(f) for f in failures)
        assert read_count() == before + 1
        old.close()
        new.close()
    assert scram.execute("SELECT count(*) FROM audit.sessions WHERE reason = "
                         "'upstream_refused' AND agent LIKE 'agent-pw-burst%'") == [(6,)]
    text = "\n".join(logs.JsonLines().format(r) for r in caplog.records)
    for word in ("first-secret", "second-secret", "third-secret", "fourth-secret"):
        assert word not in text
