"""How the audit log fails: the refusal a session sees, and what a log line may say of a cause.

Nothing here logs statement text, parameters or claims: only SQLSTATEs or exception names.
"""

from __future__ import annotations

from policyc.errors import AuditStorageFailure, PolicycError


class AuditUnavailable(PolicycError):
    """The audit record could not be made durable, so the statement (or session) was refused."""

    code = "audit"
    sqlstate = AuditStorageFailure.sqlstate

    def __init__(self, why: str, consequence: str = "the statement did not run") -> None:
        self.why = why
        super().__init__(f"policyc: the audit trail is unavailable ({why}); {consequence}")


class ForeignUpstream(OSError):
    """An audit connection reached a database other than the one that owns the spool."""


def sqlstate_of(exc: BaseException) -> str:
    """What a log line may say about ``exc``: its SQLSTATE, else its type's name."""
    return getattr(exc, "sqlstate", None) or type(exc).__name__
