"""Session registration: a session's row in ``audit.sessions`` and its backend's identity.

* An accepted session is recorded ``open`` and its upstream backend registered
  (``policyc.register_session``) in one transaction on the audit log's session connection,
  before the session may run anything; if the database does not take both, the login is
  refused.
* A refused login is recorded in the database, else in the spool (bounded: refusals come
  before authentication, so a flood cannot fill the disk).
* A session's close is spooled (fire-and-forget) and drained like a statement; once its close
  is in the database the drainer removes its backend's identity, unless this proxy registered
  the pid again since.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from policyc.proxy.audit.books import Counts
from policyc.proxy.audit.connect import STATEMENT_TIMEOUT, Connector, close_quietly
from policyc.proxy.audit.events import rows_json, session_end_event, session_row
from policyc.proxy.audit.failures import AuditUnavailable, sqlstate_of
from policyc.proxy.audit.records import SessionEnd, SessionRecord
from policyc.proxy.audit.writer import LogState, Writer

log = logging.getLogger("policyc.proxy.audit")

INSERT_SESSIONS: Final = """
INSERT INTO audit.sessions (session_id, started_at, agent, group_name, oidc_groups, role_name,
    claims, client_addr, client_port, tls, tls_version, proxy, outcome, reason)
SELECT r.session_id, to_timestamp(r.started_at), r.agent, r.group_name, r.oidc_groups,
    r.role_name, r.claims, r.client_addr, r.client_port, r.tls, r.tls_version, r.proxy,
    r.outcome, r.reason
  FROM jsonb_to_recordset(%s::jsonb) AS r(session_id uuid, started_at double precision,
    agent text, group_name text, oidc_groups text[], role_name name, claims jsonb,
    client_addr inet, client_port int, tls boolean, tls_version text, proxy text,
    outcome text, reason text)
ON CONFLICT (session_id, started_at) DO NOTHING
"""

REGISTER_SESSION: Final = "SELECT policyc.register_session(%s, %s, %s, %s, %s)"
UNREGISTER_SESSIONS: Final = "SELECT policyc.unregister_session(p) FROM unnest(%s::int[]) AS p"


class SessionDesk:
    """Records sessions and (un)registers their backends; see the module docstring."""

    def __init__(self, connector: Connector, writer: Writer, state: LogState, counts: Counts,
                 *, proxy_name: str) -> None:
        self._connector = connector
        self._writer = writer
        self._state = state
        self._counts = counts
        self._proxy_name = proxy_name
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._registered: dict[int, str] = {}  # upstream backend pid -> session id
        self._unregister: list[tuple[int, str]] = []
        self._lock = asyncio.Lock()

    @property
    def unregister_due(self) -> bool:
        return bool(self._unregister)

    async def open_session(self, rec: SessionRecord, backend_pid: int | None) -> None:
        """Record an accepted session and register its upstream backend's identity.

        Raises :class:`AuditUnavailable` if the database does not take both (one transaction).
        """
        row = session_row(rec, "open", self._proxy_name)
        if backend_pid is not None and (rec.agent is None or rec.group is None):
            raise ValueError("registering a backend needs the session's agent and group")
        async with self._lock:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self._connector.db_timeout):
                        conn = await self._connect()
                        async with conn.transaction():
                            cur = await conn.execute(INSERT_SESSIONS, (rows_json([row]),))
                            if cur.rowcount != 1:
                                raise AuditUnavailable("the session id is already recorded",
                                                       "the session was refused")
                            if backend_pid is not None:
                                await conn.execute(REGISTER_SESSION, (
                                    backend_pid, rec.session_id, rec.agent, rec.group,
                                    Jsonb(row["claims"])))
                    break
                except psycopg.OperationalError as exc:
                    await self._drop_conn()
                    if attempt == 1:  # a connection the server dropped (e.g. a restart)
                        continue
                    log.error("audit database did not record session %s (%s): login refused",
                              rec.session_id, sqlstate_of(exc))
                    raise AuditUnavailable("the audit database did not record the session",
                                           "the session was refused") from exc
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    await self._drop_conn()
                    log.error("audit database did not record session %s (%s): login refused",
                              rec.session_id, sqlstate_of(exc))
                    raise AuditUnavailable("the audit database did not record the session",
                                           "the session was refused") from exc
            if backend_pid is not None:
                self._registered[backend_pid] = str(rec.session_id)

    async def refuse_session(self, rec: SessionRecord) -> None:
        """Record a refused login: in the database, else in the spool. Never raises."""
        row = session_row(rec, "refused", self._proxy_name)
        try:
            async with asyncio.timeout(self._connector.db_timeout):
                conn = await self._connect()
                await conn.execute(INSERT_SESSIONS, (rows_json([row]),))
            return
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop_conn()
            log.warning("audit database unreachable (%s): refused session %s spooled",
                        sqlstate_of(exc), rec.session_id)
        # refusals come before authentication: bound them, so a flood cannot fill the disk
        writer = self._writer
        try:
            if writer.spool.total_bytes + writer.queued_bytes > writer.max_spool_bytes:
                raise AuditUnavailable("the local audit spool is full")
            future = writer.enqueue([{"e": "session_refused", **row}], wait=True, limit=False)
            assert future is not None
            await future
        except AuditUnavailable as exc:
            self._counts["refused_dropped"] += 1
            log.error("refused session %s not recorded: %s", rec.session_id, exc.why)

    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None:
        """Queue the session's close; the drainer closes the row and unregisters the backend."""
        if not self._state.running or self._state.stopping:
            log.warning("audit log is not running: end of session %s not recorded",
                        end.session_id)
            return
        self._writer.enqueue([session_end_event(end, backend_pid)], wait=False, limit=False)

    def ended(self, pairs: list[tuple[int, str]]) -> None:
        """Sessions whose close is in the database: (backend pid, session id) to unregister."""
        self._unregister.extend(pairs)

    async def unregister_ended(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Remove identities of ended backends, unless this proxy re-registered the pid since."""
        if not self._unregister:
            return
        async with self._lock:
            pids = []
            for pid, sid in self._unregister:
                if self._registered.get(pid) == sid:
                    del self._registered[pid]
                    pids.append(pid)
            self._unregister.clear()
            if pids:
                # cleanup only: a stale identity never attaches to a new backend
                try:
                    async with asyncio.timeout(STATEMENT_TIMEOUT):
                        await conn.execute(UNREGISTER_SESSIONS, (pids,))
                except psycopg.DataError as exc:
                    log.warning("audit: unregistering ended backends failed (%s)",
                                sqlstate_of(exc))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connector.connect()
        return self._conn

    async def _drop_conn(self) -> None:
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed
                                 or conn.info.transaction_status
                                 != psycopg.pq.TransactionStatus.IDLE):
            self._conn = None
            await close_quietly(conn)
