"""What a login reads from the database through a connection of the proxy's own: the DBA's
timeout ceilings of the group role (cached) and what is left of the agent's row budget.

Never through the agent's session: what an agent put in its startup packet must not count.
Both fail closed: :class:`CeilingsUnavailable` when the database cannot be read, and the login
is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from policyc.policy.model import Group
from policyc.proxy.ceilings import CeilingsUnavailable, session_timeout_ceilings
from policyc.resources import sql_dir

#: How long the DBA's timeout ceilings of a group role are trusted before being read again.
CEILINGS_SECONDS = 60.0


@functools.cache
def _rows_used_sql() -> str:
    return (sql_dir() / "proxy" / "rows_used.sql").read_text()


@dataclass
class LoginReads:
    """The proxy's own connection for what a login needs to read, one user at a time."""

    conninfo: str
    # the DBA's timeout ceilings per group role: (read at, ceilings)
    _ceilings: dict[str, tuple[float, dict[str, int]]] = field(default_factory=dict)
    _conn: psycopg.AsyncConnection[Any] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def rows_left(self, agent: str, group: Group) -> int | None:
        """What is left of the agent's row budget (``approval.budget``) in its window, from
        what every proxy recorded; None when the group has no budget.  Raises
        CeilingsUnavailable when the trail cannot be read (the login is refused)."""
        budget = group.approval.budget
        if budget is None:
            return None
        async with self._service("the audit trail cannot be read") as conn:
            cursor = await conn.execute(
                _rows_used_sql(),
                {"agent": agent, "group": group.name, "seconds": budget.per_seconds,
                 "tables": [str(t) for t in group.tables()]})
            row = await cursor.fetchone()
        used = int(row[0]) if row else 0
        return max(0, budget.rows - used)

    async def timeout_ceilings(self, role: str) -> dict[str, int]:
        """The DBA's statement, lock and idle-in-transaction timeouts for ``role`` (ms, 0:
        none), re-read at most every :data:`CEILINGS_SECONDS`; CeilingsUnavailable when they
        cannot be read (fail closed: the login is refused)."""
        now = time.monotonic()
        found = self._ceilings.get(role)
        if found is not None and now - found[0] < CEILINGS_SECONDS:
            return found[1]
        async with self._service("the database cannot be reached") as conn:
            ceilings = await session_timeout_ceilings(conn, role)
        self._ceilings[role] = (now, ceilings)
        return ceilings

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    @contextlib.asynccontextmanager
    async def _service(self, why: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, (re)opened on demand; CeilingsUnavailable (the login is refused)
        when it fails."""
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self.conninfo,
                                                                       autocommit=True)
                yield self._conn
            except (psycopg.Error, OSError):
                self._conn = None
                raise CeilingsUnavailable(why) from None
