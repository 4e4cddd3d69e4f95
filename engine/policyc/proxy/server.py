"""The proxy's listener: TLS negotiation, agent login (OIDC token as password), cancel
requests, and handing each accepted connection to a :class:`Session`.

One bad connection never hurts another: every connection runs in its own task and every
exception ends only that task, with an ErrorResponse when the client can still read one.

No client can starve the others (docs/limits.md): connections are capped in total, before
authentication, per agent and per group (each refusal FATAL 53300); before authentication only
startup packets and one password message are read, each refused on its length header when it
is too large, all under one deadline from accept that no retry resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from policyc.errors import PolicycError
from policyc.identity import (
    AgentIdentity,
    AuthenticationFailed,
    TokenVerifier,
    key_source_for,
    matches_user,
    resolve_group,
)
from policyc.identity.groups import StartupOptionsError, parse_startup_options
from policyc.policy.model import Group
from policyc.proxy.audit import AuditLog, AuditUnavailable
from policyc.proxy.audit.records import SessionRecord
from policyc.proxy.ceilings import CeilingsUnavailable, session_timeout_ceilings
from policyc.proxy.codec import (
    AUTHENTICATION_CLEARTEXT_PASSWORD,
    AUTHENTICATION_OK,
    READY_IDLE,
    BackendKeyData,
    CancelRequest,
    Frame,
    FrontendFramer,
    GSSENCRequest,
    ParameterStatus,
    PasswordMessage,
    ProtocolViolation,
    SSLRequest,
    StartupMessage,
    decode_frontend,
    decode_password,
    decode_startup,
    encryption_response,
    error_response,
)
from policyc.proxy.codec.framing import LoginFramer
from policyc.proxy.config import ProxyConfig, is_loopback
from policyc.proxy.holds import ApprovalBroker
from policyc.proxy.judge.cache import Judge
from policyc.proxy.judge.registry import registry_for_server_version
from policyc.proxy.judge.settings import (
    PINNED,
    PINNED_STARTUP,
    SETTABLE,
    setting_reason,
)
from policyc.proxy.session import Session
from policyc.proxy.upstream import UpstreamError, connect, send_cancel
from policyc.resources import sql_dir
from policyc.webhook import WebhookNotifier

log = logging.getLogger("policyc.proxy")
#: How long the DBA's timeout ceilings of a group role are trusted before being read again.
CEILINGS_SECONDS = 60.0


@functools.cache
def _rows_used_sql() -> str:
    return (sql_dir() / "proxy" / "rows_used.sql").read_text()


async def _server_version_num(config: ProxyConfig) -> int:
    """The upstream's ``server_version_num``, asked through the service role."""
    async with await psycopg.AsyncConnection.connect(config.upstream.conninfo(),
                                                     autocommit=True) as conn:
        row = await (await conn.execute("SHOW server_version_num")).fetchone()
    if row is None:
        raise PolicycError("the database did not say its version")
    return int(row[0])

TOO_MANY_CONNECTIONS = "53300"
LOGIN_TIMEOUT_SQLSTATE = "57014"  # PostgreSQL's own "canceling authentication due to timeout"
EARLY_RECORD_INTERVAL = 1.0  # seconds: refusals before a startup packet are recorded this often
CLIENT_READ_LIMIT = 128 << 10  # a client's StreamReader pauses its socket past twice this
IGNORED_STARTUP = {"user", "database", "options", "application_name", "client_encoding"}


class LoginRefused(PolicycError):
    """A login is refused; ``reason`` goes to the audit log, the message to the client."""

    def __init__(self, reason: str, message: str, sqlstate: str = "28000") -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


class _LoginTimedOut(Exception):
    """The login deadline passed before the client sent a StartupMessage."""


@dataclass
class _Slot:
    """One client connection's share of the caps, given back once when it ends."""

    pending: bool = True
    agent: str | None = None
    group: str | None = None


@dataclass
class _Live:
    session: Session
    key: bytes
    real_pid: int
    real_key: bytes


@dataclass
class ProxyServer:
    config: ProxyConfig
    verifier: TokenVerifier | None = None
    audit: AuditLog | None = None
    judge: Judge | None = None
    sessions: dict[int, _Live] = field(default_factory=dict)
    approvals: ApprovalBroker | None = None
    _server: asyncio.base_events.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # the caps' counters (docs/limits.md); changed only on the event loop, never across an await
    _open: int = 0
    _pending: int = 0
    _agents: Counter[str] = field(default_factory=Counter)
    _groups: Counter[str] = field(default_factory=Counter)
    _agent_groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    _refused: Counter[str] = field(default_factory=Counter)
    _early_recorded: dict[str, float] = field(default_factory=dict)
    # the DBA's timeout ceilings per group role, read through a connection of the proxy's own
    _ceilings: dict[str, tuple[float, dict[str, int]]] = field(default_factory=dict)
    _ceilings_conn: psycopg.AsyncConnection[Any] | None = None
    _ceilings_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _rows_left(self, agent: str, group: Group) -> int | None:
        """What is left of the agent's row budget (``approval.budget``) in its window, from
        what every proxy recorded; None when the group has no budget.  Raises
        CeilingsUnavailable when the trail cannot be read (the login is refused)."""
        budget = group.approval.budget
        if budget is None:
            return None
        async with self._service("the audit trail cannot be read") as conn:
            cursor = await conn.execute(
                _rows_used_sql(),
                {"agent": agent, "group": group.name, "seconds": budget.per_seconds,
                 "tables": [str(t) for t in group.tables()]})
            row = await cursor.fetchone()
        used = int(row[0]) if row else 0
        return max(0, budget.rows - used)

    @contextlib.asynccontextmanager
    async def _service(self, why: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The proxy's own connection for what a login needs to read (ceilings, budgets),
        one user at a time; CeilingsUnavailable (the login is refused) when it fails."""
        async with self._ceilings_lock:
            try:
                if self._ceilings_conn is None or self._ceilings_conn.closed:
                    self._ceilings_conn = await psycopg.AsyncConnection.connect(
                        self.config.upstream.conninfo(), autocommit=True)
                yield self._ceilings_conn
            except (psycopg.Error, OSError):
                self._ceilings_conn = None
                raise CeilingsUnavailable(why) from None

    async def _timeout_ceilings(self, role: str) -> dict[str, int]:
        """The DBA's statement, lock and idle-in-transaction timeouts for ``role`` (ms, 0:
        none), re-read at most every :data:`CEILINGS_SECONDS`; CeilingsUnavailable when they
        cannot be read (fail closed: the login is refused)."""
        now = time.monotonic()
        found = self._ceilings.get(role)
        if found is not None and now - found[0] < CEILINGS_SECONDS:
            return found[1]
        async with self._service("the database cannot be reached") as conn:
            ceilings = await session_timeout_ceilings(conn, role)
        self._ceilings[role] = (now, ceilings)
        return ceilings

    async def start(self) -> None:
        policy = self.config.policy
        if policy.identity is None:
            raise PolicycError("the policy has no identity section: the proxy cannot verify agents")
        if self.verifier is None:
            keys = key_source_for(policy.identity.jwks, ".")
            self.verifier = TokenVerifier(policy.identity, keys)
        if self.audit is None:
            self.audit = AuditLog(self.config.upstream.conninfo(), self.config.spool_path(),
                                  proxy_name=self.config.proxy_name,
                                  checkpoint_interval=self.config.checkpoint_interval,
                                  upstream=self.config.upstream)  # checks the spool's owner
            await self.audit.start()
        if self.judge is None:
            # the vetted functions and catalog relations of the server's own major: a
            # server of a major nobody vetted is refused (RegistryError)
            registry = registry_for_server_version(await _server_version_num(self.config))
            self.judge = Judge(policy, self.config.max_statement_bytes, registry=registry)
        if self.approvals is None and policy.approvals.approvers:
            self.approvals = ApprovalBroker(self.config.upstream.conninfo(),
                                            self.config.proxy_name, _webhook(policy))
            await self.approvals.start()
        self._ssl = self.config.server_ssl_context()
        self._server = await asyncio.start_server(
            self._accept, self.config.listen_host, self.config.listen_port,
            limit=CLIENT_READ_LIMIT,
        )

    def connection_counts(self) -> dict[str, int]:
        """The caps' counters now: open connections, those not yet authenticated, sessions
        per agent (``agent:NAME``) and per group (``group:NAME``), and refusals by reason
        (``refused:REASON``)."""
        counts = {"open": self._open, "pending": self._pending}
        counts.update({f"agent:{k}": v for k, v in self._agents.items() if v})
        counts.update({f"group:{k}": v for k, v in self._groups.items() if v})
        counts.update({f"refused:{k}": v for k, v in self._refused.items()})
        return counts

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.approvals is not None:
            await self.approvals.close()
        if self.audit is not None:
            await self.audit.close()
        if self._ceilings_conn is not None:
            with contextlib.suppress(Exception):
                await self._ceilings_conn.close()
            self._ceilings_conn = None

    # ---- connections -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # one login deadline from accept: TLS and GSSENC negotiation, the startup packet, the
        # password and its verification all fit in it, and no retry starts it again
        deadline = asyncio.get_running_loop().time() + self.config.login_timeout
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        slot: _Slot | None = None
        try:
            admitted = self._admit()
            if isinstance(admitted, LoginRefused):
                _send_and_close(writer, error_response(admitted.sqlstate, str(admitted),
                                                       severity="FATAL"))
                await self._record_early_refusal(admitted, writer)
                return
            slot = admitted
            await self._connection(reader, writer, slot, deadline)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except _LoginTimedOut:  # the deadline passed before a StartupMessage was read
            _send_and_close(writer, error_response(
                LOGIN_TIMEOUT_SQLSTATE, "policyc: login timed out", severity="FATAL"))
        except ProtocolViolation as exc:
            _send_and_close(writer, error_response(exc.sqlstate, str(exc), severity="FATAL"))
        except Exception as exc:  # one bad connection never takes the proxy down
            log.error("connection failed: %s", type(exc).__name__, exc_info=exc)
            _send_and_close(writer, error_response(
                "XX000", "policyc: internal error", severity="FATAL"))
        finally:
            if slot is not None:
                self._release(slot)
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    # ---- caps --------------------------------------------------------------------------

    def _admit(self) -> _Slot | LoginRefused:
        """A slot for a new connection, or why it is refused (total and pending caps)."""
        config = self.config
        if config.max_connections and self._open >= config.max_connections:
            return self._refusal("too_many_connections",
                                 "policyc: too many connections to this proxy "
                                 f"(limit {config.max_connections}); try again later")
        if config.max_pending_logins and self._pending >= config.max_pending_logins:
            return self._refusal("too_many_pending_logins",
                                 "policyc: too many connections waiting to log in "
                                 f"(limit {config.max_pending_logins}); try again later")
        self._open += 1
        self._pending += 1
        return _Slot()

    def _refusal(self, reason: str, message: str) -> LoginRefused:
        self._refused[reason] += 1
        return LoginRefused(reason, message, TOO_MANY_CONNECTIONS)

    def _authenticated(self, slot: _Slot, agent: str, group: Group) -> None:
        """Count the session against its agent's and group's caps, or refuse it (53300).

        Checked and counted with no await in between, so concurrent logins cannot all pass.
        """
        per_proxy = self.config.max_sessions_per_agent
        per_group_agent = group.limits.connections_per_agent
        per_group = group.limits.connections
        if per_proxy and self._agents[agent] >= per_proxy:
            raise self._refusal("too_many_connections",
                                "policyc: too many sessions for this agent "
                                f"(limit {per_proxy}); close one first")
        if per_group_agent and self._agent_groups[agent, group.name] >= per_group_agent:
            raise self._refusal("too_many_connections",
                                f"policyc: too many sessions for this agent in group "
                                f"{group.name} (limit {per_group_agent}); close one first")
        if per_group and self._groups[group.name] >= per_group:
            raise self._refusal("too_many_connections",
                                f"policyc: too many sessions for group {group.name} "
                                f"(limit {per_group}); try again later")
        slot.pending = False
        self._pending -= 1
        slot.agent, slot.group = agent, group.name
        self._agents[agent] += 1
        self._agent_groups[agent, group.name] += 1
        self._groups[group.name] += 1

    def _release(self, slot: _Slot) -> None:
        self._open -= 1
        if slot.pending:
            self._pending -= 1
        if slot.agent is not None and slot.group is not None:
            _decrement(self._agents, slot.agent)
            _decrement(self._groups, slot.group)
            _decrement(self._agent_groups, (slot.agent, slot.group))
            slot.agent = slot.group = None

    async def _record_early_refusal(self, refused: LoginRefused,
                                    writer: asyncio.StreamWriter) -> None:
        """Record a refusal made before any startup packet was read, at most once a second
        per reason (a flood must not turn into as many audit rows); the rest are counted."""
        now = time.monotonic()
        last = self._early_recorded.get(refused.reason)
        if self.audit is None or (last is not None and now - last < EARLY_RECORD_INTERVAL):
            return
        self._early_recorded[refused.reason] = now
        log.warning("refusing connections: %s (%d so far)", refused.reason,
                    self._refused[refused.reason])
        peer = writer.get_extra_info("peername") or ("", 0)
        await self.audit.refuse_session(SessionRecord(
            session_id=uuid.uuid4(), started_at=time.time(), outcome="refused",
            reason=refused.reason, client_addr=str(peer[0]) if peer else None,
            client_port=int(peer[1]) if peer else None, proxy=self.config.proxy_name))

    async def _read_frames(self, reader: asyncio.StreamReader,
                           framer: FrontendFramer) -> list[Any]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("client went away")
            frames = framer.feed(data)
            if frames:
                return frames

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          slot: _Slot, deadline: float) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        client_addr, client_port = (str(peer[0]) if peer else "", int(peer[1]) if peer else 0)
        framer = self._login_framer()
        tls = ssl_asked = gss_asked = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frames = await self._read_frames(reader, framer)
            except TimeoutError:
                raise _LoginTimedOut from None
            message = decode_startup(frames[0])
            if isinstance(message, SSLRequest):
                if ssl_asked or framer.pending or len(frames) > 1:
                    raise ProtocolViolation("unexpected data after SSLRequest")
                ssl_asked = True
                if self._ssl is None:
                    writer.write(encryption_response(False))
                else:
                    writer.write(encryption_response(True))
                    try:
                        async with asyncio.timeout_at(deadline):
                            await writer.drain()
                            await writer.start_tls(self._ssl)
                    except TimeoutError:
                        raise _LoginTimedOut from None
                    tls = True
                framer = self._login_framer()
                continue
            if isinstance(message, GSSENCRequest):
                # as PostgreSQL: at most one, and none once TLS is on
                if gss_asked or tls or framer.pending or len(frames) > 1:
                    raise ProtocolViolation("unexpected data after GSSENCRequest")
                gss_asked = True
                writer.write(encryption_response(False, gss=True))
                framer = self._login_framer()
                continue
            if isinstance(message, CancelRequest):
                await self._cancel(message)
                return
            assert isinstance(message, StartupMessage)
            await self._login(message, reader, writer, framer, frames[1:], slot, deadline, tls,
                              client_addr, client_port)
            return

    def _login_framer(self) -> LoginFramer:
        """Startup packets (10 kB), then the password message (``max_password_bytes``)."""
        return LoginFramer({b"p": self.config.max_password_bytes + 4})

    async def _cancel(self, message: CancelRequest) -> None:
        live = self.sessions.get(message.pid)
        if live is None or not hmac.compare_digest(live.key, message.key):
            return  # as PostgreSQL: no answer, no hint whether the key was right
        if live.session.cancel_hold():
            return  # a statement held for approval: the hold ends; the backend is idle
        await send_cancel(self.config.upstream, live.real_pid, live.real_key)

    def _settings(self, startup: StartupMessage) -> tuple[dict[str, str], str | None]:
        """Startup parameters to forward upstream, and the group the client asks for."""
        params = startup.params
        # the lexing settings are pinned in the upstream startup packet: it outranks role and
        # database defaults, and it is what RESET and DISCARD ALL return to
        forwarded: dict[str, str] = dict(PINNED_STARTUP)
        encoding = params.get("client_encoding", "UTF8").strip().strip("'\"").lower()
        if encoding not in PINNED["client_encoding"]:
            raise LoginRefused("bad_encoding", "policyc: only client_encoding UTF8 is supported",
                               "22023")
        if "application_name" in params:
            forwarded["application_name"] = params["application_name"][:63]
        if params.get("replication"):
            raise LoginRefused("replication", "policyc: replication connections are not allowed",
                               "42501")
        requested: str | None = None
        settings: list[tuple[str, str]] = []
        try:
            settings = parse_startup_options(params.get("options", ""))
        except StartupOptionsError as exc:
            raise LoginRefused("bad_options", f"policyc: {exc}", "22023") from None
        settings += [(k.lower(), v) for k, v in params.items()
                     if k not in IGNORED_STARTUP and not k.startswith("_pq_.")]
        for name, value in settings:
            if name == "policyc.group":
                requested = value or None
            elif name in SETTABLE:  # values judged once the group is known (_login)
                forwarded[name] = value
            elif name in PINNED:
                if value.strip().strip("'\"").lower() not in PINNED[name]:
                    reason = "bad_encoding" if name == "client_encoding" else "bad_setting"
                    raise LoginRefused(reason, f"policyc: {name} is pinned to "
                                       f"{PINNED_STARTUP[name]} for agent sessions", "42501")
            else:
                raise LoginRefused("bad_setting",
                                   f"policyc: setting {name} may not be set by agents", "42501")
        return forwarded, requested

    async def _login(self, startup: StartupMessage, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, framer: LoginFramer, early: list[Frame],
                     slot: _Slot, deadline: float, tls: bool, client_addr: str,
                     client_port: int) -> None:
        assert self.audit is not None and self.verifier is not None and self.judge is not None
        session_id = uuid.uuid4()
        started = time.time()
        user = startup.params.get("user", "")
        tls_version = writer.get_extra_info("ssl_object").version() if tls else None
        base = {"session_id": session_id, "started_at": started, "client_addr": client_addr,
                "client_port": client_port, "tls": tls, "tls_version": tls_version,
                "proxy": self.config.proxy_name}
        identity: AgentIdentity | None = None
        group: Group | None = None
        try:
            if not tls and not (self.config.allow_plaintext_loopback and is_loopback(client_addr)):
                raise LoginRefused("tls_required",
                                   "policyc: TLS is required (connect with sslmode=require)")
            database = startup.params.get("database") or user
            if database != self.config.upstream.dbname:
                raise LoginRefused("wrong_database",
                                   f'policyc: database "{database}" is not served here', "3D000")
            settings, requested = self._settings(startup)
            try:
                async with asyncio.timeout_at(deadline):
                    writer.write(AUTHENTICATION_CLEARTEXT_PASSWORD)
                    await writer.drain()
                    frames = early or await self._read_frames(reader, framer)
                    password = decode_frontend(frames[0])
                    assert isinstance(password, PasswordMessage)  # the framer reads only 'p'
                    token = decode_password(password)
                    try:
                        identity = await self.verifier.verify_async(token)
                        if not matches_user(identity, user):
                            raise AuthenticationFailed("user_mismatch")
                        group = resolve_group(self.config.policy, identity.groups, requested)
                    except AuthenticationFailed as exc:
                        raise LoginRefused(exc.reason, "policyc: authentication failed",
                                           "28P01") from None
            except TimeoutError:
                raise LoginRefused("login_timeout", "policyc: login timed out",
                                   LOGIN_TIMEOUT_SQLSTATE) from None
            self._authenticated(slot, identity.subject, group)
            # what the client sent behind its password is framed with the session's limits
            rest = framer.take_pending()
            session_framer = FrontendFramer(max_length=self.config.max_message_bytes,
                                            startup=False)
            try:
                ceilings = await self._timeout_ceilings(group.name)
                rows_left = await self._rows_left(identity.subject, group)
            except CeilingsUnavailable:
                raise LoginRefused("ceilings_unavailable", "policyc: the database's limits for "
                                   "this group cannot be read; try again later",
                                   "58030") from None
            for name in SETTABLE & settings.keys():
                reason = setting_reason(name, (settings[name],), group, verb="option",
                                        listed=True, ceiling_ms=ceilings.get(name) or None)
                if reason is not None:
                    raise LoginRefused("bad_setting", f"policyc: {reason}", "42501")
            try:
                upstream = await connect(self.config.upstream, group.name, settings,
                                         max_message_bytes=self.config.max_message_bytes)
            except UpstreamError as exc:
                if exc.sqlstate == TOO_MANY_CONNECTIONS:  # the role's CONNECTION LIMIT, or
                    raise self._refusal(  # the server's max_connections
                        "too_many_connections", "policyc: the database refused the session: "
                        "too many connections for this group or server") from exc
                raise LoginRefused("upstream_refused",
                                   "policyc: the database refused the session",
                                   "08004") from exc
            record = SessionRecord(
                outcome="open", agent=identity.subject, group=group.name,
                oidc_groups=identity.groups, role=group.name, claims=dict(identity.claims),
                **base)  # type: ignore[arg-type]
            try:
                await self.audit.open_session(record, upstream.backend_pid)
            except AuditUnavailable:
                upstream.writer.close()
                raise LoginRefused("audit_unavailable",
                                   "policyc: the audit trail is unavailable; try again later",
                                   "58030") from None
        except LoginRefused as refused:
            await self.audit.refuse_session(SessionRecord(
                outcome="refused", reason=refused.reason,
                agent=identity.subject if identity else None,
                group=group.name if group else None,
                oidc_groups=identity.groups if identity else (), **base))  # type: ignore[arg-type]
            _send_and_close(writer, error_response(refused.sqlstate, str(refused),
                                                   severity="FATAL"))
            return
        proxy_pid = self._new_pid()
        proxy_key = secrets.token_bytes(4)
        hello = [AUTHENTICATION_OK]
        for name, value in upstream.parameters.items():
            hello.append(ParameterStatus(name, value).encode())
        hello.append(BackendKeyData(proxy_pid, proxy_key).encode())
        hello.append(READY_IDLE)
        writer.write(b"".join(hello))
        await writer.drain()
        session = Session(session_id=session_id, identity=identity, group=group,
                          judge=self.judge, audit=self.audit, upstream=upstream,
                          client_reader=reader, client_writer=writer,
                          client_framer=session_framer,
                          results=self.config.policy.audit.results,
                          results_limit=self.config.policy.audit.results_limit_bytes,
                          approvals=self.approvals,
                          hold_seconds=self.config.policy.approvals.hold_seconds,
                          valid_for_seconds=self.config.policy.approvals.valid_for_seconds,
                          timeout_ceilings=ceilings, row_budget_left=rows_left)
        self.sessions[proxy_pid] = _Live(session, proxy_key, upstream.backend_pid,
                                         upstream.backend_key)
        try:
            await session.run(rest)
        finally:
            self.sessions.pop(proxy_pid, None)

    def _new_pid(self) -> int:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self.sessions:
                return pid


def _webhook(policy: Any) -> Any:
    """The policy's approval webhook notifier, if it configures one."""
    settings = getattr(policy.approvals, "webhook", None)
    if settings is None:
        return None
    return WebhookNotifier(settings)


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _send_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(Exception):
        writer.write(data)
        writer.close()

