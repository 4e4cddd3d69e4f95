"""Attacks on the proxy: bad tokens, protocol abuse, escalations, expiry, cancel keys, and a
database restart mid-session. Each is tried with real clients and real sockets."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Database
from proxyharness import DEV_KEYS, RunningProxy, run_proxy, wait_for
from test_escalation import ATTACKS


def _login_error(proxy: RunningProxy, agent: str, token: str, **extra: str) -> psycopg.Error:
    dsn = proxy.dsn(agent, token=token)
    for key, value in extra.items():
        dsn += f" {key}={value}"
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn, connect_timeout=10)
    return caught.value


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(proxy: RunningProxy, **over: Any) -> dict[str, Any]:
    assert proxy.policy.identity is not None
    now = int(time.time())
    base = {"iss": proxy.policy.identity.issuer, "aud": proxy.policy.identity.audience,
            "sub": "mallory", "groups": ["billing-agents"], "iat": now, "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _signed(claims: dict[str, Any], **header: Any) -> str:
    key = (DEV_KEYS / "dev-signing-key.pem").read_bytes()
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "dev-1", **header})


def _bad_tokens(proxy: RunningProxy) -> dict[str, str]:
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    good = _signed(_claims(proxy))
    head, body, sig = good.split(".")
    return {
        "expired": _signed(_claims(proxy, iat=now - 7200, exp=now - 3600)),
        "not_yet_valid": _signed(_claims(proxy, nbf=now + 3600)),
        "wrong_issuer": _signed(_claims(proxy, iss="https://evil.example/")),
        "wrong_audience": _signed(_claims(proxy, aud="someone-else")),
        "alg_none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(proxy)) + ".",
        "hs256_with_public_key": _hs256(_claims(proxy), public_pem),
        "unknown_kid": _signed(_claims(proxy), kid="rotated-away"),
        "tampered_payload": head + "." + _b64(_claims(proxy, groups=["clinician-agents"])) +
                            "." + sig,
        "tampered_signature": head + "." + body + "." + ("A" if sig[0] != "A" else "B") + sig[1:],
        "missing_groups": _signed(_claims(proxy, groups=None)),
        "unmapped_group": _signed(_claims(proxy, groups=["interns"])),
        "garbage": "not-a-jwt",
    }


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "dev-1"})
    payload = _b64(claims)
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_bad_tokens_are_refused_and_recorded(applied_clinic: Database,
                                             proxy: RunningProxy) -> None:
    tokens = _bad_tokens(proxy)
    for name, token in tokens.items():
        error = _login_error(proxy, "mallory", token)
        assert "authentication failed" in str(error), name
        assert "mallory" not in str(error).replace('user "mallory"', "")
    refused = wait_for(lambda: len(applied_clinic.execute(
        "SELECT 1 FROM audit.sessions WHERE outcome = 'refused'")) >= len(tokens) and
        applied_clinic.execute("SELECT reason FROM audit.sessions WHERE outcome = 'refused'"))
    reasons = {r[0] for r in refused}
    assert {"expired", "not_yet_valid", "bad_issuer", "bad_audience", "alg_not_allowed",
            "unknown_kid", "bad_signature", "missing_groups", "no_matching_group",
            "malformed"} <= reasons, reasons


def test_user_must_match_token_subject(proxy: RunningProxy) -> None:
    token = proxy.token("agent-7", "billing", clinic_id=1)
    error = _login_error(proxy, "agent-8", token)
    assert "authentication failed" in str(error)


def test_tls_is_required_off_loopback_and_for_non_loopback_policy(
    applied_clinic: Database, tmp_path: Any
) -> None:
    from conftest import clinic_policy
    from proxyharness import run_proxy

    with run_proxy(clinic_policy(applied_clinic.name), applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool", allow_plaintext_loopback=False) as strict:
        error = _login_error(strict, "agent-7", strict.token("agent-7", "billing"))
        assert "TLS is required" in str(error)
        with psycopg.connect(strict.dsn("agent-7", "billing", sslmode="require"),
                             autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("billing",)
            assert conn.info.pgconn.ssl_in_use


def test_wrong_database_and_forbidden_startup_settings(proxy: RunningProxy) -> None:
    token = proxy.token("agent-7", "billing")
    error = _login_error(proxy, "agent-7", token, options="'-c search_path=public'")
    assert "search_path may list only group billing's own schema" in str(error)
    error = _login_error(proxy, "agent-7", token, options="'-c work_mem=2GB'")
    assert "work_mem may be at most 65536 kB" in str(error)
    # the group's own schema (and the catalog) are fine as startup options too
    with psycopg.connect(proxy.dsn("agent-7", token=token) +
                         " options='-c search_path=pg_catalog,billing -c work_mem=4MB'",
                         autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,billing",)
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
    dsn = proxy.dsn("agent-7", token=token).replace(f"dbname={proxy.database}", "dbname=postgres")
    with pytest.raises(psycopg.OperationalError, match="not served here"):
        psycopg.connect(dsn)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_database_escalations_through_the_proxy(proxy: RunningProxy, attack: str) -> None:
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        visible = conn.execute("SELECT count(*) FROM patients").fetchone()
        for statement in ATTACKS[attack]:
            with contextlib.suppress(psycopg.Error):
                conn.execute(statement.encode())
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        assert conn.execute("SELECT current_user, session_user").fetchone() == (
            "billing", "billing")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT count(*) FROM public.patients")
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == visible


def test_token_expiry_ends_the_session(proxy: RunningProxy) -> None:
    token = proxy.token("agent-7", "billing", ttl=2, clinic_id=1)
    with psycopg.connect(proxy.dsn("agent-7", token=token), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError, match="token has expired"):
            conn.execute("SELECT 1")


@pytest.fixture
def sleepy_proxy(proxy: RunningProxy, applied_clinic: Database,
                 tmp_path: Path) -> Iterator[RunningProxy]:
    """A proxy whose billing group may call pg_sleep (a side-effect function, refused unless
    the policy lists it): a statement that runs long enough to be cancelled."""
    policy = proxy.policy
    groups = tuple(dataclasses.replace(g, functions=("pg_catalog.pg_sleep",))
                   if g.name == "billing" else g for g in policy.groups)
    with run_proxy(dataclasses.replace(policy, groups=groups),
                   applied_clinic.dsn_as("policyc_proxy"), tmp_path / "sleepy") as running:
        yield running


def test_cancel_reaches_the_right_backend_only(sleepy_proxy: RunningProxy) -> None:
    proxy = sleepy_proxy
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        def cancel_soon() -> None:
            time.sleep(0.5)
            conn.cancel_safe()

        thread = threading.Thread(target=cancel_soon)
        thread.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        thread.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # a cancel with a forged key (the proxy-issued pid, a wrong key) does nothing
        pid = conn.pgconn.backend_pid

        def forge() -> None:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
                raw.sendall(struct.pack("!iiii", 16, 80877102, pid, 12345))

        thread = threading.Thread(target=forge)
        thread.start()
        cur = conn.execute("SELECT pg_sleep(1), 'not cancelled'")
        thread.join()
        assert cur.fetchone() == ("", "not cancelled")


def _raw(proxy: RunningProxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := raw.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _startup(proxy: RunningProxy) -> bytes:
    params = f"user\0agent-7\0database\0{proxy.database}\0\0".encode()
    return struct.pack("!ii", 8 + len(params), 196608) + params


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_startup_bytes_never_crash_the_proxy(proxy: RunningProxy, data: bytes) -> None:
    _raw(proxy, data)
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(b"QPBEDCSHXFdcfp?Z"), st.binary(max_size=40)),
                max_size=6), st.booleans())
def test_fuzzed_messages_after_login_never_crash_the_proxy(
    proxy: RunningProxy, messages: list[tuple[int, bytes]], truncate: bool
) -> None:
    token = proxy.token("agent-7", "billing", clinic_id=1)
    password = b"p" + struct.pack("!i", 4 + len(token) + 1) + token.encode() + b"\0"
    body = b"".join(bytes([t]) + struct.pack("!i", 4 + len(p)) + p for t, p in messages)
    if truncate and body:
        body = body[:-1]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(_startup(proxy))
        raw.recv(65536)  # AuthenticationCleartextPassword
        raw.sendall(password + body)
        raw.shutdown(socket.SHUT_WR)
        try:
            while raw.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    with proxy.connect("agent-9", "research") as conn:
        assert conn.execute("SELECT count(*) > 0 FROM patients").fetchone() == (True,)


def test_oversized_message_is_refused(proxy: RunningProxy) -> None:
    huge = b"Q" + struct.pack("!i", (64 << 20) + 100)
    answer = _raw(proxy, _startup(proxy) + huge)
    assert b"28000" in answer or b"08P01" in answer or b"R" in answer
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("SELECT '" + "x" * (2 << 20) + "'")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_concurrent_agents_of_different_groups(applied_clinic: Database,
                                               proxy: RunningProxy) -> None:
    results: dict[str, Any] = {}

    def work(agent: str, group: str, clinic: int) -> None:
        with proxy.connect(agent, group, clinic_id=clinic) as conn:
            for _ in range(20):
                count = conn.execute("SELECT count(*) FROM patients").fetchone()
            who = conn.execute("SELECT current_user, policyc.agent()").fetchone()
            results[agent] = (count, who)

    threads = [threading.Thread(target=work, args=(f"a{i}", g, 1 + i % 3))
               for i, g in enumerate(["billing", "research", "clinician"] * 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = applied_clinic.execute("SELECT count(*) FROM public.patients")[0][0]
    for i, group in enumerate(["billing", "research", "clinician"] * 3):
        count, who = results[f"a{i}"]
        assert who == (group, f"a{i}")
        if group == "research":
            assert count == (total,)
        else:
            assert count[0] < total
    query = ("SELECT agent, group_name, count(*) FROM audit.statements "
             "WHERE statement = 'SELECT count(*) FROM patients' GROUP BY 1, 2")
    rows = wait_for(lambda: sum(r[2] for r in applied_clinic.execute(query)) == 180 and
                    applied_clinic.execute(query))
    assert len(rows) == 9 and all(r[2] == 20 for r in rows)


@pytest.mark.slow
def test_database_restart_mid_session_gives_an_error_not_a_hang(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    conn = proxy.connect("agent-7", "billing", clinic_id=1)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    applied_clinic.cluster.restart()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert time.monotonic() - started < 10
    conn.close()
    with proxy.connect("agent-7", "billing", clinic_id=1) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
