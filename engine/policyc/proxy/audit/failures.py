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


def connect_failure(exc: BaseException) -> str:
    """What the proxy may say of a failure to reach the database with its own connection:
    PostgreSQL's (libpq's) message, which names the host, the user and the reason ("password
    authentication failed", "Connection refused") and carries no data of any agent's, with
    its SQLSTATE when it has one. Only for the service's own connections and queries."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " ".join(lines)[:400] or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{message} [{sqlstate}]" if sqlstate else message
