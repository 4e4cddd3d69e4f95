"""Just-in-time approval, proxy side: create requests, and wake the held session the moment a
decision is made, by LISTEN/NOTIFY (every proxy listens; only the proxy holding a request has a
waiter for it, so proxy B never releases proxy A's statement).

A re-check of the request's status backs up notifications that a dropped connection may have
missed, and the hold's deadline is enforced here: when it passes, the request is closed as
expired in the database, where a decision that raced in first wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from policyc.resources import sql_dir
from policyc.vocab import ApprovalStatus, Channel

log = logging.getLogger("policyc.proxy.holds")

FINAL = frozenset(status for status in ApprovalStatus if status.final)


@functools.cache
def _open_request_sql() -> str:
    return (sql_dir() / "proxy" / "open_request.sql").read_text()


def _params_key(parameters: Any) -> str:
    return json.dumps(parameters, sort_keys=True, separators=(",", ":"))


def _approval_key(agent: str, group: str, statement: str,
                  parameters: Any) -> tuple[str, str, str, str]:
    """What an approval covers: the agent, its group, the exact statement text and the exact
    parameter values (never a fingerprint: it ignores literals, so an approval of ``LIMIT 1``
    would cover ``LIMIT 1000000``)."""
    digest = hashlib.sha256(statement.encode("utf-8", "surrogatepass")).hexdigest()
    return agent, group, digest, _params_key(parameters)


class ApprovalBroker:
    def __init__(self, conninfo: str, proxy_name: str, notifier: Any = None) -> None:
        self._conninfo = conninfo
        self._proxy = proxy_name
        self._notifier = notifier
        self._waiters: dict[int, asyncio.Future[str]] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        # approvals in force, learnt at start and from every "approved" notification, so the
        # hot path can lift a row limit without a database round trip
        self._valid: dict[tuple[str, str, str, str], tuple[int, float]] = {}
        # ticket-mode requests nobody waits on: each closes its request as expired on time
        self._expiring: set[asyncio.Task[str]] = set()

    def use_conninfo(self, conninfo: str) -> None:
        """Connections opened from now on use ``conninfo`` (a new service password)."""
        self._conninfo = conninfo

    def use_notifier(self, notifier: Any) -> None:
        """New requests are announced through ``notifier`` (a reloaded policy's webhook)."""
        self._notifier = notifier

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 10)

    async def close(self) -> None:
        for task in list(self._expiring):
            task.cancel()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._conn is not None:
            await self._conn.close()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {Channel.APPROVAL_DECISIONS}")
                    await self._load_valid()
                    self._listening.set()
                    delay = 0.5
                    # anything decided while we were not listening
                    for request_id in list(self._waiters):
                        await self._recheck(request_id)
                    async for note in conn.notifies():
                        await self._on_notification(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: reconnect, then re-check
                log.warning("approval listener lost its connection (%s); reconnecting",
                            type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def _on_notification(self, payload: str) -> None:
        """A notification only says *which* request changed: anyone can NOTIFY, so the status
        is always read back from audit.approvals before a held statement is released."""
        try:
            request_id = int(json.loads(payload)["id"])
        except (ValueError, KeyError, TypeError):
            return
        status = await self._query("SELECT status FROM audit.approvals WHERE id = %s",
                                   (request_id,))
        self._deliver(json.dumps({"id": request_id, "status": status}))
        if status == "approved":
            await self._load_valid(request_id)

    def _deliver(self, payload: str) -> tuple[int, str] | None:
        try:
            event = json.loads(payload)
            request_id, status = int(event["id"]), str(event["status"])
        except (ValueError, KeyError, TypeError):
            return None
        waiter = self._waiters.get(request_id)
        if waiter is not None and not waiter.done() and status in FINAL:
            waiter.set_result(status)
        return request_id, status

    async def _load_valid(self, request_id: int | None = None) -> None:
        rows = await self._fetch_all(
            "SELECT id, agent, group_name, statement, parameters, "
            "extract(epoch FROM valid_until) "
            "FROM audit.approvals WHERE status = 'approved' AND valid_until > now()"
            + (" AND id = %s" if request_id is not None else ""),
            (request_id,) if request_id is not None else ())
        for found, agent, group, statement, parameters, until in rows:
            key = _approval_key(agent, group, statement, parameters)
            self._valid[key] = (int(found), float(until))

    def cached(self, agent: str, group: str, statement: str, parameters: Any) -> int | None:
        """An approval in force for this agent, group, exact statement and parameters, from
        memory."""
        if not self._valid:
            return None
        key = _approval_key(agent, group, statement, parameters)
        found = self._valid.get(key)
        if found is None:
            return None
        if found[1] <= time.time():
            del self._valid[key]
            return None
        return found[0]

    async def _fetch_all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo,
                                                                   autocommit=True)
            cur = await self._conn.execute(sql, params)
            return await cur.fetchall()

    async def _query(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> Any:
        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True)
                    cur = await self._conn.execute(sql, params)
                    row = await cur.fetchone()
                    return row[0] if row else None
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt == 2:
                        raise
        return None

    async def _recheck(self, request_id: int) -> None:
        status = await self._query("SELECT status FROM audit.approvals WHERE id = %s",
                                   (request_id,))
        self._deliver(json.dumps({"id": request_id, "status": status}))

    async def find(self, agent: str, group: str, statement: str,
                   parameters: Any) -> int | None:
        """An approval still valid for this agent and group, the exact statement text and
        the exact parameter values (see :func:`_approval_key`)."""
        found = await self._query(
            "SELECT id FROM audit.approvals WHERE status = 'approved' AND agent = %s "
            "AND group_name = %s AND statement = %s "
            "AND parameters IS NOT DISTINCT FROM NULLIF(%s::jsonb, 'null'::jsonb) "
            "AND valid_until > now() ORDER BY decided_at DESC, id DESC LIMIT 1",
            (agent, group, statement, Jsonb(parameters)))
        return int(found) if found is not None else None

    async def find_open(self, agent: str, group: str, statement: str,
                        parameters: Any) -> int | None:
        """A request still pending (and not past its expiry) for this agent, group, exact
        statement text and parameter values: a ticket-mode retry before the decision names it
        instead of opening another."""
        found = await self._query(_open_request_sql(), {
            "agent": agent, "group": group, "statement": statement,
            "parameters": Jsonb(parameters)})
        return int(found) if found is not None else None

    async def request(self, *, session_id: uuid.UUID, agent: str, human: str | None, group: str,
                      statement: str, parameters: Any, fingerprint: str, tables: list[str],
                      phi: list[str], reason: str, estimated_rows: int | None,
                      hold_seconds: int, valid_for_seconds: int) -> int:
        request_id = await self._query(
            "SELECT audit.request_approval(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "make_interval(secs => %s), make_interval(secs => %s), %s)",
            (session_id, agent, human, group, statement, Jsonb(parameters), fingerprint, tables,
             phi, reason, estimated_rows, hold_seconds, valid_for_seconds, self._proxy))
        assert request_id is not None
        self._waiters[int(request_id)] = asyncio.get_running_loop().create_future()
        if self._notifier is not None:
            asyncio.get_running_loop().create_task(self._notifier.notify({
                "id": int(request_id), "agent": agent, "group": group, "statement": statement,
                "parameters": parameters, "tables": tables, "phi_columns": phi,
                "reason": reason, "estimated_rows": estimated_rows,
                "hold_seconds": hold_seconds,
            }))
        return int(request_id)

    async def wait(self, request_id: int, hold_seconds: float) -> str:
        """The decision: approved, denied, expired (no decision in time) or cancelled."""
        waiter = self._waiters[request_id]
        try:
            await self._recheck(request_id)  # decided before we started waiting?
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), hold_seconds)
            except TimeoutError:
                return await self.close_request(request_id, "expired",
                                                "no decision within the hold time")
        finally:
            self._waiters.pop(request_id, None)

    def expire_later(self, request_id: int, hold_seconds: float) -> None:
        """Ticket mode: nobody waits on this request, yet it must close as expired when its
        time is up (and its waiter must not outlive it), as a held one does."""
        task = asyncio.get_running_loop().create_task(self.wait(request_id, hold_seconds))
        self._expiring.add(task)
        task.add_done_callback(self._expired)

    def _expired(self, task: asyncio.Task[str]) -> None:
        self._expiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not close approval request as expired (%s)",
                        type(task.exception()).__name__)

    async def withdraw(self, request_id: int, reason: str) -> str:
        """The client cancelled its held statement: close the request as cancelled and wake
        its waiter now, without waiting for the notification.  Returns the final status: a
        decision that arrived first wins."""
        final = await self.close_request(request_id, "cancelled", reason)
        waiter = self._waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(final)
        return final

    async def close_request(self, request_id: int, status: str, reason: str) -> str:
        """Mark a pending request expired/cancelled; returns its final status (a decision that
        arrived first wins)."""
        final = await self._query("SELECT audit.close_request(%s, %s, %s)",
                                  (request_id, status, reason))
        return str(final)
