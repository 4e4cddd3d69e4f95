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


def needs_superuser(reason: str, command: str, why: str) -> PolicycError:
    """The one line for a command run without the privileges it needs: ``reason`` (the
    server's message, e.g. ``permission denied for table applied_objects``), the command, and
    ``why`` it needs a superuser (README "Privileges")."""
    return PolicycError(f"{reason}: {command} needs a superuser ({why}); README \"Privileges\"")


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


class SqlserverRejectedEstablishmentOfSqlconnection(SqlStateError, sqlstate="08004"):
    """The database refused to open an agent's session (other than for too many connections)."""


class ConnectionFailure(SqlStateError, sqlstate="08006"):
    """The database cannot be reached, or it dropped the connection while the proxy logged in."""


class ProtocolViolation(SqlStateError, sqlstate="08P01"):
    """The client (or the server) broke the wire protocol's rules."""


class FeatureNotSupported(SqlStateError, sqlstate="0A000"):
    """The client asks for a frontend protocol version the proxy does not speak."""


class CharacterNotInRepertoire(SqlStateError, sqlstate="22021"):
    """A string in a client's message is not valid UTF-8."""


class InvalidParameterValue(SqlStateError, sqlstate="22023"):
    """A startup packet's client_encoding or ``options`` string cannot be accepted."""


class InvalidSqlStatementName(SqlStateError, sqlstate="26000"):
    """A client names a prepared statement the proxy does not know to exist."""


class InvalidAuthorization(SqlStateError, sqlstate="28000"):
    """The client's authorization is not (or no longer) valid: an expired token, a login
    without TLS, say; also a SCRAM exchange with the database that does not verify."""


class InvalidPassword(SqlStateError, sqlstate="28P01"):
    """The credentials were refused: an agent's token, or the service role's password."""


class InvalidCursorName(SqlStateError, sqlstate="34000"):
    """A client names a portal the proxy does not know to be open."""


class InvalidCatalogName(SqlStateError, sqlstate="3D000"):
    """The startup packet names a database this proxy does not serve."""


class InsufficientPrivilege(SqlStateError, sqlstate="42501"):
    """The policy does not let this agent run this statement (every policy block), or set
    what it asks for at login (a pinned setting, replication)."""


class SqlSyntaxError(SqlStateError, sqlstate="42601"):
    """The statement cannot be parsed (the judge refuses what it cannot read)."""


class NameTooLong(SqlStateError, sqlstate="42622"):
    """A statement or portal name is longer than the server keeps whole (63 bytes)."""


class DuplicateCursor(SqlStateError, sqlstate="42P03"):
    """A client opens a portal under a name that is still open."""


class DuplicatePreparedStatement(SqlStateError, sqlstate="42P05"):
    """A client prepares a statement under a name that still exists."""


class TooManyConnections(SqlStateError, sqlstate="53300"):
    """A connection cap of the proxy, or the database's own limit, refuses a session."""


class ProgramLimitExceeded(SqlStateError, sqlstate="54000"):
    """The statement is too long, or holds a NUL character."""


class StatementTooComplex(SqlStateError, sqlstate="54001"):
    """The statement nests too deeply to be judged."""


class QueryCanceled(SqlStateError, sqlstate="57014"):
    """The client's cancel (or its statement_timeout) stopped the statement or ended its
    hold; also a login that timed out."""


class AdminShutdown(SqlStateError, sqlstate="57P01"):
    """The proxy is shutting down, or the database ended the session, so the session ends."""


class SystemError_(SqlStateError, sqlstate="58000"):  # "_": Python has a SystemError
    """Development keys cannot be written, read or used (``policyc devkeys``)."""


class AuditStorageFailure(SqlStateError, sqlstate="58030"):
    """An audit record could not be made durable, so the statement does not run (fail
    closed); the SQLSTATE of ``AuditUnavailable``, of spool ownership failures and of a
    group's timeout ceilings that cannot be read."""


class ConfigFileError(SqlStateError, sqlstate="F0000"):
    """Configuration is unusable: proxy settings, identity section, key set, webhook secret."""


class InternalError(SqlStateError, sqlstate="XX000"):
    """A fault of policyc itself (the classifier met a shape it does not know, say)."""
