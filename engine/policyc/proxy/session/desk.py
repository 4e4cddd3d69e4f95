"""The hold desk: approvals for statements that need a human, and row estimates.

A held statement is not sent upstream: an approval request is opened and the statement waits
for its decision (approval mode ``wait``), or is refused at once naming its request
(``ticket``).  A result that grows past the group's row limit is cut off and a request is
opened for it.  Before a read of the policy's tables runs, the planner may be asked how many
rows it would return (an EXPLAIN on the agent's own session that leaves the session as it
found it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from policyc.errors import InternalError, QueryCanceled
from policyc.proxy.audit.records import StatementOutcome
from policyc.proxy.codec import ProtocolViolation, Query, error_response, notice_response
from policyc.proxy.judge.cache import Judgement
from policyc.proxy.session.gate import RecordGate
from policyc.proxy.session.inbox import ClientGone, ClientInbox
from policyc.proxy.session.recorder import Recorder
from policyc.proxy.session.refusals import BLOCKED_SQLSTATE
from policyc.proxy.session.state import Answer, Expect, SessionClosed, SessionState, Unit


class EstimateCancelled(Exception):
    """The client's cancel, or its own statement_timeout, ended the proxy's row estimate."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class HoldDesk:
    def __init__(self, state: SessionState, gate: RecordGate, recorder: Recorder,
                 inbox: ClientInbox, client: asyncio.StreamWriter,
                 upstream: asyncio.StreamWriter, approvals: Any, hold_seconds: int,
                 valid_for_seconds: int) -> None:
        self.state = state
        self.gate = gate
        self.recorder = recorder
        self.inbox = inbox
        self.client = client
        self.upstream = upstream
        self.approvals = approvals  # ApprovalBroker, or None when the policy names no approvers
        self.hold_seconds = hold_seconds
        self.valid_for_seconds = valid_for_seconds
        self._held: asyncio.Future[None] | None = None  # set while a statement is held
        self._background: set[asyncio.Task[Any]] = set()

    def _human(self) -> str | None:
        claims = self.state.identity.claims
        act = claims.get("act")
        human = claims.get("human") or (act.get("sub") if isinstance(act, dict) else None)
        return str(human) if human else None

    async def hold(self, out: list[bytes], text: str,
                   parameters: list[str | None] | None, decision: Judgement,
                   index: int, *, reason: str | None = None,
                   estimated_rows: int | None = None) -> int | tuple[str, str]:
        """Hold a statement for a human (approval mode ``wait``), or refuse it at once naming
        its request (``ticket``): the approval id when it may run, else the refusal
        (sqlstate, message). Everything before it in the pipeline is sent first."""
        state = self.state
        group = state.group
        verdict = decision.verdicts[index]
        shapes = reason or ", ".join(sorted(verdict.approval_shapes)) or "policy"
        if self.approvals is None:
            return BLOCKED_SQLSTATE, (
                f"policyc: this statement needs approval ({shapes}) but the policy names no "
                "approvers, so it was not run")
        await self.gate.flush(out)
        agent = state.identity.subject
        found = await self.approvals.find(agent, group.name, text, parameters)
        if found is not None:
            return int(found)
        if state.transaction_status in ("T", "E") and \
                group.approval.in_transaction == "refuse":
            return BLOCKED_SQLSTATE, (
                f"policyc: this statement needs approval ({shapes}); inside an open transaction "
                "this group's policy refuses instead of holding. Run it outside a transaction.")
        if group.approval.mode == "ticket":
            return await self._ticket(text, parameters, decision, index, shapes, estimated_rows)
        # from here a CancelRequest ends the hold (cancel_hold), even one that comes while the
        # request is being opened
        self._held = asyncio.get_running_loop().create_future()
        try:
            request_id = await self._open_request(text, parameters, decision, index, shapes,
                                                  estimated_rows)
            held = self.recorder.record(text, decision, index, "held",
                                        reason=f"needs approval: {shapes}",
                                        parameters=parameters, approval_id=request_id)
            await self.gate.spool_now(held, StatementOutcome(held.record_id, None, None))
            self.client.write(notice_response(
                f"policyc: approval request {request_id} is waiting for an approver "
                f"(up to {self.hold_seconds} s)", severity="NOTICE"))
            await self.client.drain()
            status = await self._await_decision(request_id)
        finally:
            self._held = None
        if status == "approved":
            return request_id
        return await self._not_decided(text, parameters, decision, index, request_id, status)

    async def _not_decided(self, text: str, parameters: list[str | None] | None,
                           decision: Judgement, index: int, request_id: int,
                           status: str) -> tuple[str, str]:
        """Record and word the end of a hold that did not end in an approval.  A cancel by
        the client is recorded as blocked (statement records have no "cancelled"; the
        request itself is closed as cancelled) and answered as the server answers a cancel."""
        cancelled = status == "cancelled"
        sqlstate = QueryCanceled.sqlstate if cancelled else BLOCKED_SQLSTATE
        final = self.recorder.record(text, decision, index, "blocked" if cancelled else status,
                                     parameters=parameters, approval_id=request_id,
                                     reason=f"approval request {request_id} {status}"
                                     + (" by the client" if cancelled else ""))
        await self.gate.spool_now(final, StatementOutcome(final.record_id, None, None, sqlstate))
        if cancelled:
            return sqlstate, (f"policyc: approval request {request_id} was cancelled by the "
                              "client; the statement did not run")
        return sqlstate, (
            f"policyc: approval request {request_id} was {status}; the statement did not run")

    async def _open_request(self, text: str, parameters: list[str | None] | None,
                            decision: Judgement, index: int, shapes: str,
                            estimated_rows: int | None) -> int:
        """Open the approval request for a statement (what the approver will see)."""
        state = self.state
        verdict = decision.verdicts[index]
        request_id: int = await self.approvals.request(
            session_id=state.session_id, agent=state.identity.subject, human=self._human(),
            group=state.group.name, statement=text, parameters=parameters,
            fingerprint=decision.fingerprint,
            tables=sorted(str(t) for t in verdict.tables),
            phi=sorted(str(c) for c in verdict.phi_columns), reason=f"needs approval: {shapes}",
            estimated_rows=estimated_rows, hold_seconds=self.hold_seconds,
            valid_for_seconds=self.valid_for_seconds)
        return request_id

    async def _ticket(self, text: str, parameters: list[str | None] | None,
                      decision: Judgement, index: int, shapes: str,
                      estimated_rows: int | None) -> tuple[str, str]:
        """Approval mode ``ticket``: nothing waits.  The statement is refused at once naming
        its request: the one still open for the identical statement (a retry before the
        decision opens no second request), else a new one, which closes as expired after
        ``hold``.  The identical statement runs once approved (:meth:`hold` finds it)."""
        request_id: int | None = await self.approvals.find_open(
            self.state.identity.subject, self.state.group.name, text, parameters)
        opened = request_id is None
        if request_id is None:
            request_id = await self._open_request(text, parameters, decision, index, shapes,
                                                  estimated_rows)
            self.approvals.expire_later(request_id, self.hold_seconds)
        why = f"needs approval: {shapes}" if opened else \
            f"needs approval: {shapes}; request {request_id} still pending"
        held = self.recorder.record(text, decision, index, "held", reason=why,
                                    parameters=parameters, approval_id=request_id)
        await self.gate.spool_now(held, StatementOutcome(held.record_id, None, None,
                                                         BLOCKED_SQLSTATE))
        said = f"opened ({shapes}; it stays open {self.hold_seconds} s)" if opened \
            else f"is still waiting for an approver ({shapes})"
        return BLOCKED_SQLSTATE, (
            f"policyc: approval request {request_id} {said}; the statement did not run. Run "
            f"the identical statement again (same text and parameters) once an approver "
            f"approves request {request_id}.")

    def cancel_hold(self) -> bool:
        """A CancelRequest with this session's key (it comes on another connection): end the
        statement held for approval now, True; False when nothing is held, and the server
        forwards the cancel upstream as before."""
        held = self._held
        if held is None:
            return False
        if not held.done():
            held.set_result(None)
        return True

    async def _await_decision(self, request_id: int) -> str:
        """Wait for the decision while watching the client: a client that goes away cancels
        its request and nothing runs, and so does a CancelRequest (:meth:`cancel_hold`), the
        session staying usable; bytes it sends meanwhile wait their turn (the inbox)."""
        metrics = self.state.metrics
        metrics.hold_started()
        started = time.monotonic()
        outcome = "client_gone"
        try:
            outcome = await self._decision_of(request_id)
            return outcome
        finally:
            metrics.hold_ended(outcome, time.monotonic() - started)

    async def _decision_of(self, request_id: int) -> str:
        decision = asyncio.ensure_future(self.approvals.wait(request_id, self.hold_seconds))
        cancelled = self._held if self._held is not None else \
            asyncio.get_running_loop().create_future()
        try:
            done = await self.inbox.hold_until(decision, cancelled)
        except asyncio.CancelledError:
            # the session ends under the hold (the proxy shuts down): the request is closed,
            # so no approver decides a statement that can no longer run
            decision.cancel()
            with contextlib.suppress(Exception):
                await self.approvals.close_request(
                    request_id, "cancelled", "the session ended while the statement was held "
                    f"({self.state.end_reason})")
            raise
        except ClientGone:
            decision.cancel()
            await self.approvals.close_request(request_id, "cancelled",
                                               "the client disconnected while held")
            self.state.end_reason = "client disconnected while a statement was held"
            raise SessionClosed from None
        if decision not in done:  # the client cancelled: withdraw the request
            final = await self.approvals.withdraw(
                request_id, "the client cancelled the statement while it was held")
            await decision  # woken by withdraw
            # a denial or expiry that came first stands; an approval that did stays in
            # force for a retry, but the client asked for this run to stop
            return final if final in ("denied", "expired") else "cancelled"
        return str(decision.result())

    # ---- row estimates ---------------------------------------------------------------

    def over_estimate(self, decision: Judgement) -> bool:
        """Worth an EXPLAIN: the group has a row limit, the query reads the policy's tables
        (catalog rows are never counted), and it can be explained in-band now (nothing
        outstanding on the session, which is idle or inside a healthy transaction)."""
        state = self.state
        if state.group.approval.rows_over is None or self.approvals is None:
            return False
        statements = decision.classification.statements
        return (len(statements) == 1 and statements[0].kind == "select" and not state.expected
                and state.transaction_status in ("I", "T")
                and not state.policy_tables.isdisjoint(
                    str(t) for t in decision.verdicts[0].tables))

    async def explain(self, sql: str) -> int | None:
        """The planner's row estimate for ``sql``, asked on the agent's own session (same role,
        same row filters, same search_path); None when it cannot tell.  Nothing of it reaches
        the client, and it leaves the session as it found it: outside a transaction the
        EXPLAIN is a transaction of its own; inside one it runs in a savepoint that is
        released, or rolled back and released when the EXPLAIN fails (an unknown column, a
        type error: the agent's own statement then fails with the server's real error, and
        the transaction is still the agent's to use).  The savepoint's name cannot collide:
        RELEASE and ROLLBACK TO act on the newest savepoint of a name, which is this one."""
        if self.state.transaction_status != "T":
            rows, _status, cancel = (await self._internal("EXPLAIN (FORMAT JSON) " + sql))[0]
            if cancel is not None:
                raise EstimateCancelled(*cancel)
            return rows
        savepoint = "SAVEPOINT policyc_estimate"
        release = "RELEASE SAVEPOINT policyc_estimate"
        answers = await self._internal(savepoint, "EXPLAIN (FORMAT JSON) " + sql, release)
        (_, saved, _), (rows, _, cancel), (_, released, _) = answers
        if saved == "T" and released == "T":
            return rows
        undo = await self._internal("ROLLBACK TO SAVEPOINT policyc_estimate", release)
        if saved != "T" or undo[-1][1] != "T":
            self.state.end_reason = \
                "the proxy's row estimate left the transaction in another state"
            raise ProtocolViolation(
                "policyc: the proxy could not restore the transaction after its row estimate; "
                "the session was ended (nothing of the statement ran)", InternalError.sqlstate)
        if cancel is not None:
            raise EstimateCancelled(*cancel)
        return None

    async def _internal(self, *queries: str) -> list[Answer]:
        """Run the proxy's own ``queries`` on the agent's session (pipelined): for each, the
        plan rows of an EXPLAIN (None otherwise or on error), the transaction status after
        it, and the cancel or timeout (57xxx) that ended it.  Their answers never reach the
        client (see :meth:`policyc.proxy.session.router.Router._explain_frame`)."""
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Answer]] = []
        for query in queries:
            waiter: asyncio.Future[Answer] = loop.create_future()
            self.state.expected.append(Expect("explain", explain=_answer_to(waiter)))
            self.upstream.write(Query(query).encode())
            waiters.append(waiter)
        await self.upstream.drain()
        return [await waiter for waiter in waiters]

    # ---- results over the row limit --------------------------------------------------

    def overflow(self, unit: Unit) -> bytes:
        """A result grew past the group's row limit: the rest is withheld and an approval
        request is opened so a human can allow it."""
        state = self.state
        group = state.group
        if unit.over_budget:
            budget = group.approval.budget
            assert budget is not None
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: this agent's row budget ({budget.rows} rows of this group's tables "
                f"per {budget.per_seconds} s, per session and per agent) is used up; the rest "
                "of the result was withheld. Ask an approver to run it, or wait."))
        limit = unit.limit
        if unit.record.kind == "execute":
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: the result has more than {limit} rows, over this group's approval "
                "threshold; the rest was withheld. An approval cannot name a statement run "
                "through EXECUTE: run the statement itself to ask for one."))
        if self.approvals is not None and unit.decision is not None:
            decision = unit.decision
            verdict = decision.verdicts[0] if decision.verdicts else None
            task = asyncio.get_running_loop().create_task(self.approvals.request(
                session_id=state.session_id, agent=state.identity.subject,
                human=self._human(), group=group.name, statement=unit.record.text,
                parameters=unit.parameters,
                fingerprint=decision.fingerprint,
                tables=sorted(str(t) for t in verdict.tables) if verdict else [],
                phi=sorted(str(c) for c in verdict.phi_columns) if verdict else [],
                reason=f"returned more than {limit} rows", estimated_rows=unit.rows,
                hold_seconds=self.hold_seconds, valid_for_seconds=self.valid_for_seconds))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self.approvals is None:
            return error_response(BLOCKED_SQLSTATE, (
                f"policyc: the result has more than {limit} rows, over this group's approval "
                "threshold; the rest was withheld (the policy names no approvers)"))
        return error_response(BLOCKED_SQLSTATE, (
            f"policyc: the result has more than {limit} rows, over this group's approval "
            "threshold; the rest was withheld and an approval request was opened "
            "(see `policyc approvals`). Run it again once it is approved."))


def _answer_to(waiter: asyncio.Future[Answer]) -> Callable[[Answer], None]:
    """The router's callback for one of the proxy's own queries: resolves ``waiter``."""
    def answer(result: Answer) -> None:
        if not waiter.done():
            waiter.set_result(result)
    return answer
