"""The proxy's listener: admission, the caps, cancel requests, and each accepted connection's
life from accept to the end of its :class:`Session` (the login exchange itself is
:mod:`policyc.proxy.login`).

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
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from policyc.errors import InternalError, PolicycError
from policyc.identity import TokenVerifier, key_source_for
from policyc.policy.model import Group
from policyc.proxy.admin import AdminServer
from policyc.proxy.audit import AuditLog
from policyc.proxy.cancels import CancelInbox, CancelRoutes, forward, new_proxy_pid
from policyc.proxy.codec import CancelRequest, ProtocolViolation, error_response
from policyc.proxy.config import ProxyConfig
from policyc.proxy.holds import ApprovalBroker
from policyc.proxy.judge.cache import Judge
from policyc.proxy.judge.registry import registry_for_server_version
from policyc.proxy.login import (
    LOGIN_TIMEOUT_SQLSTATE,
    TOO_MANY_CONNECTIONS,
    LoggedIn,
    LoginRefused,
    Logins,
    LoginTimedOut,
    negotiate,
    send_and_close,
    welcome,
)
from policyc.proxy.loginreads import LoginReads
from policyc.proxy.metrics import ProxyMetrics
from policyc.proxy.reload import Reloader, policy_hash
from policyc.proxy.session import Session
from policyc.proxy.upstream import send_cancel
from policyc.webhook import WebhookNotifier

log = logging.getLogger("policyc.proxy")

#: Seconds between looks for sessions with nothing in flight while shutting down.
SHUTDOWN_POLL = 0.05
#: Seconds sessions told to end (57P01) get to end by themselves before they are cancelled.
SHUTDOWN_SETTLE = 5.0
CLIENT_READ_LIMIT = 128 << 10  # a client's StreamReader pauses its socket past twice this


async def _server_version_num(config: ProxyConfig) -> int:
    """The upstream's ``server_version_num``, asked through the service role."""
    async with await psycopg.AsyncConnection.connect(config.upstream.conninfo(),
                                                     autocommit=True) as conn:
        row = await (await conn.execute("SHOW server_version_num")).fetchone()
    if row is None:
        raise PolicycError("the database did not say its version")
    return int(row[0])


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
    _logins: Logins | None = None
    _reads: LoginReads | None = None
    _routes: CancelRoutes | None = None  # with --workers N > 1: where each pid's cancels go
    _inbox: CancelInbox | None = None
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    admin: AdminServer | None = None
    accepting: bool = False  # listening for agents and not shutting down
    # live reload (policyc.proxy.reload): reloads by outcome ("ok", "failed"), and why the
    # last one failed (None once one succeeded)
    reload_counts: Counter[str] = field(default_factory=Counter)
    last_reload_error: str | None = None
    _reloader: Reloader | None = None

    def __post_init__(self) -> None:
        config = self.config
        self.metrics.agent_labels = config.metrics_agent_labels
        if config.workers > 1 and config.cancel_dir is not None:
            self._routes = CancelRoutes(config.worker_index, config.workers, config.cancel_dir)

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
        self._reads = LoginReads(self.config.upstream.conninfo())
        self._reloader = Reloader(self)
        self._logins = Logins(self.config, self.audit, self.verifier, self._reads,
                              refresh_password=self._reloader.refresh_password,
                              metrics=self.metrics)
        self._ssl = self.config.server_ssl_context()
        if self._routes is not None:  # the siblings' forwarded cancels, before any session
            self._inbox = CancelInbox(self._routes, self._cancel_here)
            try:
                await self._inbox.start()
            except BaseException:
                await self.close()  # the audit log and the rest it opened, in order
                raise
        try:
            self._server = await asyncio.start_server(
                self._accept, self.config.listen_host, self.config.listen_port,
                limit=CLIENT_READ_LIMIT, reuse_port=self.config.reuse_port or None,
            )
        except OSError as exc:  # a busy port, an address this host does not have, ...
            await self.close()  # the audit log and the rest it opened, in order
            where = f"{self.config.listen_host}:{self.config.listen_port}"
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise PolicycError(f"cannot listen on {where}: {reason.lower()}; choose another "
                               "address or port with --listen") from exc
        self.accepting = True
        if self.config.admin_port is not None:
            port = self.config.admin_port
            self.admin = AdminServer(self, self.config.admin_host,
                                     port + self.config.worker_index if port else 0)
            try:
                await self.admin.start()
            except BaseException:
                self.admin = None
                await self.close()
                raise
        if self.config.reload_on_change:
            self._reloader.watch()

    async def reload(self) -> bool:
        """Read the policy, JWKS, TLS pair and service password again and use them for new
        sessions; False, with everything as it was, when one is not usable (SIGHUP,
        --reload-on-change; policyc.proxy.reload)."""
        if self._reloader is None:
            return False
        return await self._reloader.reload()

    @property
    def policy_hash(self) -> str:
        """The version of the policy new sessions get: the hex sha256 of its file."""
        return policy_hash(self.config.policy)

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

    async def shut_down(self, grace: float, at_once: asyncio.Event | None = None) -> None:
        """Stop as an operator expects on SIGTERM: accept no more connections, end each
        session with 57P01 once nothing of it is in flight (every session after ``grace``
        seconds, or when ``at_once`` is set), then flush and drain the audit log (close)."""
        self.accepting = False
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        last_call = None
        while self.sessions:
            hurry = loop.time() >= deadline or (at_once is not None and at_once.is_set())
            # a statement still running when time is up is cancelled: a backend does not
            # notice its client is gone while it waits (for a lock, say), and one that
            # finishes afterwards could still commit
            running = [live for live in self.sessions.values() if hurry and
                       live.session.busy and not live.session.stopping.is_set()]
            for live in list(self.sessions.values()):
                if hurry or not live.session.busy:
                    live.session.shut_down()
            # after the 57P01: the client's answer is the shutdown, never the error its
            # cancelled statement (or the proxy's estimate of it) raises meanwhile
            await asyncio.gather(*(send_cancel(self.config.upstream, live.real_pid,
                                               live.real_key) for live in running),
                                 return_exceptions=True)
            if hurry:
                last_call = last_call or loop.time() + SHUTDOWN_SETTLE
                if loop.time() >= last_call:
                    break  # sessions that do not end by now are cancelled by close()
            await asyncio.sleep(SHUTDOWN_POLL)
        await self.close()

    async def close(self) -> None:
        self.accepting = False
        if self._reloader is not None:
            await self._reloader.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._inbox is not None:
            await self._inbox.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.approvals is not None:
            await self.approvals.close()
        if self.audit is not None:
            await self.audit.close()
        if self.admin is not None:  # last: /ready says "not ready" until the end
            await self.admin.close()
        if self._reads is not None:
            await self._reads.close()

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
                send_and_close(writer, error_response(admitted.sqlstate, str(admitted),
                                                      severity="FATAL"))
                if self._logins is not None:
                    await self._logins.record_early_refusal(admitted, writer,
                                                            self._refused[admitted.reason])
                return
            slot = admitted
            await self._connection(reader, writer, slot, deadline)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except LoginTimedOut:  # the deadline passed before a StartupMessage was read
            send_and_close(writer, error_response(
                LOGIN_TIMEOUT_SQLSTATE, "policyc: login timed out", severity="FATAL"))
        except ProtocolViolation as exc:
            send_and_close(writer, error_response(exc.sqlstate, str(exc), severity="FATAL"))
        except Exception as exc:  # one bad connection never takes the proxy down
            log.error("connection failed: %s", type(exc).__name__, exc_info=exc)
            send_and_close(writer, error_response(
                InternalError.sqlstate, "policyc: internal error", severity="FATAL"))
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

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          slot: _Slot, deadline: float) -> None:
        assert self._logins is not None
        hello = await negotiate(reader, writer, self.config, self._ssl, deadline)
        if isinstance(hello, CancelRequest):
            await self._cancel(hello)
            return
        admit = functools.partial(self._authenticated, slot)
        # the policy in force now, for the whole session: a reload later changes none of it
        config, judge, logins = self.config, self.judge, self._logins
        logged_in = await logins.login(hello, reader, writer, deadline, admit, self._refusal)
        if logged_in is not None:
            assert judge is not None
            await self._serve(logged_in, reader, writer, config, judge)

    async def _cancel(self, message: CancelRequest) -> None:
        """A CancelRequest from the network: act on it here, or hand it to the worker that
        issued its pid (policyc.proxy.cancels)."""
        routes = self._routes
        if routes is not None:
            owner = routes.owner(message.pid)
            if owner is None:
                return  # a pid no worker issues
            if owner != routes.index:
                await forward(routes, owner, message)
                return
        await self._cancel_here(message)

    async def _cancel_here(self, message: CancelRequest) -> None:
        """A CancelRequest for a session of this process (from the network or, forwarded, from
        a sibling worker: untrusted alike)."""
        live = self.sessions.get(message.pid)
        if live is None or not hmac.compare_digest(live.key, message.key):
            return  # as PostgreSQL: no answer, no hint whether the key was right
        if live.session.cancel_hold():
            return  # a statement held for approval: the hold ends; the backend is idle
        await send_cancel(self.config.upstream, live.real_pid, live.real_key)

    async def _serve(self, login: LoggedIn, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, config: ProxyConfig, judge: Judge) -> None:
        """Welcome the logged-in client and run its session to the end, under the policy of
        ``config`` and ``judge`` (the session's own, whatever a reload does meanwhile)."""
        assert self.audit is not None
        policy = config.policy
        upstream = login.upstream
        proxy_pid = self._new_pid()
        proxy_key = secrets.token_bytes(4)
        writer.write(welcome(upstream.parameters, proxy_pid, proxy_key))
        await writer.drain()
        session = Session(session_id=login.session_id, identity=login.identity,
                          group=login.group, judge=judge, audit=self.audit,
                          upstream=upstream, client_reader=reader, client_writer=writer,
                          client_framer=login.framer,
                          results=policy.audit.results,
                          results_limit=policy.audit.results_limit_bytes,
                          approvals=self.approvals if policy.approvals.approvers else None,
                          hold_seconds=policy.approvals.hold_seconds,
                          valid_for_seconds=policy.approvals.valid_for_seconds,
                          timeout_ceilings=login.ceilings, row_budget_left=login.rows_left,
                          metrics=self.metrics)
        self.sessions[proxy_pid] = _Live(session, proxy_key, upstream.backend_pid,
                                         upstream.backend_key)
        started = time.monotonic()
        try:
            await session.run(login.rest)
        finally:
            self.sessions.pop(proxy_pid, None)
            log.info("session closed: %s", session.end_reason, extra={
                "event": "session_closed", "session_id": str(login.session_id),
                "agent": login.identity.subject, "group": login.group.name,
                "end_reason": session.end_reason, "statements": session.state.seq,
                "duration_ms": round((time.monotonic() - started) * 1000, 1)})

    def _new_pid(self) -> int:
        """A random proxy pid for BackendKeyData, none of the live sessions'; with workers,
        one that names this worker (``pid % workers == worker_index``)."""
        routes = self._routes
        if routes is None:
            return new_proxy_pid(0, 1, self.sessions)
        return new_proxy_pid(routes.index, routes.count, self.sessions)


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

