"""The proxy's listener: TLS negotiation, agent login (OIDC token as password), cancel
requests, and handing each accepted connection to a :class:`Session`.

One bad connection never hurts another: every connection runs in its own task and every
exception ends only that task, with an ErrorResponse when the client can still read one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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
from policyc.proxy.auditlog import AuditLog, AuditUnavailable
from policyc.proxy.codec import (
    AUTHENTICATION_CLEARTEXT_PASSWORD,
    AUTHENTICATION_OK,
    READY_IDLE,
    BackendKeyData,
    CancelRequest,
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
from policyc.proxy.config import ProxyConfig, is_loopback
from policyc.proxy.decide import Decider
from policyc.proxy.holds import ApprovalBroker
from policyc.proxy.records import SessionRecord
from policyc.proxy.session import Session
from policyc.proxy.upstream import UpstreamError, connect, send_cancel
from policyc.proxy.verdict import PINNED, PINNED_STARTUP, SETTABLE, TIMEOUTS, setting_value_reason
from policyc.webhook import WebhookNotifier

log = logging.getLogger("policyc.proxy")

UTF8_NAMES = {"utf8", "utf-8", "unicode"}
IGNORED_STARTUP = {"user", "database", "options", "application_name", "client_encoding"}


class LoginRefused(PolicycError):
    """A login is refused; ``reason`` goes to the audit log, the message to the client."""

    def __init__(self, reason: str, message: str, sqlstate: str = "28000") -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


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
    decider: Decider | None = None
    sessions: dict[int, _Live] = field(default_factory=dict)
    approvals: ApprovalBroker | None = None
    _server: asyncio.base_events.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        policy = self.config.policy
        if policy.identity is None:
            raise PolicycError("the policy has no identity section: the proxy cannot verify agents")
        if self.verifier is None:
            keys = key_source_for(policy.identity.jwks, ".")
            self.verifier = TokenVerifier(policy.identity, keys)
        if self.decider is None:
            self.decider = Decider(policy, self.config.max_statement_bytes)
        if self.audit is None:
            self.audit = AuditLog(self.config.upstream.conninfo(), self.config.spool_path(),
                                  proxy_name=self.config.proxy_name,
                                  checkpoint_interval=self.config.checkpoint_interval,
                                  upstream=self.config.upstream)  # checks the spool's owner
            await self.audit.start()
        if self.approvals is None and policy.approvals.approvers:
            self.approvals = ApprovalBroker(self.config.upstream.conninfo(),
                                            self.config.proxy_name, _webhook(policy))
            await self.approvals.start()
        self._ssl = self.config.server_ssl_context()
        self._server = await asyncio.start_server(
            self._accept, self.config.listen_host, self.config.listen_port, limit=1 << 20
        )

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

    # ---- connections -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except ProtocolViolation as exc:
            _send_and_close(writer, error_response(exc.sqlstate, str(exc), severity="FATAL"))
        except Exception as exc:  # one bad connection never takes the proxy down
            log.error("connection failed: %s", type(exc).__name__, exc_info=exc)
            _send_and_close(writer, error_response(
                "XX000", "policyc: internal error", severity="FATAL"))
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _read_frames(self, reader: asyncio.StreamReader,
                           framer: FrontendFramer) -> list[Any]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("client went away")
            frames = framer.feed(data)
            if frames:
                return frames

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        client_addr, client_port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        framer = FrontendFramer(max_length=self.config.max_message_bytes)
        tls = False
        while True:
            frames = await asyncio.wait_for(self._read_frames(reader, framer),
                                            self.config.login_timeout)
            message = decode_startup(frames[0])
            if isinstance(message, SSLRequest):
                if tls or framer.pending or len(frames) > 1:
                    raise ProtocolViolation("unexpected data after SSLRequest")
                if self._ssl is None:
                    writer.write(encryption_response(False))
                else:
                    writer.write(encryption_response(True))
                    await writer.drain()
                    await writer.start_tls(self._ssl)
                    tls = True
                framer = FrontendFramer(max_length=self.config.max_message_bytes)
                continue
            if isinstance(message, GSSENCRequest):
                if framer.pending or len(frames) > 1:
                    raise ProtocolViolation("unexpected data after GSSENCRequest")
                writer.write(encryption_response(False, gss=True))
                framer = FrontendFramer(max_length=self.config.max_message_bytes)
                continue
            if isinstance(message, CancelRequest):
                await self._cancel(message)
                return
            assert isinstance(message, StartupMessage)
            rest = b"".join(f.raw for f in frames[1:]) + framer.take_pending()
            await self._login(message, reader, writer, framer, rest, tls,
                              client_addr, client_port)
            return

    async def _cancel(self, message: CancelRequest) -> None:
        live = self.sessions.get(message.pid)
        if live is None or not hmac.compare_digest(live.key, message.key):
            return  # as PostgreSQL: no answer, no hint whether the key was right
        await send_cancel(self.config.upstream, live.real_pid, live.real_key)

    def _settings(self, startup: StartupMessage) -> tuple[dict[str, str], str | None]:
        """Startup parameters to forward upstream, and the group the client asks for."""
        params = startup.params
        # the lexing settings are pinned in the upstream startup packet: it outranks role and
        # database defaults, and it is what RESET and DISCARD ALL return to
        forwarded: dict[str, str] = dict(PINNED_STARTUP)
        encoding = params.get("client_encoding", "UTF8").strip().strip("'\"").lower()
        if encoding not in UTF8_NAMES:
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
            elif name in SETTABLE:
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
                     writer: asyncio.StreamWriter, framer: FrontendFramer, rest: bytes,
                     tls: bool, client_addr: str, client_port: int) -> None:
        assert self.audit is not None and self.verifier is not None and self.decider is not None
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
            writer.write(AUTHENTICATION_CLEARTEXT_PASSWORD)
            await writer.drain()
            frames = await asyncio.wait_for(self._read_frames(reader, framer),
                                            self.config.login_timeout)
            if frames[0].type != b"p":
                raise ProtocolViolation("expected a password message")
            password = decode_frontend(frames[0])
            assert isinstance(password, PasswordMessage)
            token = decode_password(password)
            try:
                identity = await self.verifier.verify_async(token)
                if not matches_user(identity, user):
                    raise AuthenticationFailed("user_mismatch")
                group = resolve_group(self.config.policy, identity.groups, requested)
            except AuthenticationFailed as exc:
                raise LoginRefused(exc.reason, "policyc: authentication failed", "28P01") from None
            rest = b"".join(f.raw for f in frames[1:]) + framer.take_pending() + rest
            for name in TIMEOUTS & settings.keys():
                if setting_value_reason(name, (settings[name],), group) is not None:
                    raise LoginRefused("bad_setting", f"policyc: {name} may only be lowered "
                                       f"for group {group.name}", "42501")
            try:
                upstream = await connect(self.config.upstream, group.name, settings)
            except UpstreamError as exc:
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
                          decider=self.decider, audit=self.audit, upstream=upstream,
                          client_reader=reader, client_writer=writer, client_framer=framer,
                          results=self.config.policy.audit.results,
                          results_limit=self.config.policy.audit.results_limit_bytes,
                          approvals=self.approvals,
                          hold_seconds=self.config.policy.approvals.hold_seconds,
                          valid_for_seconds=self.config.policy.approvals.valid_for_seconds)
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


def _send_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(Exception):
        writer.write(data)
        writer.close()

