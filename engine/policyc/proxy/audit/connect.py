"""The audit log's own connections to the database, only ever to the one that owns the spool.

Once the spool's owner is known (:mod:`policyc.proxy.audit.owner`), every connection opened
later is checked to reach that same database: a host name that starts pointing at another
cluster while the proxy runs never receives the spool's records (:class:`ForeignUpstream`,
which the drainer treats as an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Final

import psycopg

from policyc.proxy.audit.failures import ForeignUpstream
from policyc.proxy.audit.owner import SpoolOwnershipError, UpstreamIdentity, read_identity

log = logging.getLogger("policyc.proxy.audit")

#: Every audit connection says so; an instance's liveness is read from it (see
#: :mod:`policyc.proxy.audit.sessions`).
APPLICATION_NAME: Final = "policyc-proxy-audit"
#: The longest one drain or upkeep statement may take.
STATEMENT_TIMEOUT: Final = 30.0


class Connector:
    """Opens audit connections (autocommit) to ``conninfo``."""

    def __init__(self, conninfo: str, db_timeout: float,
                 application_name: str = APPLICATION_NAME) -> None:
        self.conninfo = conninfo
        self.db_timeout = db_timeout
        self.application_name = application_name
        self.owner: UpstreamIdentity | None = None  # verified at start
        self._foreign_logged: UpstreamIdentity | None = None

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A new audit connection; once the spool's owner is known, only to that database
        (:class:`ForeignUpstream` otherwise: the drainer treats it as an outage)."""
        async with asyncio.timeout(self.db_timeout):
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, application_name=self.application_name,
                connect_timeout=max(2, math.ceil(self.db_timeout)),
            )
            owner = self.owner
            if owner is None:
                return conn
            try:
                reached = await read_identity(conn, owner.host, owner.port)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.close()
                if isinstance(exc, SpoolOwnershipError):  # EXECUTE revoked since the start
                    raise ForeignUpstream("cannot identify the audit database") from exc
                raise
        if reached.same_database(owner):
            return conn
        with contextlib.suppress(Exception):
            await conn.close()
        if self._foreign_logged != reached:
            self._foreign_logged = reached
            log.error("audit connection reached %s, but the spool belongs to %s: nothing is "
                      "written there; retrying", reached.describe(), owner.describe())
        raise ForeignUpstream("the audit connection reached another database")


async def close_quietly(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
