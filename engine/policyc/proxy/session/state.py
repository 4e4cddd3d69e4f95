"""What one proxied session knows, as data: no I/O and no rules here.

The collaborators of a session (router, record gate, hold desk, frontend handlers, pump)
share one :class:`SessionState` and the data types below; each rule lives with the
collaborator that applies it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from policyc.identity import AgentIdentity
from policyc.policy.model import Group, ResultRecording
from policyc.proxy.audit.records import SessionEnd, StatementOutcome, StatementRecord
from policyc.proxy.judge.cache import Judgement
from policyc.proxy.metrics import ProxyMetrics
from policyc.proxy.names import NameBook
from policyc.proxy.results import ResultBudget, ResultCapture


class AuditSink(Protocol):
    def spool_statement(self, rec: StatementRecord,
                        outcome: StatementOutcome | None = None) -> asyncio.Future[None]: ...
    def finish_statement(self, outcome: StatementOutcome) -> None: ...
    def record_statement_later(self, rec: StatementRecord,
                               outcome: StatementOutcome) -> None: ...
    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None: ...


class SessionClosed(Exception):
    """Raised to end the pump; the message (if any) was already sent to the client."""


#: What one of the proxy's own queries answered: plan rows, transaction status, and the
#: (sqlstate, message) of a cancel or timeout that ended it.
Answer = tuple[int | None, str, tuple[str, str] | None]


@dataclass
class Unit:
    """One statement execution being audited."""

    record: StatementRecord
    started: float = 0.0
    rows: int = 0
    digest: Any = None
    finished: bool = False
    limit: int | None = None  # rows the agent may receive without an approval
    overflow: bool = False
    parameters: list[str | None] | None = None
    decision: Judgement | None = None
    capture: ResultCapture | None = None  # results: full
    header: bytes | None = None  # the RowDescription / CopyOutResponse of its own response
    portal: Portal | None = None  # extended protocol: where a described header may be
    carry: Portal | None = None  # the portal or cursor whose run this is a piece of
    budgeted: bool = False  # its rows are rows of the group's tables: they use the budget
    over_budget: bool = False  # withheld because the session's row budget was used up
    # its answer may leave before its record is durable (BEGIN, SAVEPOINT, RELEASE: see
    # policyc.proxy.session.gate)
    answers_early: bool = False


@dataclass
class Expect:
    """A response the server owes us, in order."""

    kind: str  # parse | bind | describe | close | execute | stmt | sync | explain
    unit: Unit | None = None
    rewrite: tuple[str, str] | None = None  # (sqlstate, message) replacing the server's error
    prepared: Prepared | None = None  # for Describe of a statement: learns parameter types
    portal: Portal | None = None  # for Describe of a portal: learns its RowDescription
    # a query the proxy runs for itself (an EXPLAIN): told its plan rows, the transaction
    # status after it, and the cancel that ended it, at its ReadyForQuery
    explain: Callable[[Answer], None] | None = None
    explain_rows: int | None = None
    explain_error: tuple[str, str] | None = None  # a cancel or timeout that ended it
    # the response goes to the client only once this is done (its batch was sent upstream
    # before its records were durable); a failed gate ends the session instead
    gate: asyncio.Future[None] | None = None
    # told whether the server completed the message (True) or failed or skipped it (False):
    # how the proxy's belief about statement and portal names follows the server's
    on_done: Callable[[bool], None] | None = None
    batch: int = 0  # for a sync: the client batch it ends


@dataclass
class Prepared:
    sql: str
    decision: Judgement | None
    refused: tuple[str, str] | None = None  # (sqlstate, message) when the statement must not run
    param_types: tuple[int, ...] = ()
    row_description: bytes | None = None  # results: full, from a Describe of the statement
    index: int = 0  # which statement of ``decision`` this is (SQL PREPARE/DECLARE in a query)

    @property
    def runs_as_is(self) -> bool:
        """Judged runnable without a human: what SQL EXECUTE and FETCH may run by name."""
        decision = self.decision
        if self.refused is not None or decision is None or self.index >= len(decision.verdicts):
            return False
        return decision.verdicts[self.index].outcome in ("allowed", "masked")

    def touches(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(tables, PHI columns) of the statement, for the records of runs by name."""
        decision = self.decision
        if decision is None or self.index >= len(decision.audit_fields):
            return (), ()
        _kind, tables, phi = decision.audit_fields[self.index]
        return tables, phi


@dataclass
class Portal:
    prepared: Prepared
    parameters: list[str | None]
    result_formats: tuple[int, ...] = ()
    row_description: bytes | None = None  # results: full, from a Describe of the portal
    # rows it sent so far, over every Execute (max_rows) and FETCH of it: rows_over counts
    # a portal's or cursor's whole run, not each piece of it
    rows_sent: int = 0
    # a SQL cursor (DECLARE): an Execute of it fetches its rows, never runs the DECLARE again
    cursor: bool = False


@dataclass
class SessionState:
    """Per-connection state every collaborator reads; each field's rules live with the one
    collaborator that changes it (named in its comment)."""

    session_id: uuid.UUID
    identity: AgentIdentity
    group: Group
    results: ResultRecording = ResultRecording.DIGEST
    results_limit: int = 16 << 20  # uncompressed result bytes kept per session (results: full)
    clock: Callable[[], float] = time.time
    # the responses the server owes, in order (router pops, handlers and hold desk push)
    expected: deque[Expect] = field(default_factory=deque)
    # what the server holds under each prepared statement and portal name (Parse and SQL
    # PREPARE share one namespace; Bind and DECLARE another): see policyc.proxy.names
    statements: NameBook[Prepared] = field(default_factory=lambda: NameBook("statement"))
    portals: NameBook[Portal] = field(default_factory=lambda: NameBook("portal"))
    batch: int = 0  # client batches so far (each Sync or Query ends one): handlers
    answered: int = -1  # the last batch the server has answered (ReadyForQuery): router
    # woken by the router at each ReadyForQuery that ends a client batch
    answer_waiters: list[Callable[[], None]] = field(default_factory=list)
    unsynced: bool = False  # extended-protocol messages since the last Sync: handlers
    transaction_status: str = "I"  # the server's last ReadyForQuery: router
    end_reason: str = "client closed the connection"
    seq: int = 0  # the last statement seq this session assigned: recorder
    # the DBA's statement/lock/idle-in-transaction timeouts of the group role, in ms (0:
    # none): agents may lower them, never raise or disable them
    timeout_ceilings: dict[str, int] = field(default_factory=dict)
    # rows of the group's tables this session may still send (approval.budget); None: no
    # budget.  The server starts it at the budget less what the agent used in the window.
    row_budget_left: int | None = None
    # the proxy's tallies for /metrics (policyc.proxy.metrics): recorder, router, hold desk
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    policy_tables: frozenset[str] = field(init=False)
    budget: ResultBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = ResultBudget(self.results_limit)
        self.policy_tables = frozenset(str(t) for t in self.group.tables())
