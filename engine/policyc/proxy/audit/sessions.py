"""Session registration: a session's row in ``audit.sessions`` and its backend's identity.

* An accepted session is recorded ``open`` and its upstream backend registered
  (``policyc.register_session``) in one transaction on the audit log's session connection,
  before the session may run anything; if the database does not take both, the login is
  refused.
* A refused login is recorded in the database, else in the spool (bounded: refusals come
  before authentication, so a flood cannot fill the disk).
* A session's close is spooled (fire-and-forget) and drained like a statement; once its close
  is in the database the drainer removes its backend's identity, unless this proxy registered
  the pid again since, and only if the identity is still the one this session registered
  (``policyc.unregister_session(pid, session_id)``, runtime 0.5.0): with several proxy
  instances on one database, another instance may have registered the same backend pid,
  reused by PostgreSQL, in between.  Against an older runtime the proxy falls back to the
  unconditional ``unregister_session(pid)`` of before.

Several instances, one database (runtime 0.5.0).  An *instance* is a spool: its id lives in
the spool directory (:func:`~policyc.proxy.audit.owner.instance_id`), so a proxy restarted on
its spool is the same instance, and a *run* is one process on it.  Every session an instance
opens is listed in ``policyc.proxy_sessions`` (same transaction as its row) until its close
is drained, and each instance writes a heartbeat (``policyc.proxy_instances.heartbeat_at``,
the database's clock) every ``heartbeat_every`` seconds and before its first session.  The
rule that closes a crashed instance's sessions (``outcome = 'closed'``, ``end_reason``
:data:`ORPHANED_REASON`, ``end_seq`` filled by the database after the last recorded
statement):

* **its own previous runs**: once a run has drained what its spool recovered (so every close
  and every statement the crashed run made durable is in the database), it closes the
  sessions its earlier runs left open: a run's sessions cannot outlive its process;
* **another instance's**, by any instance, once that instance's heartbeat is older than
  ``dead_after`` (default 15 minutes): its host is presumed gone with its spool (an instance
  whose audit connection is down that long stops beating too).  Known limit:
  if that spool is recovered after all, its late records of such a session arrive after the
  session's recorded end (a record at the end's position is quarantined, never dropped, and
  ``audit verify`` reports what lies beyond); choose ``dead_after`` longer than any restart.

A sweep claims a session by deleting its ``proxy_sessions`` row before closing it, so two
instances never close the same session twice (the second finds no row).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
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

_INSERT_SESSIONS: Final = """
INSERT INTO audit.sessions (session_id, started_at, agent, group_name, oidc_groups, role_name,
    claims, client_addr, client_port, tls, tls_version, proxy, outcome, reason{column})
SELECT r.session_id, to_timestamp(r.started_at), r.agent, r.group_name, r.oidc_groups,
    r.role_name, r.claims, r.client_addr, r.client_port, r.tls, r.tls_version, r.proxy,
    r.outcome, r.reason{value}
  FROM jsonb_to_recordset(%s::jsonb) AS r(session_id uuid, started_at double precision,
    agent text, group_name text, oidc_groups text[], role_name name, claims jsonb,
    client_addr inet, client_port int, tls boolean, tls_version text, proxy text,
    outcome text, reason text{type})
ON CONFLICT (session_id, started_at) DO NOTHING
"""
#: Before runtime 0.7.0: no policy_hash column (the rows' policy_hash key is left unread).
INSERT_SESSIONS: Final = _INSERT_SESSIONS.format(column="", value="", type="")
#: Runtime 0.7.0: with the policy version of each session.
INSERT_SESSIONS_HASHED: Final = _INSERT_SESSIONS.format(
    column=", policy_hash", value=", r.policy_hash", type=", policy_hash text")
RECORDS_POLICY_HASH: Final = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = pg_catalog.to_regclass('audit.sessions')
                  AND attname = 'policy_hash' AND NOT attisdropped)
"""

REGISTER_SESSION: Final = "SELECT policyc.register_session(%s, %s, %s, %s, %s)"
#: Runtime 0.5.0: only the registration this session made (see the module docstring).
UNREGISTER_OWN: Final = """
SELECT policyc.unregister_session(u.pid, u.session_id)
  FROM unnest(%s::int[], %s::uuid[]) AS u(pid, session_id)
"""
#: Before runtime 0.5.0: whatever is registered for the pid.
UNREGISTER_PIDS: Final = "SELECT policyc.unregister_session(p) FROM unnest(%s::int[]) AS p"
SUPPORTS_INSTANCES: Final = """
SELECT to_regclass('policyc.proxy_sessions') IS NOT NULL
   AND to_regprocedure('policyc.unregister_session(int, uuid)') IS NOT NULL
"""
HEARTBEAT: Final = """
INSERT INTO policyc.proxy_instances AS i (instance, proxy, heartbeat_at)
VALUES (%s, %s, now())
ON CONFLICT (instance) DO UPDATE SET heartbeat_at = now(), proxy = excluded.proxy
"""
LIST_SESSION: Final = """
INSERT INTO policyc.proxy_sessions (session_id, started_at, instance, run)
VALUES (%s, to_timestamp(%s), %s, %s)
"""
UNLIST_SESSIONS: Final = """
DELETE FROM policyc.proxy_sessions p
 USING jsonb_to_recordset(%s::jsonb) AS r(session_id uuid)
 WHERE p.session_id = r.session_id
"""
_CLOSE_CLAIMED: Final = """
WITH claimed AS (
    DELETE FROM policyc.proxy_sessions p WHERE {which}
    RETURNING p.session_id, p.started_at)
UPDATE audit.sessions s SET ended_at = now(), end_reason = %(reason)s, outcome = 'closed'
  FROM claimed
 WHERE s.session_id = claimed.session_id AND s.started_at = claimed.started_at
   AND s.ended_at IS NULL AND s.outcome = 'open'
"""
CLOSE_EARLIER_RUNS: Final = _CLOSE_CLAIMED.format(
    which="p.instance = %(instance)s AND p.run <> %(run)s")
CLOSE_DEAD_INSTANCES: Final = _CLOSE_CLAIMED.format(which="""p.instance <> %(instance)s
       AND NOT EXISTS (SELECT 1 FROM policyc.proxy_instances i
                        WHERE i.instance = p.instance
                          AND i.heartbeat_at >= now() - make_interval(secs => %(dead_after)s))""")
FORGET_DEAD_INSTANCES: Final = """
DELETE FROM policyc.proxy_instances i
 WHERE i.heartbeat_at < now() - make_interval(secs => %(dead_after)s)
   AND NOT EXISTS (SELECT 1 FROM policyc.proxy_sessions p WHERE p.instance = i.instance)
"""
ORPHANED_REASON: Final = "proxy instance stopped before the session ended"
HEARTBEAT_EVERY: Final = 10.0
DEAD_AFTER: Final = 900.0


class SessionDesk:
    """Records sessions and (un)registers their backends; see the module docstring."""

    def __init__(self, connector: Connector, writer: Writer, state: LogState, counts: Counts,
                 *, proxy_name: str, heartbeat_every: float = HEARTBEAT_EVERY,
                 dead_after: float = DEAD_AFTER) -> None:
        self.instance: uuid.UUID | None = None  # the spool's, set at start
        self.run = uuid.uuid4()
        self.supported: bool | None = None  # runtime 0.5.0 or later; None: not known yet
        self.hashes_policy: bool | None = None  # runtime 0.7.0 or later; None: not known yet
        self._heartbeat_every = heartbeat_every
        self._dead_after = dead_after
        self._next_heartbeat = 0.0  # monotonic; 0: before the first
        self._earlier_runs_closed = False
        self._old_runtime_logged = False
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
                            cur = await conn.execute(await self.insert_sql(conn),
                                                     (rows_json([row]),))
                            if cur.rowcount != 1:
                                raise AuditUnavailable("the session id is already recorded",
                                                       "the session was refused")
                            if backend_pid is not None:
                                await conn.execute(REGISTER_SESSION, (
                                    backend_pid, rec.session_id, rec.agent, rec.group,
                                    Jsonb(row["claims"])))
                            await self._list(conn, row)
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
                await conn.execute(await self.insert_sql(conn), (rows_json([row]),))
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

    async def _list(self, conn: psycopg.AsyncConnection[Any], row: dict[str, Any]) -> None:
        """List an opened session under this instance (and run), alive before its first."""
        if self.instance is None or not await self.supports_instances(conn):
            return
        if not self._next_heartbeat:
            await self._heartbeat(conn)
        await conn.execute(LIST_SESSION, (row["session_id"], row["started_at"], self.instance,
                                          self.run))

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
        """Remove identities of ended backends, unless this proxy re-registered the pid since
        (or, runtime 0.5.0, anyone registered it for another session)."""
        if not self._unregister:
            return
        async with self._lock:
            ended = []
            for pid, sid in self._unregister:
                if self._registered.get(pid) == sid:
                    del self._registered[pid]
                    ended.append((pid, sid))
            self._unregister.clear()
            if ended:
                pids = [pid for pid, _ in ended]
                # cleanup only: a stale identity never attaches to a new backend
                try:
                    async with asyncio.timeout(STATEMENT_TIMEOUT):
                        if await self.supports_instances(conn):
                            await conn.execute(UNREGISTER_OWN,
                                               (pids, [sid for _, sid in ended]))
                        else:
                            await conn.execute(UNREGISTER_PIDS, (pids,))
                except psycopg.DataError as exc:
                    log.warning("audit: unregistering ended backends failed (%s)",
                                sqlstate_of(exc))

    # --- the runtime's features -----------------------------------------------------------
    async def insert_sql(self, conn: psycopg.AsyncConnection[Any]) -> str:
        """The INSERT of session rows for the database's runtime: with ``policy_hash`` from
        0.7.0 on (asked once, until :meth:`forget_runtime`)."""
        if self.hashes_policy is None:
            cur = await conn.execute(RECORDS_POLICY_HASH)
            found = await cur.fetchone()
            self.hashes_policy = bool(found and found[0])
        return INSERT_SESSIONS_HASHED if self.hashes_policy else INSERT_SESSIONS

    def forget_runtime(self) -> None:
        """Ask the database again what its runtime supports (it may have been upgraded by
        ``policyc apply`` since: the proxy is told so by a reload)."""
        self.supported = None
        self.hashes_policy = None

    # --- instances ------------------------------------------------------------------------
    async def supports_instances(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Whether the database's runtime lists sessions by instance (0.5.0 on); asked once."""
        if self.supported is None:
            cur = await conn.execute(SUPPORTS_INSTANCES)
            found = await cur.fetchone()
            self.supported = bool(found and found[0])
            if not self.supported and not self._old_runtime_logged:
                self._old_runtime_logged = True
                log.warning("audit: the database's policyc runtime predates 0.5.0 (apply the "
                            "policy to upgrade it): sessions of a crashed proxy instance stay "
                            "open, and unregistering an ended backend is not conditional")
        return self.supported

    async def upkeep(self, conn: psycopg.AsyncConnection[Any], *, drained: bool) -> None:
        """On the drain connection, after a drain (``drained``: it took everything that was
        ready): the heartbeat, and closing sessions crashed instances left open."""
        if self.instance is None or time.monotonic() < self._next_heartbeat \
                or not await self.supports_instances(conn):
            return
        params = {"instance": self.instance, "run": self.run, "reason": ORPHANED_REASON,
                  "dead_after": self._dead_after}
        async with asyncio.timeout(STATEMENT_TIMEOUT):
            await self._heartbeat(conn)
            closed = 0
            if drained and not self._earlier_runs_closed:
                # what the spool recovered is in the database: earlier runs are done for good
                closed += (await conn.execute(CLOSE_EARLIER_RUNS, params)).rowcount
                self._earlier_runs_closed = True
            closed += (await conn.execute(CLOSE_DEAD_INSTANCES, params)).rowcount
            await conn.execute(FORGET_DEAD_INSTANCES, params)
        if closed > 0:
            self._counts["orphans_closed"] += closed
            log.warning("audit: closed %d session(s) left open by a proxy instance that "
                        "stopped", closed)

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(HEARTBEAT, (self.instance, self._proxy_name))
        self._next_heartbeat = time.monotonic() + self._heartbeat_every

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
