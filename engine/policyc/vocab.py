"""policyc's vocabulary, defined once: what a word means here is what it means everywhere.

Every name below is stored, sent or compared somewhere (audit rows, NOTIFY channels, policy
files, SQL the runtime installs), so each is a :class:`~enum.StrEnum`: a member *is* its
string (``Outcome.MASKED == "masked"``, ``f"{Outcome.MASKED}" == "masked"``, JSON and psycopg
write the value), and stored or serialised values stay exactly what they were.

One meaning per word:

* an :class:`Outcome` is what the judge says of one statement before it runs;
* a :class:`RecordDecision` is what an audit record says happened to it (the values of
  ``audit.statements.decision``, whose CHECK constraint in ``sql/`` lists the same words);
* an :class:`ApprovalStatus` is where a human's approval request stands;
* a :class:`Shape` is a risky statement shape the classifier finds (the reasons and rules of
  each live in the judge's registry, ``proxy/judge/registry/shapes.tsv``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "APPROVABLE_SHAPES",
    "IDENTITY_SCHEMA",
    "ApprovalStatus",
    "Channel",
    "IdentityFunction",
    "Outcome",
    "RecordDecision",
    "Shape",
]


class Outcome(StrEnum):
    """The judge's verdict on one statement, from the least to the most severe."""

    ALLOWED = "allowed"
    MASKED = "masked"  # runs as it is; it reads PHI columns the group's views mask
    NEEDS_APPROVAL = "needs_approval"  # runs only once a human approved it
    BLOCKED = "blocked"

    @property
    def runs_as_is(self) -> bool:
        """True when the statement may go upstream without a human (allowed or masked)."""
        return self in (Outcome.ALLOWED, Outcome.MASKED)


class RecordDecision(StrEnum):
    """What a statement record says became of the statement (``audit.statements.decision``)."""

    ALLOWED = "allowed"
    MASKED = "masked"
    BLOCKED = "blocked"
    HELD = "held"  # waiting for an approver (a later record says how it ended)
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    ERROR = "error"


class ApprovalStatus(StrEnum):
    """Where an approval request stands (``audit.approvals.status``)."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True once the request is decided (or gone): it never changes again."""
        return self is not ApprovalStatus.PENDING


class Shape(StrEnum):
    """A risky statement shape (see ``proxy/judge/registry/shapes.tsv`` for what each is)."""

    COPY_OUT = "copy_out"
    COPY_IN = "copy_in"
    COPY_PROGRAM = "copy_program"
    DELETE_ALL = "delete_all"
    UPDATE_ALL = "update_all"
    DDL = "ddl"
    TRUNCATE = "truncate"
    EXPLAIN_ANALYZE_WRITE = "explain_analyze_write"
    WRITE_IN_CTE = "write_in_cte"
    DO_BLOCK = "do_block"
    SET_CONFIG = "set_config"
    ROLE_CHANGE = "role_change"
    FILE_ACCESS = "file_access"
    LARGE_OBJECT = "large_object"
    DBLINK = "dblink"
    DYNAMIC_SQL = "dynamic_sql"
    PREPARE_TRANSACTION = "prepare_transaction"
    LOCK = "lock"
    SLEEP = "sleep"
    SYSTEM_ADMIN = "system_admin"
    RUN_BY_NAME = "run_by_name"


#: The shapes a policy may list under ``approval.statements`` (the others are always blocked
#: or, like ``sleep``, only recorded), in the order the policy schema lists them.
APPROVABLE_SHAPES: Final[tuple[Shape, ...]] = (
    Shape.COPY_OUT,
    Shape.COPY_IN,
    Shape.DELETE_ALL,
    Shape.UPDATE_ALL,
    Shape.DDL,
    Shape.TRUNCATE,
    Shape.EXPLAIN_ANALYZE_WRITE,
    Shape.WRITE_IN_CTE,
    Shape.DO_BLOCK,
)


class Channel(StrEnum):
    """The NOTIFY channels of approvals.  The runtime's SQL (``sql/extension``) notifies on
    the same names; agents may neither LISTEN nor NOTIFY on any ``policyc*`` channel."""

    APPROVAL_REQUESTS = "policyc_approval_requests"  # payload: the new request's id
    APPROVAL_DECISIONS = "policyc_approvals"  # payload: JSON with the request id and status


#: Schema of policyc's own SQL functions (:class:`IdentityFunction`).
IDENTITY_SCHEMA: Final = "policyc"


class IdentityFunction(StrEnum):
    """``policyc.*`` functions that read the verified identity of the session: agents may
    call them, and row filters may use them."""

    CLAIM = "claim"
    AGENT = "agent"
    SESSION_ID = "session_id"
