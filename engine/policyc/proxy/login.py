"""The login exchange: TLS and GSSENC negotiation, the startup packet, and agent login (an
OIDC token as the password), up to the upstream session and its ``open`` audit record.

Before authentication only startup packets and one password message are read, each refused on
its length header when it is too large, all under one deadline from accept that no retry
resets (docs/limits.md).  Every refusal is recorded in ``audit.sessions`` before the client is
told; the listener (:mod:`policyc.proxy.server`) keeps admission, caps and the sessions' lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from policyc.errors import (
    AuditStorageFailure,
    InsufficientPrivilege,
    InvalidAuthorization,
    InvalidCatalogName,
    InvalidParameterValue,
    InvalidPassword,
    PolicycError,
    QueryCanceled,
    SqlserverRejectedEstablishmentOfSqlconnection,
    TooManyConnections,
)
from policyc.identity import (
    AgentIdentity,
    AuthenticationFailed,
    TokenVerifier,
    matches_user,
    resolve_group,
)
from policyc.identity.groups import StartupOptionsError, parse_startup_options
from policyc.policy.model import Group
from policyc.proxy.audit import AuditLog, AuditUnavailable
from policyc.proxy.audit.records import SessionRecord
from policyc.proxy.ceilings import CeilingsUnavailable
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
from policyc.proxy.config import ProxyConfig, Upstream, is_loopback
from policyc.proxy.judge.settings import (
    PINNED,
    PINNED_STARTUP,
    SETTABLE,
    setting_reason,
)
from policyc.proxy.loginreads import LoginReads
from policyc.proxy.metrics import ProxyMetrics
from policyc.proxy.upstream import UpstreamError, UpstreamSession, connect

log = logging.getLogger("policyc.proxy")
TOO_MANY_CONNECTIONS = TooManyConnections.sqlstate
#: PostgreSQL's own SQLSTATE for "canceling authentication due to timeout"
LOGIN_TIMEOUT_SQLSTATE = QueryCanceled.sqlstate
EARLY_RECORD_INTERVAL = 1.0  # seconds: refusals before a startup packet are recorded this often
IGNORED_STARTUP = {"user", "database", "options", "application_name", "client_encoding"}


class LoginRefused(PolicycError):
    """A login is refused; ``reason`` goes to the audit log, the message to the client."""

    def __init__(self, reason: str, message: str,
                 sqlstate: str = InvalidAuthorization.sqlstate) -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


class LoginTimedOut(Exception):
    """The login deadline passed before the client sent a StartupMessage."""


@dataclass(frozen=True)
class Startup:
    """A StartupMessage read after any TLS/GSSENC negotiation, with what came behind it."""

    message: StartupMessage
    framer: LoginFramer
    early: list[Frame]
    tls: bool
    client_addr: str  # as the socket said at accept
    client_port: int


@dataclass(frozen=True)
class LoggedIn:
    """A verified agent with its upstream session open and its ``open`` record written."""

    session_id: uuid.UUID
    identity: AgentIdentity
    group: Group
    upstream: UpstreamSession
    framer: FrontendFramer  # the session's, with the session's message limit
    rest: bytes  # what the client sent behind its password
    ceilings: dict[str, int]
    rows_left: int | None


def login_framer(config: ProxyConfig) -> LoginFramer:
    """Startup packets (10 kB), then the password message (``max_password_bytes``)."""
    return LoginFramer({b"p": config.max_password_bytes + 4})


async def read_frames(reader: asyncio.StreamReader, framer: FrontendFramer) -> list[Any]:
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("client went away")
        frames = framer.feed(data)
        if frames:
            return frames


async def negotiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    config: ProxyConfig, tls_context: ssl.SSLContext | None,
                    deadline: float) -> Startup | CancelRequest:
    """Answer SSLRequest and GSSENCRequest (at most one each, as PostgreSQL) until the client
    sends its StartupMessage or a CancelRequest; LoginTimedOut past ``deadline``."""
    client_addr, client_port = _peer(writer)
    framer = login_framer(config)
    tls = ssl_asked = gss_asked = False
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                frames = await read_frames(reader, framer)
        except TimeoutError:
            raise LoginTimedOut from None
        message = decode_startup(frames[0])
        if isinstance(message, SSLRequest):
            if ssl_asked or framer.pending or len(frames) > 1:
                raise ProtocolViolation("unexpected data after SSLRequest")
            ssl_asked = True
            if tls_context is None:
                writer.write(encryption_response(False))
            else:
                writer.write(encryption_response(True))
                try:
                    async with asyncio.timeout_at(deadline):
                        await writer.drain()
                        await writer.start_tls(tls_context)
                except TimeoutError:
                    raise LoginTimedOut from None
                tls = True
            framer = login_framer(config)
            continue
        if isinstance(message, GSSENCRequest):
            # as PostgreSQL: at most one, and none once TLS is on
            if gss_asked or tls or framer.pending or len(frames) > 1:
                raise ProtocolViolation("unexpected data after GSSENCRequest")
            gss_asked = True
            writer.write(encryption_response(False, gss=True))
            framer = login_framer(config)
            continue
        if isinstance(message, CancelRequest):
            return message
        assert isinstance(message, StartupMessage)
        return Startup(message, framer, frames[1:], tls, client_addr, client_port)


def startup_settings(startup: StartupMessage) -> tuple[dict[str, str], str | None]:
    """Startup parameters to forward upstream, and the group the client asks for."""
    params = startup.params
    # the lexing settings are pinned in the upstream startup packet: it outranks role and
    # database defaults, and it is what RESET and DISCARD ALL return to
    forwarded: dict[str, str] = dict(PINNED_STARTUP)
    encoding = params.get("client_encoding", "UTF8").strip().strip("'\"").lower()
    if encoding not in PINNED["client_encoding"]:
        raise LoginRefused("bad_encoding", "policyc: only client_encoding UTF8 is supported",
                           InvalidParameterValue.sqlstate)
    if "application_name" in params:
        forwarded["application_name"] = params["application_name"][:63]
    if params.get("replication"):
        raise LoginRefused("replication", "policyc: replication connections are not allowed",
                           InsufficientPrivilege.sqlstate)
    requested: str | None = None
    settings: list[tuple[str, str]] = []
    try:
        settings = parse_startup_options(params.get("options", ""))
    except StartupOptionsError as exc:
        raise LoginRefused("bad_options", f"policyc: {exc}",
                           InvalidParameterValue.sqlstate) from None
    settings += [(k.lower(), v) for k, v in params.items()
                 if k not in IGNORED_STARTUP and not k.startswith("_pq_.")]
    for name, value in settings:
        if name == "policyc.group":
            requested = value or None
        elif name in SETTABLE:  # values judged once the group is known (Logins.login)
            forwarded[name] = value
        elif name in PINNED:
            if value.strip().strip("'\"").lower() not in PINNED[name]:
                reason = "bad_encoding" if name == "client_encoding" else "bad_setting"
                raise LoginRefused(reason, f"policyc: {name} is pinned to "
                                   f"{PINNED_STARTUP[name]} for agent sessions",
                                   InsufficientPrivilege.sqlstate)
        else:
            raise LoginRefused("bad_setting",
                               f"policyc: setting {name} may not be set by agents",
                               InsufficientPrivilege.sqlstate)
    return forwarded, requested


def welcome(parameters: dict[str, str], pid: int, key: bytes) -> bytes:
    """AuthenticationOk, the upstream's ParameterStatus, the proxy's own cancel key, ready."""
    hello = [AUTHENTICATION_OK]
    for name, value in parameters.items():
        hello.append(ParameterStatus(name, value).encode())
    hello.append(BackendKeyData(pid, key).encode())
    hello.append(READY_IDLE)
    return b"".join(hello)


def send_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(Exception):
        writer.write(data)
        writer.close()


def _peer(writer: asyncio.StreamWriter) -> tuple[str, int]:
    peer = writer.get_extra_info("peername") or ("", 0)
    return (str(peer[0]) if peer else "", int(peer[1]) if peer else 0)


@dataclass
class Logins:
    """Verifies agents and opens their upstream sessions, recording every outcome, under one
    policy (``config.policy``): a reload makes new Logins (policyc.proxy.reload)."""

    config: ProxyConfig
    audit: AuditLog
    verifier: TokenVerifier
    reads: LoginReads
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    _early_recorded: dict[str, float] = field(default_factory=dict)
    # after the database refused the service password (28P01): the upstream to try once
    # more with (a new password from its source), or None
    refresh_password: Callable[[Upstream], Awaitable[Upstream | None]] | None = None

    async def record_early_refusal(self, refused: LoginRefused, writer: asyncio.StreamWriter,
                                   count: int) -> None:
        """Record a refusal made before any startup packet was read, at most once a second
        per reason (a flood must not turn into as many audit rows); the rest are counted by
        the listener (``count`` so far)."""
        now = time.monotonic()
        last = self._early_recorded.get(refused.reason)
        if last is not None and now - last < EARLY_RECORD_INTERVAL:
            return
        self._early_recorded[refused.reason] = now
        log.warning("refusing connections: %s (%d so far)", refused.reason, count)
        peer = writer.get_extra_info("peername") or ("", 0)
        await self.audit.refuse_session(SessionRecord(
            session_id=uuid.uuid4(), started_at=time.time(), outcome="refused",
            reason=refused.reason, client_addr=str(peer[0]) if peer else None,
            client_port=int(peer[1]) if peer else None, proxy=self.config.proxy_name,
            policy_hash=self.config.policy.sha256))

    async def login(self, startup: Startup, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, deadline: float,
                    admit: Callable[[str, Group], None],
                    busy: Callable[[str, str], LoginRefused]) -> LoggedIn | None:
        """Verify the token and open the upstream session; None when the login was refused
        (recorded, and the client told with a FATAL error).  ``admit`` counts the session
        against the caps or raises LoginRefused; ``busy`` makes (and counts) a 53300 refusal.
        """
        config = self.config
        session_id = uuid.uuid4()
        started = time.time()
        params = startup.message.params
        user = params.get("user", "")
        tls = startup.tls
        client_addr, client_port = startup.client_addr, startup.client_port
        tls_version = writer.get_extra_info("ssl_object").version() if tls else None
        base = {"session_id": session_id, "started_at": started, "client_addr": client_addr,
                "client_port": client_port, "tls": tls, "tls_version": tls_version,
                "proxy": config.proxy_name, "policy_hash": config.policy.sha256}
        identity: AgentIdentity | None = None
        group: Group | None = None
        try:
            if not tls and not (config.allow_plaintext_loopback and is_loopback(client_addr)):
                raise LoginRefused("tls_required",
                                   "policyc: TLS is required (connect with sslmode=require)")
            database = params.get("database") or user
            if database != config.upstream.dbname:
                raise LoginRefused("wrong_database",
                                   f'policyc: database "{database}" is not served here',
                                   InvalidCatalogName.sqlstate)
            settings, requested = startup_settings(startup.message)
            try:
                async with asyncio.timeout_at(deadline):
                    writer.write(AUTHENTICATION_CLEARTEXT_PASSWORD)
                    await writer.drain()
                    frames = startup.early or await read_frames(reader, startup.framer)
                    password = decode_frontend(frames[0])
                    assert isinstance(password, PasswordMessage)  # the framer reads only 'p'
                    token = decode_password(password)
                    try:
                        identity = await self.verifier.verify_async(token)
                        if not matches_user(identity, user):
                            raise AuthenticationFailed("user_mismatch")
                        group = resolve_group(config.policy, identity.groups, requested)
                    except AuthenticationFailed as exc:
                        raise LoginRefused(exc.reason, "policyc: authentication failed",
                                           InvalidPassword.sqlstate) from None
            except TimeoutError:
                raise LoginRefused("login_timeout", "policyc: login timed out",
                                   LOGIN_TIMEOUT_SQLSTATE) from None
            admit(identity.subject, group)
            # what the client sent behind its password is framed with the session's limits
            rest = startup.framer.take_pending()
            session_framer = FrontendFramer(max_length=config.max_message_bytes, startup=False)
            try:
                ceilings = await self.reads.timeout_ceilings(group.name)
                rows_left = await self.reads.rows_left(identity.subject, group)
            except CeilingsUnavailable:
                raise LoginRefused("ceilings_unavailable", "policyc: the database's limits for "
                                   "this group cannot be read; try again later",
                                   AuditStorageFailure.sqlstate) from None
            for name in SETTABLE & settings.keys():
                reason = setting_reason(name, (settings[name],), group, verb="option",
                                        listed=True, ceiling_ms=ceilings.get(name) or None)
                if reason is not None:
                    raise LoginRefused("bad_setting", f"policyc: {reason}",
                                       InsufficientPrivilege.sqlstate)
            try:
                upstream = await self._connect(group, settings)
            except UpstreamError as exc:
                if exc.sqlstate == TOO_MANY_CONNECTIONS:  # the role's CONNECTION LIMIT, or
                    raise busy(  # the server's max_connections
                        "too_many_connections", "policyc: the database refused the session: "
                        "too many connections for this group or server") from exc
                raise LoginRefused("upstream_refused",
                                   "policyc: the database refused the session",
                                   SqlserverRejectedEstablishmentOfSqlconnection.sqlstate) from exc
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
                                   AuditStorageFailure.sqlstate) from None
        except LoginRefused as refused:
            self.metrics.login_failed(refused.reason)
            self.metrics.session(group.name if group else None, "refused",
                                 identity.subject if identity else None)
            log.warning("login refused: %s", refused.reason, extra={
                "event": "login_refused", "reason": refused.reason,
                "session_id": str(session_id), "client_addr": client_addr,
                "agent": identity.subject if identity else None,
                "group": group.name if group else None})
            await self.audit.refuse_session(SessionRecord(
                outcome="refused", reason=refused.reason,
                agent=identity.subject if identity else None,
                group=group.name if group else None,
                oidc_groups=identity.groups if identity else (), **base))  # type: ignore[arg-type]
            send_and_close(writer, error_response(refused.sqlstate, str(refused),
                                                  severity="FATAL"))
            return None
        self.metrics.session(group.name, "opened", identity.subject)
        log.info("session opened: %s as %s", identity.subject, group.name, extra={
            "event": "session_opened", "session_id": str(session_id),
            "agent": identity.subject, "group": group.name, "client_addr": client_addr,
            "tls": tls, "policy_hash": config.policy.sha256})
        return LoggedIn(session_id, identity, group, upstream, session_framer, rest, ceilings,
                        rows_left)

    async def _connect(self, group: Group, settings: dict[str, str]) -> UpstreamSession:
        """The upstream session as the group role with the service password; when the
        database refuses that password (28P01), once more with a new one if its source now
        holds one (the service password was rotated)."""
        config = self.config
        try:
            return await connect(config.upstream, group.name, settings,
                                 max_message_bytes=config.max_message_bytes)
        except UpstreamError as exc:
            if exc.sqlstate != InvalidPassword.sqlstate or self.refresh_password is None:
                raise
            fresh = await self.refresh_password(config.upstream)
            if fresh is None:
                raise
        return await connect(fresh, group.name, settings,
                             max_message_bytes=config.max_message_bytes)
