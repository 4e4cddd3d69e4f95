"""The DBA's timeout ceilings for a group's sessions (issue #11, class 8; docs/limits.md).

A group's sessions start with ``statement_timeout``, ``lock_timeout`` and
``idle_in_transaction_session_timeout`` as the DBA set them: in the policy (``groups.G.limits``,
which apply writes as role settings) or by hand on the role, the role in the database, the
database or the server.  Agents may tighten them and never loosen them; the judge of that needs
the ceilings, which :func:`session_timeout_ceilings` reads through a connection of the proxy's
own (never the agent's session: what an agent put in its startup packet must not count).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import psycopg

from policyc.errors import AuditStorageFailure, PolicycError
from policyc.resources import sql_dir

TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")

# PostgreSQL's time units (guc.c) in milliseconds, the unit of these three settings
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0,
          "d": 86_400_000.0}
_VALUE = re.compile(
    r"\s*(?P<number>0[xX][0-9a-fA-F]+|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"\s*(?P<unit>[a-z]*)\s*"
)
_INT_MAX = 2**31 - 1


class CeilingsUnavailable(PolicycError):
    """The ceilings could not be read or a stored value not understood (fail closed)."""

    code = "ceilings"
    sqlstate = AuditStorageFailure.sqlstate


def timeout_ms(value: str) -> int:
    """A stored timeout setting (``30s``, ``5min``, ``1500``: bare numbers are ms) in ms, as
    PostgreSQL reads it (fractions rounded, hex and octal integers); raises ValueError."""
    found = _VALUE.fullmatch(value)
    if found is None:
        raise ValueError("not a time value")
    number, unit = found["number"], found["unit"]
    if unit and unit not in _UNITS:
        raise ValueError("unknown time unit")
    if number.lower().startswith("0x"):
        amount = float(int(number, 16))
    elif re.fullmatch(r"0[0-7]+", number):
        amount = float(int(number, 8))
    else:
        amount = float(number)
    ms = amount * _UNITS[unit or "ms"]
    if not math.isfinite(ms) or ms < 0 or round(ms) > _INT_MAX:
        raise ValueError("out of range")
    return round(ms)


@functools.cache
def _query() -> str:
    return (sql_dir() / "proxy" / "timeout_ceilings.sql").read_text()


async def session_timeout_ceilings(conn: psycopg.AsyncConnection[Any],
                                   role: str) -> dict[str, int]:
    """Each timeout of :data:`TIMEOUTS` in ms as a session of ``role`` in ``conn``'s database
    starts with, before any client setting; 0 means none (PostgreSQL's own meaning).

    The most specific level wins, as in the server: the role in this database, the role, the
    database, the server.  The server level is ``conn``'s own value when it comes from the
    server's configuration (pass a connection whose role and session set none of the three,
    such as the proxy's audit connection), else the compiled default (0).  Raises
    :class:`CeilingsUnavailable` when the database cannot be read or a value is not a time.
    """
    try:
        cursor = await conn.execute(_query(), {"role": role, "names": list(TIMEOUTS)})
        rows = await cursor.fetchall()
    except psycopg.Error as exc:
        raise CeilingsUnavailable(
            f"cannot read the timeout settings of role {role} ({exc.sqlstate or 'no SQLSTATE'})"
        ) from None
    best: dict[str, tuple[int, str]] = {}
    for level, name, value in rows:
        if name not in best or level > best[name][0]:
            best[name] = (int(level), str(value))
    ceilings: dict[str, int] = {}
    for name in TIMEOUTS:
        level, value = best.get(name, (0, "0"))
        try:
            ceilings[name] = timeout_ms(value)
        except ValueError as exc:
            raise CeilingsUnavailable(
                f"the {name} set for role {role} (level {level}) is not understood: {exc}"
            ) from None
    return ceilings
