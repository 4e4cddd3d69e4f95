"""No agent can starve the others or the proxy, and agents cannot watch each other through the
database (issue #11, classes 8 and 7): the proxy's caps and login deadline, tried with real
sockets and clients; the group roles' CONNECTION LIMIT, timeouts and track_activities as apply
sets them, tried as the group role; and the DBA's timeout ceilings (docs/limits.md)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, clinic_policy
from policyc.apply import apply_policy
from policyc.plan import make_plan
from policyc.policy.model import GroupLimits, Policy
from policyc.proxy.ceilings import CeilingsUnavailable, session_timeout_ceilings, timeout_ms
from proxyharness import RunningProxy, run_proxy, wait_for

SECRET = "secret-literal-Jane-Roe-F32.9"


def _with_limits(policy: Policy, **limits: GroupLimits) -> Policy:
    groups = tuple(dataclasses.replace(g, limits=limits[g.name]) if g.name in limits else g
                   for g in policy.groups)
    return dataclasses.replace(policy, groups=groups)


def _role(db: Database, role: str) -> tuple[int, list[str]]:
    rows = db.execute("SELECT rolconnlimit, coalesce(rolconfig, '{}') FROM pg_roles "
                      "WHERE rolname = %s", (role,))
    return rows[0][0], sorted(rows[0][1])


def _apply(db: Database, policy: Policy) -> None:
    with db.connect() as conn:
        apply_policy(conn, policy)


def _plan_actions(db: Database, policy: Policy) -> dict[str, str]:
    with db.connect() as conn:
        return {c.key: c.action for c in make_plan(conn, policy).changes}


# ---- apply: CONNECTION LIMIT, timeouts, track_activities ---------------------------------


def test_apply_sets_connection_limit_timeouts_and_track_activities(clinic_db: Database) -> None:
    policy = _with_limits(clinic_policy(clinic_db.name), clinician=GroupLimits(
        connections=3, connections_per_agent=1, statement_timeout=30, lock_timeout=5))
    _apply(clinic_db, policy)
    limit, config = _role(clinic_db, "clinician")
    assert limit == 3
    assert config == ["lock_timeout=5s", "search_path=clinician", "statement_timeout=30s",
                      "track_activities=off"]
    for group in ("billing", "research"):
        assert _role(clinic_db, group) == (-1, [f"search_path={group}", "track_activities=off"])
    assert _plan_actions(clinic_db, policy) == {}  # a re-apply is a no-op

    # the session starts with them (the role's settings outrank the server's)
    with clinic_db.connect("clinician") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SHOW track_activities").fetchone() == ("off",)

    # a changed policy updates the role
    changed = _with_limits(policy, clinician=GroupLimits(connections=5, statement_timeout=60))
    assert _plan_actions(clinic_db, changed) == {"role:clinician": "update"}
    _apply(clinic_db, changed)
    assert _role(clinic_db, "clinician") == (5, [
        "search_path=clinician", "statement_timeout=60s", "track_activities=off"])
    assert _plan_actions(clinic_db, changed) == {}


def test_dba_timeouts_the_policy_leaves_alone_are_kept_and_no_drift(clinic_db: Database) -> None:
    policy = _with_limits(clinic_policy(clinic_db.name),
                          clinician=GroupLimits(statement_timeout=30))
    _apply(clinic_db, policy)
    # the DBA sets what the policy does not set: not drift, and apply keeps it
    clinic_db.execute("ALTER ROLE clinician SET lock_timeout = '2s'")
    clinic_db.execute("ALTER ROLE research SET idle_in_transaction_session_timeout = '1min'")
    clinic_db.execute(f'ALTER ROLE research IN DATABASE "{clinic_db.name}" '
                      "SET statement_timeout = '90s'")
    assert _plan_actions(clinic_db, policy) == {}
    # a managed setting changed by hand is drift; so is anything else set on the role
    clinic_db.execute("ALTER ROLE clinician SET statement_timeout = 0")
    clinic_db.execute("ALTER ROLE research SET work_mem = '64MB'")
    clinic_db.execute(f'ALTER ROLE billing IN DATABASE "{clinic_db.name}" '
                      "SET track_activities = on")
    assert _plan_actions(clinic_db, policy) == {
        "role:clinician": "drift", "role:research": "drift", "role:billing": "drift"}
    _apply(clinic_db, policy)
    assert _role(clinic_db, "clinician")[1] == [
        "lock_timeout=2s", "search_path=clinician", "statement_timeout=30s",
        "track_activities=off"]
    assert _role(clinic_db, "research")[1] == [
        "idle_in_transaction_session_timeout=1min", "search_path=research",
        "track_activities=off"]
    in_database = clinic_db.execute(
        "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r "
        "ON r.oid = s.setrole WHERE s.setdatabase = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1")
    assert in_database == [("research", ["statement_timeout=90s"])]
    assert _plan_actions(clinic_db, policy) == {}
    with clinic_db.connect("billing") as conn:
        assert conn.execute("SHOW track_activities").fetchone() == ("off",)


# ---- the database fence: no agent reads another agent's query text -----------------------


@contextlib.contextmanager
def _blocked_statement(db: Database, connect: Any, statement: str) -> Iterator[int]:
    """Run ``statement`` on a connection from ``connect()`` while a superuser holds an
    exclusive lock on public.patients, so it waits (no timing); yields its backend pid."""
    admin = db.connect(autocommit=False)
    admin.execute("LOCK TABLE public.patients IN ACCESS EXCLUSIVE MODE")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect() as conn:
                conn.execute(statement)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        pid = wait_for(lambda: db.execute(
            "SELECT pid FROM pg_locks WHERE relation = 'public.patients'::regclass "
            "AND NOT granted"), timeout=30)
        assert pid, "the statement never waited for the lock"
        yield int(pid[0][0])
    finally:
        admin.rollback()
        admin.close()
        worker.join(30)
    assert not errors, errors


def _activity_texts(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(v) for row in conn.execute(
        "SELECT query, state, backend_type FROM pg_stat_activity").fetchall() for v in row]


def test_group_role_cannot_read_another_sessions_query_text(applied_clinic: Database) -> None:
    watcher = applied_clinic.connect("clinician")
    statement = f"SELECT count(*) FROM clinician.patients WHERE full_name = '{SECRET}'"
    with _blocked_statement(applied_clinic, lambda: applied_clinic.connect("clinician"),
                            statement) as pid:
        texts = _activity_texts(watcher)
        assert not any(SECRET in t for t in texts)
        row = watcher.execute("SELECT query, state, query_id FROM pg_stat_activity "
                              "WHERE pid = %s", (pid,)).fetchone()
        assert row == ("", "disabled", None)
    watcher.close()

    # the setting is superuser-only: the group role cannot turn it back on, by any route
    with applied_clinic.connect("clinician") as conn:
        for attack in ("SET track_activities = on",
                       "SELECT set_config('track_activities', 'on', false)",
                       "ALTER ROLE clinician SET track_activities = on",
                       "ALTER ROLE clinician RESET track_activities",
                       "SET compute_query_id = on"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
        conn.execute("RESET ALL")
        conn.execute("DISCARD ALL")
        assert conn.execute("SHOW track_activities").fetchone() == ("off",)
        # a role may reset its own settings, but RESET ALL skips the superuser-only ones
        conn.execute("ALTER ROLE clinician RESET ALL")
    with applied_clinic.connect("clinician") as conn:
        assert conn.execute("SHOW track_activities").fetchone() == ("off",)

    # the attack is real: without the role setting the same watcher reads the literal
    applied_clinic.execute("ALTER ROLE clinician RESET track_activities")
    watcher = applied_clinic.connect("clinician")
    with _blocked_statement(applied_clinic, lambda: applied_clinic.connect("clinician"),
                            statement):
        assert any(SECRET in t for t in _activity_texts(watcher))
    watcher.close()
    assert _plan_actions(applied_clinic, clinic_policy(applied_clinic.name)) == {
        "role:clinician": "drift"}


def test_agents_through_the_proxy_do_not_see_each_others_query_text(
        applied_clinic: Database, proxy: RunningProxy) -> None:
    statement = f"SELECT count(*) FROM patients WHERE full_name = '{SECRET}'"
    with _blocked_statement(applied_clinic,
                            lambda: proxy.connect("agent-1", "clinician", clinic_id=1),
                            statement), proxy.connect("agent-2", "clinician", clinic_id=2) as conn:
        try:
            texts = _activity_texts(conn)
        except psycopg.errors.InsufficientPrivilege:
            texts = []  # the proxy's own fence refuses the view: as good
        assert not any(SECRET in t for t in texts)
        # a role may change its own role settings in the database; never through the proxy
        for attack in ("ALTER ROLE clinician SET statement_timeout = 0",
                       "ALTER ROLE clinician RESET ALL",
                       "ALTER ROLE CURRENT_USER SET lock_timeout = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)


# ---- the DBA's timeout ceilings ------------------------------------------------------------


TIME_VALUES = ["0", "1500", "30s", "5min", "1h", "1d", "250ms", "1.5s", "2500us", "3500us",
               " 7 s ", "0x10", "010", "1e3", "0.0001s", "2.5ms", "1.5min"]


def test_timeout_values_read_as_postgresql_does(db: Database) -> None:
    with db.connect() as conn:
        for value in TIME_VALUES:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (value,))
            server = conn.execute("SELECT setting::int FROM pg_settings "
                                  "WHERE name = 'lock_timeout'").fetchone()
            assert server is not None
            assert timeout_ms(value) == server[0], value


@pytest.mark.parametrize("value", ["", "abc", "5 fortnights", "-1s", "3000000000"])
def test_timeout_values_not_understood_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        timeout_ms(value)


def test_session_timeout_ceilings_follow_the_servers_precedence(clinic_db: Database) -> None:
    policy = _with_limits(clinic_policy(clinic_db.name),
                          clinician=GroupLimits(statement_timeout=30))
    _apply(clinic_db, policy)

    async def ceilings(role: str, user: str = "policyc_proxy") -> dict[str, int]:
        async with await psycopg.AsyncConnection.connect(clinic_db.dsn_as(user)) as conn:
            return await session_timeout_ceilings(conn, role)

    assert asyncio.run(ceilings("clinician")) == {
        "statement_timeout": 30_000, "lock_timeout": 0, "idle_in_transaction_session_timeout": 0}
    assert asyncio.run(ceilings("research"))["statement_timeout"] == 0
    # database, role and role-in-database levels, most specific first, as the server does
    clinic_db.execute(f'ALTER DATABASE "{clinic_db.name}" SET lock_timeout = \'4s\'')
    clinic_db.execute(f'ALTER DATABASE "{clinic_db.name}" SET statement_timeout = \'10min\'')
    clinic_db.execute("ALTER ROLE research SET idle_in_transaction_session_timeout = '2min'")
    clinic_db.execute(f'ALTER ROLE clinician IN DATABASE "{clinic_db.name}" '
                      "SET statement_timeout = '20s'")
    assert asyncio.run(ceilings("clinician")) == {
        "statement_timeout": 20_000, "lock_timeout": 4000,
        "idle_in_transaction_session_timeout": 0}
    assert asyncio.run(ceilings("research")) == {
        "statement_timeout": 600_000, "lock_timeout": 4000,
        "idle_in_transaction_session_timeout": 120_000}
    # they are what a fresh session of the role starts with
    for role in ("clinician", "research"):
        with clinic_db.connect(role) as conn:
            started = dict(conn.execute(
                "SELECT name, setting::int FROM pg_settings WHERE name = ANY(%s)",
                (["statement_timeout", "lock_timeout",
                  "idle_in_transaction_session_timeout"],)).fetchall())
        assert asyncio.run(ceilings(role)) == started
    # read as any role (the service role here was a superuser-free login)
    assert asyncio.run(ceilings("clinician", user="research"))["statement_timeout"] == 20_000


def test_session_timeout_ceilings_fail_closed(clinic_db: Database) -> None:
    async def broken() -> None:
        async with await psycopg.AsyncConnection.connect(clinic_db.dsn) as conn:
            await conn.execute("SELECT 1/0")  # an aborted transaction: the read fails
    with pytest.raises(psycopg.errors.DivisionByZero):
        asyncio.run(broken())

    async def in_failed_transaction() -> dict[str, int]:
        async with await psycopg.AsyncConnection.connect(clinic_db.dsn) as conn:
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1/0")
            return await session_timeout_ceilings(conn, "clinician")

    with pytest.raises(CeilingsUnavailable):
        asyncio.run(in_failed_transaction())


# ---- the proxy's caps and its login deadline, with real sockets and clients ----------------


def _startup_packet(database: str, user: str = "agent-7") -> bytes:
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!ii", 8 + len(params), 196608) + params


GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _connect_raw(proxy: RunningProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=20)


@contextlib.contextmanager
def _proxy(db: Database, tmp_path: Path, policy: Policy | None = None,
           **config: Any) -> Iterator[RunningProxy]:
    with run_proxy(policy or clinic_policy(db.name), db.dsn_as("policyc_proxy"),
                   tmp_path / "spool", **config) as running:
        yield running


def _count(proxy: RunningProxy, name: str) -> int:
    return proxy.server.connection_counts().get(name, 0)


def _refusals(db: Database) -> list[tuple[Any, ...]]:
    return db.execute("SELECT reason, agent, group_name FROM audit.sessions "
                      "WHERE outcome = 'refused' ORDER BY started_at")


def test_total_and_pending_connection_caps(applied_clinic: Database, tmp_path: Path) -> None:
    with _proxy(applied_clinic, tmp_path, max_connections=3, max_pending_logins=2) as proxy:
        idle = [_connect_raw(proxy) for _ in range(2)]
        assert wait_for(lambda: _count(proxy, "pending") == 2)
        # a third connection that has not logged in is refused at once, before it sends a byte
        with _connect_raw(proxy) as third:
            answer = _read_all(third)
        assert b"C53300\0" in answer and b"too many connections waiting to log in" in answer
        with pytest.raises(psycopg.OperationalError, match="waiting to log in"):
            psycopg.connect(proxy.dsn("agent-7", "billing", clinic_id=1))
        for sock in idle:
            sock.close()
        assert wait_for(lambda: _count(proxy, "open") == 0)
        # sessions no longer count as pending: two of them and one idle socket fill the proxy
        with proxy.connect("agent-7", "billing", clinic_id=1) as one, \
                proxy.connect("agent-8", "research") as two:
            lurker = _connect_raw(proxy)
            assert wait_for(lambda: _count(proxy, "open") == 3)
            with _connect_raw(proxy) as fourth:
                answer = _read_all(fourth)
            assert b"C53300\0" in answer and b"too many connections to this proxy" in answer
            lurker.close()
            assert wait_for(lambda: _count(proxy, "open") == 2)
            with proxy.connect("agent-9", "clinician", clinic_id=1) as three:
                for conn in (one, two, three):
                    assert conn.execute("SELECT 1").fetchone() == (1,)
        refused = wait_for(lambda: {r[0] for r in _refusals(applied_clinic)} >= {
            "too_many_pending_logins", "too_many_connections"} and _refusals(applied_clinic))
        assert {r[0] for r in refused} >= {"too_many_pending_logins", "too_many_connections"}


def test_sessions_per_agent_and_per_group(applied_clinic: Database, tmp_path: Path) -> None:
    policy = _with_limits(clinic_policy(applied_clinic.name),
                          billing=GroupLimits(connections=3, connections_per_agent=2))
    with _proxy(applied_clinic, tmp_path, policy, max_sessions_per_agent=3) as proxy, \
            contextlib.ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(proxy.connect("agent-7", "billing", clinic_id=1))
        # one agent, one token: the group's per-agent cap
        token = proxy.token("agent-7", "billing", clinic_id=1)
        with pytest.raises(psycopg.OperationalError, match="too many sessions for this agent in "
                           "group billing"):
            psycopg.connect(proxy.dsn("agent-7", token=token))
        # the same agent in another group still counts against the proxy-wide cap
        stack.enter_context(proxy.connect("agent-7", "research"))
        with pytest.raises(psycopg.OperationalError, match=r"sessions for this agent \(limit 3"):
            psycopg.connect(proxy.dsn("agent-7", "clinician", clinic_id=1))
        # the group's cap, whoever the agent
        stack.enter_context(proxy.connect("agent-8", "billing", clinic_id=2))
        with pytest.raises(psycopg.OperationalError, match="too many sessions for group billing"):
            psycopg.connect(proxy.dsn("agent-9", "billing", clinic_id=2))
        # another group's agent is not starved
        with proxy.connect("agent-9", "clinician", clinic_id=2) as other:
            assert other.execute("SELECT 1").fetchone() == (1,)
        refused = wait_for(lambda: len(_refusals(applied_clinic)) >= 3 and
                           _refusals(applied_clinic))
        assert refused == [("too_many_connections", "agent-7", "billing"),
                           ("too_many_connections", "agent-7", "clinician"),
                           ("too_many_connections", "agent-9", "billing")]
        stack.close()
        assert wait_for(lambda: _count(proxy, "open") == 0)
        assert proxy.server.connection_counts().get("group:billing") is None
        with proxy.connect("agent-7", "billing", clinic_id=1) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)


def test_database_connection_limit_holds_across_proxies(applied_clinic: Database,
                                                        tmp_path: Path) -> None:
    limited = _with_limits(clinic_policy(applied_clinic.name),
                           billing=GroupLimits(connections=1))
    _apply(applied_clinic, limited)
    # a second proxy (or one with another policy) does not know the others' sessions: the
    # role's CONNECTION LIMIT does, and its refusal reaches the agent as 53300
    with _proxy(applied_clinic, tmp_path, clinic_policy(applied_clinic.name)) as proxy, \
            proxy.connect("agent-7", "billing", clinic_id=1) as first:
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            psycopg.connect(proxy.dsn("agent-8", "billing", clinic_id=1))
        assert first.execute("SELECT 1").fetchone() == (1,)
        refused = wait_for(lambda: _refusals(applied_clinic))
        assert refused == [("too_many_connections", "agent-8", "billing")]


def test_unauthenticated_clients_cannot_make_the_proxy_buffer(applied_clinic: Database,
                                                              tmp_path: Path) -> None:
    with _proxy(applied_clinic, tmp_path, max_password_bytes=1024) as proxy:
        startup = _startup_packet(proxy.database)
        huge = 60 << 20
        attacks = {
            # announced, never sent: each is refused on its header
            "startup packet": struct.pack("!ii", huge, 196608),
            "query before login": startup + b"Q" + struct.pack("!i", huge),
            "password": startup + b"p" + struct.pack("!i", huge),
            "password over the cap": startup + b"p" + struct.pack("!i", 1024 + 5),
            "copy data before login": startup + b"d" + struct.pack("!i", 5000),
        }
        for name, data in attacks.items():
            with _connect_raw(proxy) as sock:
                sock.sendall(data)
                answer = _read_all(sock)  # without our sending the body
            assert b"C08P01\0" in answer, name
        assert wait_for(lambda: _count(proxy, "open") == 0)
        # a token longer than the cap is refused the same way
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn("agent-7", "billing", clinic_id=1,
                                      padding="x" * 2000))
        # what a client pipelines behind its password is read with the session's limits
        token = proxy.token("agent-7", "billing", clinic_id=1).encode()
        password = b"p" + struct.pack("!i", 5 + len(token)) + token + b"\0"
        query = b"SELECT 'pipelined'\0"
        with _connect_raw(proxy) as sock:
            sock.sendall(startup)
            sock.recv(9)  # AuthenticationCleartextPassword
            sock.sendall(password + b"Q" + struct.pack("!i", 4 + len(query)) + query)
            answer = b""
            while b"pipelined" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        assert b"pipelined" in answer


def test_one_login_deadline_that_nothing_resets(applied_clinic: Database,
                                                tmp_path: Path) -> None:
    with _proxy(applied_clinic, tmp_path, login_timeout=1.0, tls=False) as proxy:
        # encryption requests: each at most once, and they do not restart the clock
        with _connect_raw(proxy) as sock:
            sock.sendall(GSSENC_REQUEST)
            assert sock.recv(1) == b"N"
            sock.sendall(GSSENC_REQUEST)
            assert b"C08P01\0" in _read_all(sock)
        with _connect_raw(proxy) as sock:
            sock.sendall(GSSENC_REQUEST)
            assert sock.recv(1) == b"N"
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"N"
            # then a startup packet a byte at a time, far slower than the deadline allows
            closed = False
            for byte in _startup_packet(proxy.database):
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.2)
                ready = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT) \
                    if _readable(sock) else b""
                if ready:
                    assert b"C57014\0" in _read_all(sock)
                    closed = True
                    break
            assert closed, "the proxy waited for a startup packet past its login deadline"
        # after the startup packet: the password a byte at a time; recorded as login_timeout
        token = proxy.token("agent-7", "billing", clinic_id=1).encode()
        password = b"p" + struct.pack("!i", 5 + len(token)) + token + b"\0"
        with _connect_raw(proxy) as sock:
            sock.sendall(_startup_packet(proxy.database))
            assert sock.recv(9)[:1] == b"R"
            answer = b""
            for byte in password:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.1)
                if _readable(sock):
                    answer = _read_all(sock)
                    break
            assert b"C57014\0" in answer and b"login timed out" in answer
        refused = wait_for(lambda: _refusals(applied_clinic))
        assert ("login_timeout", None, None) in refused
        assert wait_for(lambda: _count(proxy, "open") == 0)


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


# ---- timeouts through the proxy: every route, the policy's and the role's ceilings ---------


def test_timeouts_may_only_be_lowered_by_every_route(clinic_db: Database,
                                                     tmp_path: Path) -> None:
    policy = _with_limits(clinic_policy(clinic_db.name),
                          clinician=GroupLimits(statement_timeout=30))
    _apply(clinic_db, policy)
    # the DBA's own ceiling for research (no policy limit): the role setting
    clinic_db.execute("ALTER ROLE research SET lock_timeout = '20s'")
    with _proxy(clinic_db, tmp_path, policy) as proxy:
        with proxy.connect("agent-c", "clinician", clinic_id=1) as conn:
            conn.execute("SET statement_timeout = '10s'")
            with conn.transaction():  # PostgREST's per-request idiom
                assert conn.execute("SELECT set_config('statement_timeout', '5s', true)"
                                    ).fetchone() == ("5s",)
            for attempt, params in (("SET statement_timeout = '60s'", None),
                                    ("SET statement_timeout = 0", None),
                                    ("SELECT set_config('statement_timeout', '1min', true)", None),
                                    ("SELECT set_config('statement_timeout', %s, false)", ("1s",)),
                                    ("RESET statement_timeout; SET statement_timeout = '31s'",
                                     None)):
                with pytest.raises(psycopg.errors.InsufficientPrivilege,
                                   match="may only be lowered"):
                    conn.execute(attempt, params)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
        with proxy.connect("agent-r", "research") as conn:
            conn.execute("SET lock_timeout = '5s'")
            for attempt in ("SET lock_timeout = '1min'",
                            "SELECT set_config('lock_timeout', '21s', false)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege,
                                   match="may only be lowered"):
                    conn.execute(attempt)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("5s",)
        with pytest.raises(psycopg.OperationalError, match="may only be lowered"):
            psycopg.connect(proxy.dsn("agent-c", "clinician", clinic_id=1) +
                            " options='-c statement_timeout=0'")
