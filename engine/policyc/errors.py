"""One error hierarchy for the CLI and the proxy.

Every error carries a stable ``code`` (used in CLI output and exit paths) and the SQLSTATE a
wire client receives, so callers branch on meaning and never parse messages.  Messages must
never contain PHI: they name objects (tables, columns, keys), never values.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicycError(Exception):
    """Base of all policyc errors."""

    code = "policyc"
    sqlstate = "XX000"


@dataclass(frozen=True, order=True)
class Location:
    """Where in a policy file a problem is: file, 1-based line, dotted key path."""

    file: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in a policy; ``check`` reports all of them at once."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PolicyError(PolicycError):
    """A policy file is invalid; carries every problem found, sorted by location."""

    code = "policy"
    sqlstate = "F0000"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CatalogError(PolicycError):
    """The live database does not match what the policy refers to (missing table, column...)."""

    code = "catalog"
    sqlstate = "42P01"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ApplyError(PolicycError):
    """Apply refused or failed; the transaction was rolled back."""

    code = "apply"
    sqlstate = "55000"


# --------------------------------------------------------------------------- by SQLSTATE

_BY_SQLSTATE: dict[str, type[SqlStateError]] = {}


class SqlStateError(PolicycError):
    """An error a wire client receives as an ErrorResponse, one class per SQLSTATE.

    In the spirit of psycopg's ``errors``: each subclass names its SQLSTATE once, in its
    class statement (``class QueryCanceled(SqlStateError, sqlstate="57014")``), and
    :func:`lookup` finds the class of a SQLSTATE, so callers branch on meaning, never on a
    string.  Registering a SQLSTATE twice raises at import, not at a customer's site.
    """

    code = "sqlstate"

    def __init_subclass__(cls, *, sqlstate: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if sqlstate is None:
            return
        if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
            raise ValueError(f"{cls.__name__}: {sqlstate!r} is not a SQLSTATE")
        if sqlstate in _BY_SQLSTATE:
            raise ValueError(f"SQLSTATE {sqlstate} is registered twice: "
                             f"{_BY_SQLSTATE[sqlstate].__name__} and {cls.__name__}")
        cls.sqlstate = sqlstate
        _BY_SQLSTATE[sqlstate] = cls


def lookup(sqlstate: str) -> type[SqlStateError]:
    """The error class of ``sqlstate``; KeyError when policyc defines none for it."""
    return _BY_SQLSTATE[sqlstate]


class ProtocolViolation(SqlStateError, sqlstate="08P01"):
    """The client broke the wire protocol's rules."""


class InvalidAuthorization(SqlStateError, sqlstate="28000"):
    """The client's authorization is not (or no longer) valid: an expired token, say."""


class InvalidPassword(SqlStateError, sqlstate="28P01"):
    """The credentials were refused."""


class InsufficientPrivilege(SqlStateError, sqlstate="42501"):
    """The policy does not let this agent run this statement (every policy block)."""


class SqlSyntaxError(SqlStateError, sqlstate="42601"):
    """The statement cannot be parsed (the judge refuses what it cannot read)."""


class ProgramLimitExceeded(SqlStateError, sqlstate="54000"):
    """The statement is too long, or holds a NUL character."""


class StatementTooComplex(SqlStateError, sqlstate="54001"):
    """The statement nests too deeply to be judged."""


class QueryCanceled(SqlStateError, sqlstate="57014"):
    """The client's cancel (or its statement_timeout) stopped the statement."""


class AdminShutdown(SqlStateError, sqlstate="57P01"):
    """The proxy is shutting down and ends the session."""


class AuditStorageFailure(SqlStateError, sqlstate="58030"):
    """An audit record could not be made durable, so the statement does not run (fail
    closed); the SQLSTATE of ``AuditUnavailable`` and of spool ownership failures."""


class InternalError(SqlStateError, sqlstate="XX000"):
    """A fault of policyc itself (the classifier met a shape it does not know, say)."""
