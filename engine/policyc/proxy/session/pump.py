"""One agent session after login: the pumps between client and database.

Client to database: the inbox's bytes are framed, the frontend handlers decide each message,
and the record gate sends the batch upstream once its records allow it.  Database to client:
the router turns the server's frames into the client's bytes, and the pump writes them once
the gates the router collected are done.  The pumps share no flags: what one needs of the
other is state (:class:`SessionState`), a gate future, or the gate's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from policyc.errors import AdminShutdown, InternalError
from policyc.identity import AgentIdentity
from policyc.policy.model import Group, ResultRecording
from policyc.proxy.audit import AuditUnavailable
from policyc.proxy.audit.records import SessionEnd
from policyc.proxy.codec import FrontendFramer, ProtocolViolation, error_response
from policyc.proxy.judge.cache import Judge
from policyc.proxy.metrics import ProxyMetrics
from policyc.proxy.session.desk import HoldDesk
from policyc.proxy.session.gate import WRITE_HIGH_WATER, RecordGate
from policyc.proxy.session.handlers import Frontend
from policyc.proxy.session.inbox import ClientInbox
from policyc.proxy.session.named import Names
from policyc.proxy.session.recorder import Recorder
from policyc.proxy.session.router import Router
from policyc.proxy.session.state import AuditSink, SessionClosed, SessionState
from policyc.proxy.upstream import UpstreamSession

log = logging.getLogger("policyc.proxy")


@dataclass
class Session:
    """One proxied session; ``run`` pumps until either side ends."""

    session_id: uuid.UUID
    identity: AgentIdentity
    group: Group
    judge: Judge
    audit: AuditSink
    upstream: UpstreamSession
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    client_framer: FrontendFramer
    results: ResultRecording = ResultRecording.DIGEST
    results_limit: int = 16 << 20  # uncompressed result bytes kept per session (results: full)
    clock: Any = time.time
    # the DBA's statement/lock/idle-in-transaction timeouts of the group role, in ms (0:
    # none): agents may lower them, never raise or disable them
    timeout_ceilings: dict[str, int] = field(default_factory=dict)
    # rows of the group's tables this session may still send (approval.budget); None: no
    # budget.  The server starts it at the budget less what the agent used in the window.
    row_budget_left: int | None = None
    approvals: Any = None  # ApprovalBroker, or None when the policy names no approvers
    hold_seconds: int = 120
    valid_for_seconds: int = 3600
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    state: SessionState = field(init=False)
    gate: RecordGate = field(init=False)
    router: Router = field(init=False)
    desk: HoldDesk = field(init=False)
    frontend: Frontend = field(init=False)
    inbox: ClientInbox = field(init=False)
    # set by shut_down(): the proxy is stopping and ends this session
    stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        state = self.state = SessionState(
            self.session_id, self.identity, self.group, results=self.results,
            results_limit=self.results_limit, clock=self.clock,
            timeout_ceilings=self.timeout_ceilings, row_budget_left=self.row_budget_left,
            metrics=self.metrics)
        self.gate = RecordGate(state, self.audit, self.upstream.writer)
        self.inbox = ClientInbox(self.client_reader)
        recorder = Recorder(state, self.gate, self.approvals)
        self.desk = HoldDesk(state, self.gate, recorder, self.inbox, self.client_writer,
                             self.upstream.writer, self.approvals, self.hold_seconds,
                             self.valid_for_seconds)
        self.router = Router(state, self.audit, self.desk.overflow)
        self.frontend = Frontend(state, self.gate, recorder, self.desk,
                                 Names(state, self.gate, self.judge), self.judge,
                                 self.client_writer)

    @property
    def end_reason(self) -> str:
        return self.state.end_reason

    def cancel_hold(self) -> bool:
        """A CancelRequest with this session's key: see :meth:`HoldDesk.cancel_hold`."""
        return self.desk.cancel_hold()

    @property
    def busy(self) -> bool:
        """A statement (or a batch of them) is on its way to the database, or its answer on
        its way back; a statement held for approval is not (it waits for a human)."""
        return bool(self.state.expected) or self.state.unsynced

    def shut_down(self) -> None:
        """End the session because the proxy stops: FATAL 57P01 to the client, as PostgreSQL
        says it when it shuts down; closing the database session rolls back an open
        transaction and ends a statement still running."""
        if self.stopping.is_set():
            return
        self.state.end_reason = "the proxy shut down"
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.client_writer.write(error_response(
                AdminShutdown.sqlstate, "policyc: terminating connection because the proxy is "
                "shutting down; reconnect", severity="FATAL"))
        self.stopping.set()

    # ---- the pumps -------------------------------------------------------------------

    async def client_pump(self, first: bytes = b"") -> None:
        data = first
        framer = self.client_framer
        inbox = self.inbox
        handle = self.frontend.handle
        while True:
            if data:
                frames = framer.feed(data)
                if frames:
                    await handle(frames)
            data = await inbox.read()
            if not data:
                self.state.end_reason = "client closed the connection"
                return

    async def server_pump(self) -> None:
        data = self.upstream.leftover
        framer = self.upstream.framer
        reader = self.upstream.reader
        writer = self.client_writer
        router = self.router
        gate = self.gate
        while True:
            if data:
                out = router.feed(framer.feed(data))
                gates = router.gates
                if gates:
                    # part of this answers a statement sent before its record was durable: no
                    # byte of it leaves before the record is (a failed record raises here)
                    router.gates = []
                    for record_gate in gates:
                        await record_gate
                    if gate.failure is not None:
                        raise gate.failure
                if out:
                    writer.write(out)
                    if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                        await writer.drain()
            data = await reader.read(65536)
            if not data:
                self.state.end_reason = "the database closed the session"
                self.client_writer.write(error_response(
                    AdminShutdown.sqlstate,
                    "policyc: the database ended this session (restart or shutdown); reconnect",
                    severity="FATAL"))
                raise SessionClosed

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self, first_client_bytes: bytes = b"") -> None:
        state = self.state
        client = asyncio.create_task(self.client_pump(first_client_bytes))
        server = asyncio.create_task(self.server_pump())
        broken = self.gate.broken()
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {client, server, broken, stopping}
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            pending -= {broken, stopping}
            done -= {broken, stopping}
            for task in pending:
                task.cancel()
            errors = [task.exception() for task in done]
            failure = self.gate.failure
            if failure is not None and not any(
                    isinstance(exc, AuditUnavailable) for exc in errors):
                errors.append(failure)  # a record failed after its statement was sent
            for exc in errors:
                if isinstance(exc, ProtocolViolation):
                    state.end_reason = f"protocol violation: {exc}"
                    self.client_writer.write(error_response(exc.sqlstate, str(exc),
                                                            severity="FATAL"))
                elif isinstance(exc, AuditUnavailable):
                    state.end_reason = f"audit trail unavailable: {exc.why}"
                    self.client_writer.write(error_response(exc.sqlstate, str(exc),
                                                            severity="FATAL"))
                elif exc is not None and not isinstance(exc, SessionClosed | ConnectionError):
                    state.end_reason = f"internal error: {type(exc).__name__}"
                    log.error("session %s ended by %s", self.session_id, type(exc).__name__,
                              exc_info=exc)
                    self.client_writer.write(error_response(
                        InternalError.sqlstate, "policyc: internal error; the session was closed",
                        severity="FATAL"))
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            for waiter in (broken, stopping):
                if not waiter.done():
                    waiter.cancel()
            for pump in (client, server):  # when run() itself is cancelled (the proxy closes)
                if not pump.done():
                    pump.cancel()
                pump.add_done_callback(_retrieved)
            for expect in state.expected:
                self.router.finish(expect, note=f"session ended: {state.end_reason}")
            state.expected.clear()
            self.audit.end_session(
                SessionEnd(self.session_id, self.clock(), state.end_reason, state.seq + 1),
                self.upstream.backend_pid)
            for writer in (self.upstream.writer, self.client_writer):
                try:
                    if writer is self.upstream.writer:
                        writer.write(b"X\x00\x00\x00\x04")
                    writer.close()
                except (ConnectionError, RuntimeError):
                    pass


def _retrieved(task: asyncio.Task[None]) -> None:
    """Take a finished pump's outcome, so a pump that ended after the session did (its
    socket closed under it) is not reported as an exception nobody retrieved."""
    if not task.cancelled():
        task.exception()
