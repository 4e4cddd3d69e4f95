"""One way for every command to reach the database: libpq conventions (``--dsn``, else the
``PG*`` environment), autocommit, and a name in ``pg_stat_activity`` saying which command."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from policyc.errors import PolicycError


class BadConnectionString(PolicycError):
    """``--dsn`` (or ``--upstream``) is not a libpq connection string."""

    code = "dsn"


def check_dsn(dsn: str | None) -> None:
    """Refuse a connection string libpq cannot read, with a hint and without repeating it
    (it may hold a password, and libpq's message quotes the part it stumbled on)."""
    try:
        conninfo_to_dict(dsn or "")
    except psycopg.ProgrammingError:
        raise BadConnectionString(
            "the connection string is not one libpq can read: give key=value pairs "
            "('host=db.example dbname=clinic user=dba') or a URI "
            "('postgresql://dba@db.example/clinic'); it is not repeated here, as it may hold "
            "a password") from None


def connect(dsn: str | None, application: str | None = None) -> psycopg.Connection[Any]:
    check_dsn(dsn)
    if application is None:
        return psycopg.connect(dsn or "", autocommit=True)
    return psycopg.connect(dsn or "", autocommit=True, application_name=application)
