"""The proxy's audit log: fail closed on a durable local spool, drained into PostgreSQL.

Every statement's "begin" event is fdatasync'ed to the spool (:mod:`policyc.proxy.spool`)
before the statement can matter: :meth:`AuditLog.spool_statement` queues it and returns a
future that is done once the line is durable (or failed with :class:`AuditUnavailable`); the
session decides what waits for that future — the statement itself, or, for a provably
side-effect-free read, only its answer (see :mod:`policyc.proxy.session`).

Concurrent sessions share fsyncs (group commit): each write takes every line queued so far
(one ``os.write`` loop, one ``os.fdatasync``) and wakes all their callers; lines queued while
it runs form the next batch.  Where the write runs:

* **inline**, on the event loop, scheduled with ``call_soon`` when a waited line is queued
  (:meth:`AuditLog._inline_flush`): the session has already sent an overlapped read upstream
  and yielded, so the database runs it during the fsync, and every session whose bytes are
  ready queues its lines first.  No thread hop: handing a batch to a thread and back costs two
  wake-ups and two GIL hand-overs, measured at 100-180 µs per statement at one client on the
  development host (2 CPUs, fdatasync ≈ 150-250 µs), most of what the fsync itself costs;
  inline was about 30 % faster at one client and no slower at 16.
* on the **spool thread** (:class:`_SpoolThread`) while the moving average of an append is
  over :data:`INLINE_MAX_FSYNC` (a slow or networked disk: then the loop must keep serving
  sessions during the fsync), while that thread owns the spool, and for every other spool call
  (open, deleting drained segments), so one owner at a time touches the :class:`Spool`.

Fire-and-forget lines (a statement's end, a session's close) never cost an fsync of their
own: they ride with the next batch, or a timer writes them after ``lazy_delay`` (2 ms).  A
crash in that window loses an outcome, never a begin: the record is then drained with
``reason = 'proxy stopped before the statement completed'``, as for any crash.  The hot path
builds spool lines without ``json.dumps`` (:func:`begin_line`, :func:`end_line`) and leaves
the drainer's bookkeeping of written batches to the drainer.  A drained segment is deleted on
the spool thread, sparing every segment written or booked since the drainer's snapshot.

A drainer task pairs "begin" and "end" events and inserts finished statements in one
``INSERT ... SELECT FROM jsonb_to_recordset($1) ON CONFLICT (record_id, at) DO NOTHING`` per
batch, through the proxy's own connection (so an agent's rollback cannot erase them, and a
replay after a crash never duplicates a row).  A segment file is deleted once it is not the
current one and every event in it is in the database.  While the database is unreachable the
spool grows; past ``max_spool_bytes`` new statements are refused (:class:`AuditUnavailable`).

Each record carries its session's ``seq`` (assigned by the session, spooled in the begin
event, so a recovered record keeps it) and, with ``results: full``, the result as sent
(base64 in the end event); the database fills the hash chain itself.  A session's close sets
``end_seq`` together with the rest of the close.  Upkeep on the drain connection:
``audit.ensure_partitions()`` when the drainer starts and every six hours, and
``audit.checkpoint()`` every ``checkpoint_interval`` seconds when something was drained since
the last one, and once at ``close()`` after the last drain.  Their failures are logged
(SQLSTATE only) and retried a minute later; they never hold up a statement.

Known limits (by design):

* A begin with no end after ``stale_after`` seconds (default one hour) is inserted with
  ``reason = 'no outcome recorded'``; if the statement finishes later, its outcome is dropped
  by ``ON CONFLICT DO NOTHING``.  Begins left by a previous run (crash) are inserted at
  ``start()`` with ``reason = 'proxy stopped before the statement completed'``; so are begins
  still open at ``close()``.  A batch whose fsync failed may still leave lines on disk: such a
  statement did not run, yet may be recorded with that reason (over-recording, never under).
* Pending events are held in memory as well as on disk, so a long outage costs memory in
  proportion to the spool.
* Text the database cannot store is made storable, never refused: NUL characters become
  U+FFFD, unpaired surrogates become ``?``, non-finite numbers become NULL.
* A row the database rejects on its own (a data or integrity error) is quarantined: logged by
  record id and SQLSTATE, kept on disk and retried at the next start, never dropped.

Nothing here logs statement text, parameters or claims: only ids, counts and SQLSTATEs.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from policyc.errors import PolicycError
from policyc.proxy.records import (
    SessionEnd,
    SessionRecord,
    StatementOutcome,
    StatementRecord,
    uuid_text,
)
from policyc.proxy.spool import RecoveredSegment, Spool
from policyc.proxy.spoolowner import SpoolOwnershipError, UpstreamIdentity, claim, read_identity

if TYPE_CHECKING:
    from policyc.proxy.config import Upstream

log = logging.getLogger("policyc.proxy.audit")

T = TypeVar("T")

DECISIONS: Final = frozenset(
    {"allowed", "masked", "blocked", "held", "approved", "denied", "expired", "error"}
)
RECOVERED_REASON: Final = "proxy stopped before the statement completed"
STALE_REASON: Final = "no outcome recorded"
#: Largest JSON payload sent in one drain statement (jsonb itself stops near 256 MB).
MAX_BATCH_PAYLOAD: Final = 16 << 20
_DRAIN_TIMEOUT: Final = 30.0
_MAX_BACKOFF: Final = 5.0
PARTITIONS_EVERY: Final = 6 * 3600.0
#: The event loop writes and fsyncs the spool itself while one append takes less than this
#: (moving average); slower disks get the spool thread, so the loop keeps serving sessions.
INLINE_MAX_FSYNC: Final = 0.002
#: How often the drainer inserts what the spool holds, and after how many written batches it
#: starts early.  Every drain is a commit (a WAL flush on the database's disk, often the
#: spool's disk too) and a round trip on the event loop; records are durable in the spool
#: meanwhile, so draining in larger, rarer batches costs only how soon auditors see them.
DRAIN_INTERVAL: Final = 0.2
DRAIN_AFTER_BATCHES: Final = 256
#: How long an outcome booked before its begin waits for it (see ``AuditLog._orphans``).
ORPHAN_SECONDS: Final = 60.0
UPKEEP_RETRY: Final = 60.0

INSERT_STATEMENTS: Final = """
INSERT INTO audit.statements (record_id, session_id, seq, at, agent, group_name, statement,
    parameters, fingerprint, kind, tables, phi_columns, decision, reason, rows, duration_ms,
    sqlstate, result_digest, result, approval_id)
SELECT r.record_id, r.session_id, r.seq, to_timestamp(r.at), r.agent, r.group_name, r.statement,
    r.parameters, r.fingerprint, r.kind, r.tables, r.phi_columns, r.decision, r.reason, r.rows,
    r.duration_ms, r.sqlstate, r.result_digest, decode(r.result, 'base64'), r.approval_id
  FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (record_id uuid, session_id uuid,
    seq bigint, at double precision, agent text, group_name text, statement text,
    parameters jsonb, fingerprint text, kind text, tables text[], phi_columns text[],
    decision text, reason text, rows bigint, duration_ms double precision, sqlstate text,
    result_digest text, result text, approval_id bigint)) WITH ORDINALITY AS r
 ORDER BY r.ordinality
ON CONFLICT (record_id, at) DO NOTHING
"""

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

CLOSE_SESSIONS: Final = """
UPDATE audit.sessions s
   SET ended_at = to_timestamp(r.ended_at), end_reason = r.reason, outcome = 'closed',
       end_seq = r.end_seq
  FROM jsonb_to_recordset(%s::jsonb) AS r(session_id uuid, ended_at double precision,
    reason text, end_seq bigint)
 WHERE s.session_id = r.session_id AND s.ended_at IS NULL AND s.outcome = 'open'
"""

ENSURE_PARTITIONS: Final = "SELECT audit.ensure_partitions()"
CHECKPOINT: Final = "SELECT audit.checkpoint()"

REGISTER_SESSION: Final = "SELECT policyc.register_session(%s, %s, %s, %s, %s)"
UNREGISTER_SESSIONS: Final = "SELECT policyc.unregister_session(p) FROM unnest(%s::int[]) AS p"


class ForeignUpstream(OSError):
    """An audit connection reached a database other than the one that owns the spool."""


class AuditUnavailable(PolicycError):
    """The audit record could not be made durable, so the statement (or session) was refused."""

    code = "audit"
    sqlstate = "58030"

    def __init__(self, why: str, consequence: str = "the statement did not run") -> None:
        self.why = why
        super().__init__(f"policyc: the audit trail is unavailable ({why}); {consequence}")


# --- events: what a spool line holds --------------------------------------------------------
def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _scrub(value: Any) -> Any:
    """Make a JSON value storable in PostgreSQL text/jsonb (no NUL, no lone surrogate)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def encode_event(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """One spool line for ``event``, and the event as the database will see it."""
    try:
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\\u0000" not in text:
            return event, text.encode("utf-8") + b"\n"
    except (ValueError, UnicodeEncodeError):
        pass
    event = _scrub(event)
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return event, text.encode("utf-8") + b"\n"


def begin_event(rec: StatementRecord) -> dict[str, Any]:
    if rec.decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {rec.decision!r}")
    return {
        "e": "begin", "record_id": rec.record_key, "session_id": uuid_text(rec.session_id),
        "seq": rec.seq, "at": _finite(rec.at) or time.time(), "agent": rec.agent,
        "group": rec.group, "text": rec.text, "decision": rec.decision,
        "parameters": rec.parameters,
        "fingerprint": rec.fingerprint, "kind": rec.kind, "tables": list(rec.tables),
        "phi_columns": list(rec.phi_columns), "reason": rec.reason,
        "approval_id": rec.approval_id,
    }


def end_event(outcome: StatementOutcome) -> dict[str, Any]:
    return {
        "e": "end", "record_id": outcome.record_key, "rows": outcome.rows,
        "duration_ms": _finite(outcome.duration_ms), "sqlstate": outcome.sqlstate,
        "result_digest": outcome.result_digest, "note": outcome.note,
        "result": (None if outcome.result is None
                   else base64.b64encode(outcome.result).decode("ascii")),
    }


_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_strings(items: Iterable[str | None]) -> str:
    return "[" + ",".join("null" if v is None else _encode_str(v) for v in items) + "]"


def _json_opt(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def _json_int(value: int | None) -> str | None:
    """JSON for an optional int; None when it is not one (the caller falls back)."""
    if value is None:
        return "null"
    return str(value) if type(value) is int else None


def _line(text: str) -> bytes | None:
    """A spool line, unless it needs scrubbing (a NUL, a lone surrogate): None then."""
    if "\\u0000" in text:
        return None
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return None


def begin_line(rec: StatementRecord) -> bytes | None:
    """``encode_event(begin_event(rec))``'s line, built without a dict and ``json.dumps``
    (the statement hot path); None when only the generic path can write it faithfully."""
    if rec.decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {rec.decision!r}")
    at = rec.at
    seq = _json_int(rec.seq)
    approval = _json_int(rec.approval_id)
    if type(at) is not float or not math.isfinite(at) or seq is None or approval is None:
        return None
    params = rec.parameters
    return _line(
        '{"e":"begin","record_id":"' + rec.record_key + '","session_id":"'
        + uuid_text(rec.session_id) + '","seq":' + seq + ',"at":' + repr(at) + ',"agent":'
        + _encode_str(rec.agent) + ',"group":' + _encode_str(rec.group) + ',"text":'
        + _encode_str(rec.text) + ',"decision":"' + rec.decision + '","parameters":'
        + ("null" if params is None else _json_strings(params)) + ',"fingerprint":'
        + _json_opt(rec.fingerprint) + ',"kind":' + _json_opt(rec.kind) + ',"tables":'
        + _json_strings(rec.tables) + ',"phi_columns":' + _json_strings(rec.phi_columns)
        + ',"reason":' + _json_opt(rec.reason) + ',"approval_id":' + approval + "}")


def end_line(outcome: StatementOutcome) -> bytes | None:
    """``encode_event(end_event(outcome))``'s line, built directly; None: use the generic
    path."""
    duration = outcome.duration_ms
    if duration is None or (type(duration) is float and not math.isfinite(duration)):
        elapsed = "null"
    elif type(duration) is float:
        elapsed = repr(duration)
    else:
        return None
    rows = _json_int(outcome.rows)
    if rows is None:
        return None
    result = outcome.result
    return _line(
        '{"e":"end","record_id":"' + outcome.record_key + '","rows":' + rows
        + ',"duration_ms":' + elapsed + ',"sqlstate":' + _json_opt(outcome.sqlstate)
        + ',"result_digest":' + _json_opt(outcome.result_digest) + ',"note":'
        + _json_opt(outcome.note) + ',"result":'
        + ("null" if result is None else '"' + base64.b64encode(result).decode("ascii") + '"')
        + "}")


#: What a spool line stands for in memory: its event as a dict (generic path, recovery), or
#: the record / outcome it was built from (hot path; turned into a row when drained).
Event = dict[str, Any] | StatementRecord | StatementOutcome


def _event_dict(event: Event) -> dict[str, Any]:
    if isinstance(event, StatementRecord):
        return begin_event(event)
    if isinstance(event, StatementOutcome):
        return end_event(event)
    return event


def _event_at(event: Event) -> Any:
    return event.at if isinstance(event, StatementRecord) else _event_dict(event).get("at")


def session_row(rec: SessionRecord, outcome: str, proxy: str) -> dict[str, Any]:
    """An audit.sessions row; an address that is not an IP (a Unix socket) is left NULL."""
    addr = rec.client_addr
    if addr is not None:
        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            addr = None
    row: dict[str, Any] = _scrub({
        "session_id": str(rec.session_id), "started_at": _finite(rec.started_at) or time.time(),
        "agent": rec.agent, "group_name": rec.group, "oidc_groups": list(rec.oidc_groups),
        "role_name": rec.role, "claims": rec.claims, "client_addr": addr,
        "client_port": rec.client_port, "tls": rec.tls, "tls_version": rec.tls_version,
        "proxy": rec.proxy or proxy, "outcome": outcome, "reason": rec.reason,
    })
    return row


def statement_row(begin_: Event, end_: Event | None, note: str | None = None) -> dict[str, Any]:
    """An audit.statements row from a begin event and its end event (or none, with a note)."""
    begin = _event_dict(begin_)
    end = _event_dict(end_) if end_ is not None else {}
    reasons = [r for r in (begin.get("reason"), end.get("note"), note) if r]
    return {
        "record_id": begin.get("record_id"), "session_id": begin.get("session_id"),
        "seq": begin.get("seq"), "at": begin.get("at"), "agent": begin.get("agent"),
        "group_name": begin.get("group"),
        "statement": begin.get("text"), "parameters": begin.get("parameters"),
        "fingerprint": begin.get("fingerprint"), "kind": begin.get("kind"),
        "tables": begin.get("tables"), "phi_columns": begin.get("phi_columns"),
        "decision": begin.get("decision"), "reason": "; ".join(reasons) or None,
        "rows": end.get("rows"), "duration_ms": end.get("duration_ms"),
        "sqlstate": end.get("sqlstate"), "result_digest": end.get("result_digest"),
        "result": end.get("result"), "approval_id": begin.get("approval_id"),
    }


# --- in-memory bookkeeping ------------------------------------------------------------------
@dataclass
class _Write:
    """Lines waiting for the writer; ``future`` is None for fire-and-forget events."""

    data: bytes
    events: list[Event]
    sizes: list[int]
    future: asyncio.Future[None] | None


@dataclass
class _Open:
    event: Event
    segment: int
    size: int


@dataclass
class _Work:
    """One row (or session close) to drain; ``segments`` has one entry per spooled event."""

    kind: Literal["statement", "session", "session_end"]
    row: dict[str, Any]
    segments: tuple[int, ...]
    size: int
    unregister: int | None = None

    @staticmethod
    def statement(begin: _Open, end: Event | None, segment: int | None, size: int,
                  note: str | None = None) -> _Work:
        segments = (begin.segment,) if segment is None else (begin.segment, segment)
        return _Work("statement", statement_row(begin.event, end, note), segments,
                     begin.size + size)


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or type(exc).__name__


class _SpoolThread:
    """The spool's own thread: it writes and fsyncs batches of lines and runs every other
    spool call, in order.  ``busy`` (under the condition's lock) says who owns the
    :class:`Spool` right now: this thread, or the event loop writing a batch inline.

    The event loop hands lines over with :meth:`put` (a lock and a condition: no executor,
    no task, no future per batch) and hears back once per batch through
    ``call_soon_threadsafe``.  A line someone waits for wakes the thread at once (``"now"``)
    unless the loop writes it itself (``"quiet"``, see :meth:`AuditLog._inline_flush`).  A
    fire-and-forget line (a statement's end, a session's close) is queued quietly too: it
    rides with the next batch, or the audit log's timer kicks it out (:meth:`kick`) after
    ``lazy_delay``, so it never costs an fsync of its own that the next begin would queue
    behind, nor a wake-up of this thread per statement.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._cond = threading.Condition(threading.Lock())
        self._lines: list[_Write] = []
        self._inflight: list[_Write] = []
        self._urgent = False
        self._busy = False
        # segments holding lines written but not yet absorbed by the event loop, and segments
        # absorbed into since the loop's last snapshot of what is live: never deleted
        self._undelivered: dict[int, int] = {}
        self._recent: set[int] = set()
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...],
                                 concurrent.futures.Future[Any]]] = deque()
        self._mode: Literal["run", "exit", "abort"] = "run"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._written: Callable[[list[_Write], int, float], None] | None = None
        self._failed: Callable[[list[_Write], OSError, bool], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop,
              written: Callable[[list[_Write], int, float], None],
              failed: Callable[[list[_Write], OSError, bool], None]) -> None:
        self._loop, self._written, self._failed = loop, written, failed
        self._thread = threading.Thread(target=self._run, name="policyc-audit-spool",
                                        daemon=True)
        self._thread.start()

    # --- called on the event loop -------------------------------------------------------
    def put(self, write: _Write, *, now: bool) -> None:
        with self._cond:
            self._lines.append(write)
            if now and not self._urgent:
                self._urgent = True
                self._cond.notify()

    @property
    def queued(self) -> bool:
        return bool(self._lines)

    def kick(self) -> None:
        """Write whatever is queued now, lazy lines included."""
        with self._cond:
            if self._lines:
                self._urgent = True
                self._cond.notify()

    def take(self) -> list[_Write] | None:
        """Everything queued, for the event loop to write itself; None while the thread owns
        the spool (or nothing is queued).  Hand the spool back with :meth:`release`."""
        with self._cond:
            if self._busy or not self._lines or self._mode != "run":
                return None
            batch, self._lines, self._urgent = self._lines, [], False
            self._busy = True
            self._inflight = batch
            return batch

    def release(self, retry: list[_Write], written: int | None = None) -> None:
        """The owner is done with the spool (``written``: it appended a batch to that
        segment); ``retry`` goes back to the queue's head."""
        with self._cond:
            self._busy = False
            self._inflight = []
            if written is not None:
                self._undelivered[written] = self._undelivered.get(written, 0) + 1
            if retry:
                self._lines[:0] = retry
            if self._lines or self._calls or self._mode != "run":
                self._cond.notify()

    def absorbed(self, segment: int) -> None:
        """On the event loop: a batch written to ``segment`` is now in the loop's books."""
        with self._cond:
            left = self._undelivered.get(segment, 0) - 1
            if left > 0:
                self._undelivered[segment] = left
            else:
                self._undelivered.pop(segment, None)
            self._recent.add(segment)

    def snapshot(self) -> None:
        """On the event loop, right before it computes what is live from its books."""
        with self._cond:
            self._recent.clear()

    def delete_unreferenced(self, live: set[int]) -> list[int]:
        """On this thread: delete drained segments, sparing ``live`` (the loop's snapshot)
        and whatever was written or absorbed since that snapshot."""
        with self._cond:
            keep = live | self._recent | set(self._undelivered)
        return self._spool.delete_unreferenced(keep)

    def call(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._thread is None or self._mode != "run":
                future.set_exception(OSError("the audit spool is closed"))
                return future
            self._calls.append((fn, args, future))
            self._cond.notify()
        return future

    def stop(self, *, abort: bool) -> list[_Write]:
        """Stop the thread: after writing what is queued, or (``abort``) at once.  Returns
        the lines that were never written (abort only)."""
        with self._cond:
            self._mode = "abort" if abort else "exit"
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            left = self._inflight + self._lines
            self._inflight, self._lines = [], []
        for _fn, _args, future in self._calls:
            if future.set_running_or_notify_cancel():  # not cancelled by its caller
                future.set_exception(OSError("the audit spool is closed"))
        self._calls.clear()
        return left if abort else []

    # --- the thread ---------------------------------------------------------------------
    def _next(self) -> tuple[Any, list[_Write]] | None:
        """Wait for work: a call, or a batch of lines; None when the thread must end."""
        cond = self._cond
        with cond:
            while True:
                if self._mode == "abort":
                    return None
                if self._busy:  # the event loop is writing a batch itself
                    cond.wait()
                    continue
                if self._lines and (self._urgent or self._mode == "exit"):
                    break  # before other calls: a statement is waiting for this
                if self._calls:
                    self._busy = True
                    return self._calls.popleft(), []
                if self._mode == "exit":
                    return None
                cond.wait()  # lines not urgent: the event loop writes them or kicks
            batch, self._lines, self._urgent = self._lines, [], False
            self._busy = True
            self._inflight = batch
            return None, batch

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None and self._written is not None and self._failed is not None
        while True:
            work = self._next()
            if work is None:
                return
            call, batch = work
            if call is not None:
                fn, args, future = call
                try:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn(*args))
                        except BaseException as exc:  # handed to the awaiting coroutine
                            future.set_exception(exc)
                finally:
                    self.release([])
                continue
            started = time.perf_counter()
            try:
                segment = self._spool.append(b"".join(w.data for w in batch))
            except OSError as exc:
                dropped = self._mode != "run"
                # fire-and-forget lines are retried; waited ones fail
                self.release([] if dropped else [w for w in batch if w.future is None])
                if dropped:
                    log.error("audit spool unwritable at stop: %d queued event(s) lost",
                              sum(len(w.events) for w in batch))
                self._report(loop, self._failed, batch, exc, dropped)
                with self._cond:  # not in a spin: retry after a pause or with new work
                    if self._mode == "run" and not self._calls:
                        self._cond.wait(0.05)
                    if self._lines:
                        self._urgent = True
                continue
            self.release([], segment)
            self._report(loop, self._written, batch, segment, time.perf_counter() - started)

    @staticmethod
    def _report(loop: asyncio.AbstractEventLoop, callback: Callable[..., None],
                *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(callback, *args)


class AuditLog:
    """Durable statement audit for one proxy process; see the module docstring."""

    def __init__(self, conninfo: str, spool_dir: Path, *, proxy_name: str,
                 max_spool_bytes: int = 1 << 30, segment_bytes: int = 8 << 20,
                 drain_interval: float = DRAIN_INTERVAL, batch_size: int = 1000,
                 db_timeout: float = 5.0, stale_after: float = 3600.0,
                 checkpoint_interval: float = 60.0, lazy_delay: float = 0.002,
                 inline: bool = True, upstream: Upstream | None = None) -> None:
        self._conninfo = conninfo
        # spool ownership (the proxy passes its upstream; see policyc.proxy.spoolowner)
        self._upstream = upstream
        self._owner: UpstreamIdentity | None = None  # verified at start
        self._foreign_logged: UpstreamIdentity | None = None
        # the current segment is never deleted: keep it small next to the limit
        segment_bytes = max(4096, min(segment_bytes, max_spool_bytes // 8))
        self._spool = Spool(Path(spool_dir), segment_bytes)
        self._proxy_name = proxy_name
        self._max_spool_bytes = max_spool_bytes
        self._drain_interval = drain_interval
        self._batch_size = max(1, batch_size)
        self._db_timeout = db_timeout
        self._stale_after = stale_after
        self._checkpoint_interval = max(0.0, checkpoint_interval)  # 0: only at close
        self._running = False
        self._closing = False
        self._stopping = False
        # writer: lines go to the spool thread; these counters are the event loop's own
        self._thread = _SpoolThread(self._spool)
        self._inline = inline
        self._inline_scheduled = False
        self._lazy_delay = max(0.0, lazy_delay)
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._lazy_since: float | None = None  # when the oldest unwritten lazy line came
        self._unabsorbed: list[tuple[list[_Write], int]] = []  # written, not yet in the books
        self._fsync_seconds = 0.0  # moving average of one append (write + fdatasync)
        self._unwritten = 0  # _Writes handed to the thread and not yet reported back
        self._queued_bytes = 0  # their bytes
        self._write_failing = False
        # drainer
        self._open: dict[str, _Open] = {}
        # live outcomes booked before their begin: a batch written inline can be booked
        # before an earlier one the spool thread wrote (its callback still on its way)
        self._orphans: dict[str, tuple[Event, int, int, float]] = {}
        self._adopt: list[str] = []  # begins of this batch that have an orphan outcome
        self._work: deque[_Work] = deque()
        self._refs: dict[int, int] = {}
        self._quarantine: list[_Work] = []
        self._registered: dict[int, str] = {}  # upstream backend pid -> session id
        self._unregister: list[tuple[int, str]] = []
        self._identity_lock = asyncio.Lock()
        self._drain_wake = asyncio.Event()
        self._drainer_task: asyncio.Task[None] | None = None
        self._drain_conn: psycopg.AsyncConnection[Any] | None = None
        self._session_conn: psycopg.AsyncConnection[Any] | None = None
        self._outage = False
        self._draining = False
        self._full = False
        self._last_stale_check = 0.0
        # upkeep (monotonic deadlines): partitions ahead of need, checkpoints sealing chains
        self._next_partitions = 0.0
        self._next_checkpoint = 0.0
        self._dirty = False  # something drained since the last checkpoint
        self._counts = dict.fromkeys(
            ("spooled", "drained", "statements_inserted", "write_batches", "io_errors",
             "full_refusals", "refused_dropped", "recovered_unfinished", "torn_lines",
             "checkpoints", "partition_runs", "upkeep_errors"), 0)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open (and lock) the spool, make sure it belongs to the upstream (when one was
        given), recover what a previous run left, start the tasks.

        Raises :class:`AuditUnavailable` when the spool cannot be opened or is locked by
        another process, or the upstream is unreachable so its ownership cannot be checked;
        :class:`~policyc.proxy.spoolowner.SpoolOwnershipError` when it belongs to another
        database.  Nothing in the spool is changed or drained then.
        """
        if self._running or self._stopping:
            raise RuntimeError("an AuditLog is started once")
        self._thread.start(asyncio.get_running_loop(), self._written, self._failed)
        try:
            # nothing in the directory changes before its owner is checked
            recovered = await self._io(functools.partial(self._spool.open, begin=False))
        except OSError as exc:
            self._thread.stop(abort=True)
            raise AuditUnavailable(f"the audit spool cannot be opened: {exc.strerror or exc}",
                                   "the proxy cannot start") from exc
        try:
            if self._upstream is not None:
                await self._claim_spool(self._upstream, recovered)
            try:
                await self._io(self._spool.begin)
            except OSError as exc:
                raise AuditUnavailable(
                    f"the audit spool cannot be written: {exc.strerror or exc}",
                    "the proxy cannot start") from exc
        except BaseException:
            self._thread.stop(abort=True)
            self._spool.close()  # and its lock: the spool is left as it was found
            conn, self._drain_conn = self._drain_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise
        self._recover(recovered)
        self._running = True
        self._drainer_task = asyncio.create_task(self._drainer_loop(),
                                                 name="policyc-audit-drainer")
        self._drain_wake.set()

    async def _claim_spool(self, upstream: Upstream,
                           recovered: list[RecoveredSegment]) -> None:
        """Before anything is recovered: the spool belongs to ``upstream``'s database, or
        becomes its own if it is new."""
        where = f"{upstream.host}:{upstream.port}/{upstream.dbname}"
        try:
            conn = await self._connect()
            identity = await read_identity(conn, upstream.host, upstream.port)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise AuditUnavailable(
                f"the upstream {where} is unreachable ({_sqlstate(exc)}), so the audit spool "
                f"{self._spool.directory} cannot be checked to belong to it",
                "the proxy cannot start") from exc
        self._drain_conn = conn  # the drainer's, from now on
        # records: statements (a begin, with its end when it has one) and session events;
        # an outcome whose begin was drained already still has to go where it belongs
        events = [event for seg in recovered for event in seg.events]
        undrained = sum(1 for event in events if event.get("e") != "end") or len(events)
        try:
            done = await self._io(claim, self._spool.directory, identity, self._proxy_name,
                                  undrained)
        except SpoolOwnershipError:
            log.error("audit spool %s belongs to another database: the proxy does not start",
                      self._spool.directory)
            raise
        except OSError as exc:
            raise AuditUnavailable(
                f"the audit spool's owner file cannot be written: {exc.strerror or exc}",
                "the proxy cannot start") from exc
        self._owner = identity
        log.info("audit spool %s %s by %s", self._spool.directory,
                 {"claimed": "claimed", "adopted": "adopted (owner.adopt)",
                  "updated": "re-recorded", "owned": "owned"}[done], identity.describe())

    async def close(self) -> None:
        """Write what is queued, drain what the database takes, then stop everything.

        Statements begun and never finished are recorded with the "proxy stopped" reason.
        Whatever cannot be drained now stays in the spool for the next start.
        """
        if not self._running:
            return
        self._closing = True
        await self._wait_written()
        self._stopping = True
        self._drain_wake.set()
        if self._drainer_task is not None:
            await self._drainer_task
        self._absorb_pending()
        for _, segment, _, _ in self._orphans.values():  # their begins were drained before
            self._release((segment,))
        self._orphans.clear()
        self._recover_open(RECOVERED_REASON)
        if self._work or self._unregister:
            await self._drain_once()
        if self._dirty and not self._outage:
            await self._checkpoint()  # seal what this run drained
        await self._shutdown()

    async def abort(self) -> None:
        """Stop at once, as a crash would: nothing queued is written, nothing drained.

        Callers still waiting for durability get :class:`AuditUnavailable`.  For tests and
        for a proxy that must exit now; the next ``start`` recovers the spool.
        """
        if not self._running:
            return
        self._closing = self._stopping = True
        if self._drainer_task is not None:
            self._drainer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer_task
        for pending in self._thread.stop(abort=True):
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(AuditUnavailable("the audit log was stopped"))
        self._unwritten = self._queued_bytes = 0
        await self._shutdown()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything spooled so far that can be drained is in the database.

        Statements still waiting for their end are not waited for.  False on timeout (the
        database unreachable, say).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._absorb_pending()
            if not (self._unwritten or self._draining or self._work or self._unregister):
                return True
            self._thread.kick()
            self._drain_wake.set()
            await asyncio.sleep(min(0.005, self._drain_interval))
        return False

    # --- statements -----------------------------------------------------------------------
    async def begin_statement(self, rec: StatementRecord) -> None:
        """Return only once the statement's record is durable on disk."""
        await self.spool_statement(rec)

    def spool_statement(self, rec: StatementRecord,
                        outcome: StatementOutcome | None = None) -> asyncio.Future[None]:
        """Queue the statement's begin (with ``outcome``: begin and end, for a statement that
        never reaches the database) and return a future done once it is durable on disk, or
        failed with :class:`AuditUnavailable`.  Raises :class:`AuditUnavailable` at once when
        the log is not running or the spool is full.  The session decides what waits for
        the future: the statement (forwarded only once it is done), or only its answer.
        """
        if outcome is not None and outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        line = begin_line(rec)
        end = b"" if outcome is None else end_line(outcome)
        if line is not None and end is not None:
            if outcome is None:
                future = self._enqueue_lines(line, [rec], [len(line)], wait=True, limit=True)
            else:
                future = self._enqueue_lines(line + end, [rec, outcome], [len(line), len(end)],
                                             wait=True, limit=True)
        else:
            events = [begin_event(rec)] + ([] if outcome is None else [end_event(outcome)])
            future = self._enqueue(events, wait=True, limit=True)
        assert future is not None
        return future

    def finish_statement(self, outcome: StatementOutcome) -> None:
        """Queue the statement's end; it is written with the next batch."""
        if not self._running or self._stopping:
            log.warning("audit log is not running: outcome of record %s not recorded",
                        outcome.record_id)
            return
        line = end_line(outcome)
        if line is None:
            self._enqueue([end_event(outcome)], wait=False, limit=False)
        else:
            self._enqueue_lines(line, [outcome], [len(line)], wait=False, limit=False)

    async def record_statement(self, rec: StatementRecord, outcome: StatementOutcome) -> None:
        """Record a statement that never reaches the database (blocked, refused), durably."""
        if outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        await self.spool_statement(rec, outcome)

    def record_statement_later(self, rec: StatementRecord, outcome: StatementOutcome) -> None:
        """Queue a statement that did not run because its record could not be made durable in
        time: written with the next batch (retried while the spool fails, never refused for
        size), so its session's seqs stay contiguous.  Never raises."""
        if outcome.record_id != rec.record_id:
            raise ValueError("outcome belongs to another record")
        if not self._running or self._stopping:
            log.warning("audit log is not running: record %s (seq %d) not recorded",
                        rec.record_id, rec.seq)
            return
        self._enqueue([begin_event(rec), end_event(outcome)], wait=False, limit=False)

    # --- sessions -------------------------------------------------------------------------
    async def open_session(self, rec: SessionRecord, backend_pid: int | None) -> None:
        """Record an accepted session and register its upstream backend's identity.

        Raises :class:`AuditUnavailable` if the database does not take both (one transaction).
        """
        row = session_row(rec, "open", self._proxy_name)
        if backend_pid is not None and (rec.agent is None or rec.group is None):
            raise ValueError("registering a backend needs the session's agent and group")
        async with self._identity_lock:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self._db_timeout):
                        conn = await self._connect_sessions()
                        async with conn.transaction():
                            cur = await conn.execute(INSERT_SESSIONS, (_json([row]),))
                            if cur.rowcount != 1:
                                raise AuditUnavailable("the session id is already recorded",
                                                       "the session was refused")
                            if backend_pid is not None:
                                await conn.execute(REGISTER_SESSION, (
                                    backend_pid, rec.session_id, rec.agent, rec.group,
                                    Jsonb(row["claims"])))
                    break
                except psycopg.OperationalError as exc:
                    await self._drop_session_conn()
                    if attempt == 1:  # a connection the server dropped (e.g. a restart)
                        continue
                    log.error("audit database did not record session %s (%s): login refused",
                              rec.session_id, _sqlstate(exc))
                    raise AuditUnavailable("the audit database did not record the session",
                                           "the session was refused") from exc
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    await self._drop_session_conn()
                    log.error("audit database did not record session %s (%s): login refused",
                              rec.session_id, _sqlstate(exc))
                    raise AuditUnavailable("the audit database did not record the session",
                                           "the session was refused") from exc
            if backend_pid is not None:
                self._registered[backend_pid] = str(rec.session_id)

    async def refuse_session(self, rec: SessionRecord) -> None:
        """Record a refused login: in the database, else in the spool. Never raises."""
        row = session_row(rec, "refused", self._proxy_name)
        try:
            async with asyncio.timeout(self._db_timeout):
                conn = await self._connect_sessions()
                await conn.execute(INSERT_SESSIONS, (_json([row]),))
            return
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop_session_conn()
            log.warning("audit database unreachable (%s): refused session %s spooled",
                        _sqlstate(exc), rec.session_id)
        # refusals come before authentication: bound them, so a flood cannot fill the disk
        try:
            if self._spool.total_bytes + self._queued_bytes > self._max_spool_bytes:
                raise AuditUnavailable("the local audit spool is full")
            future = self._enqueue([{"e": "session_refused", **row}], wait=True, limit=False)
            assert future is not None
            await future
        except AuditUnavailable as exc:
            self._counts["refused_dropped"] += 1
            log.error("refused session %s not recorded: %s", rec.session_id, exc.why)

    def end_session(self, end: SessionEnd, backend_pid: int | None) -> None:
        """Queue the session's close; the drainer closes the row and unregisters the backend."""
        if not self._running or self._stopping:
            log.warning("audit log is not running: end of session %s not recorded",
                        end.session_id)
            return
        self._enqueue([{
            "e": "session_end", "session_id": str(end.session_id),
            "ended_at": _finite(end.ended_at) or time.time(), "reason": end.reason,
            "end_seq": end.end_seq, "pid": backend_pid,
        }], wait=False, limit=False)

    def stats(self) -> dict[str, int]:
        """Counters for tests and the benchmark."""
        self._absorb_pending()
        counts = dict(self._counts)
        counts.update(
            pending=counts["spooled"] - counts["drained"], open=len(self._open),
            ready=len(self._work), queued=self._unwritten, quarantined=len(self._quarantine),
            bytes=self._spool.total_bytes, segments=len(self._spool.sizes),
            fsyncs=self._spool.fsyncs,
        )
        return counts

    # --- writer ---------------------------------------------------------------------------
    def _enqueue(self, events: list[dict[str, Any]], *, wait: bool,
                 limit: bool) -> asyncio.Future[None] | None:
        encoded = [encode_event(e) for e in events]
        data = b"".join(line for _, line in encoded)
        return self._enqueue_lines(data, [e for e, _ in encoded],
                                   [len(line) for _, line in encoded], wait=wait, limit=limit)

    def _enqueue_lines(self, data: bytes, kept: list[Event], sizes: list[int], *, wait: bool,
                       limit: bool) -> asyncio.Future[None] | None:
        if not self._running or self._stopping or (wait and self._closing):
            raise AuditUnavailable("the audit log is not running")
        if limit and (self._spool.total_bytes + self._queued_bytes + len(data)
                      > self._max_spool_bytes):
            self._counts["full_refusals"] += 1
            if not self._full:
                self._full = True
                log.error("audit spool is full (%d bytes): refusing statements until the "
                          "audit database drains it", self._spool.total_bytes)
            raise AuditUnavailable("the local audit spool is full and the audit database "
                                   "has not drained it")
        self._unwritten += 1
        self._queued_bytes += len(data)
        loop = asyncio.get_running_loop()
        if not wait:
            self._thread.put(_Write(data, kept, sizes, None), now=False)
            if self._lazy_since is None:
                self._lazy_since = time.monotonic()
            if self._lazy_timer is None:
                self._lazy_timer = loop.call_later(self._lazy_delay, self._lazy_due)
            return None
        future = loop.create_future()
        write = _Write(data, kept, sizes, future)
        if self._inline and self._fsync_seconds < INLINE_MAX_FSYNC:
            self._thread.put(write, now=False)
            if not self._inline_scheduled:
                self._inline_scheduled = True
                loop.call_soon(self._inline_flush)
        else:
            self._thread.put(write, now=True)
        return future

    def _lazy_due(self) -> None:
        """Fire-and-forget lines waited ``lazy_delay`` for a batch to ride with: write them."""
        self._lazy_timer = None
        if not self._thread.queued or self._inline_scheduled:
            return
        now = time.monotonic()
        if self._lazy_since is None:
            self._lazy_since = now
        wait = self._lazy_since + self._lazy_delay - now
        if wait > 0:  # what is queued came after the last batch took the older lines
            self._lazy_timer = asyncio.get_running_loop().call_later(wait, self._lazy_due)
            return
        if self._inline and self._fsync_seconds < INLINE_MAX_FSYNC and self._running:
            self._inline_flush()
        else:
            self._thread.kick()

    def _inline_flush(self) -> None:
        """Write and fsync what is queued, on the event loop, once the callbacks ready now
        have run (see the module docstring); while the spool thread owns the spool, the batch
        goes to it instead."""
        self._inline_scheduled = False
        batch = self._thread.take()
        if batch is None:
            self._thread.kick()
            return
        self._lazy_since = None  # every queued line goes now
        started = time.perf_counter()
        try:
            segment = self._spool.append(b"".join(w.data for w in batch))
        except OSError as exc:
            self._thread.release([w for w in batch if w.future is None])
            self._failed(batch, exc, False)
            self._thread.kick()  # the thread retries the fire-and-forget lines
            return
        self._thread.release([], segment)
        self._written(batch, segment, time.perf_counter() - started)

    def _written(self, batch: list[_Write], segment: int, seconds: float) -> None:
        """On the event loop: ``batch`` is durable in ``segment``; writing it took
        ``seconds``."""
        if not self._running:
            return  # aborted meanwhile: its callers were already told
        self._fsync_seconds += (seconds - self._fsync_seconds) * 0.1
        self._queued_bytes -= sum(len(w.data) for w in batch)
        if self._write_failing:
            self._write_failing = False
            log.warning("audit spool writable again")
        self._counts["write_batches"] += 1
        for w in batch:
            future = w.future
            if future is not None and not future.done():
                future.set_result(None)
        # the drainer's books are kept by the drainer (off the statements' path), or sooner
        # when much is waiting
        self._unabsorbed.append((batch, segment))
        if len(self._unabsorbed) >= DRAIN_AFTER_BATCHES:
            self._drain_wake.set()

    def _absorb_pending(self) -> None:
        """Take the batches written since last time into the drainer's books, in order."""
        pending, self._unabsorbed = self._unabsorbed, []
        for batch, segment in pending:
            self._absorb_batch(batch, segment)

    def _absorb_batch(self, batch: list[_Write], segment: int) -> None:
        if not self._running:
            return
        self._unwritten -= len(batch)
        for w in batch:
            for event, size in zip(w.events, w.sizes, strict=True):
                self._absorb(event, segment, size, live=True)
        self._pair_orphans()
        self._thread.absorbed(segment)
        if len(self._work) >= self._batch_size and not self._outage:
            self._drain_wake.set()

    def _failed(self, batch: list[_Write], exc: OSError, dropped: bool) -> None:
        """On the event loop: writing ``batch`` failed.  Waited lines fail their callers;
        the thread retries the others (unless ``dropped``: the log is stopping)."""
        if not self._running:
            return
        self._counts["io_errors"] += 1
        if not self._write_failing:
            self._write_failing = True
            log.error("audit spool write failed (%s): refusing statements",
                      exc.strerror or type(exc).__name__)
        for w in batch:
            if w.future is not None or dropped:
                self._unwritten -= 1
                self._queued_bytes -= len(w.data)
            if w.future is not None and not w.future.done():
                w.future.set_exception(AuditUnavailable("the local audit spool failed"))

    async def _wait_written(self) -> None:
        self._absorb_pending()
        while self._unwritten and not self._write_failing:
            self._thread.kick()
            await asyncio.sleep(0.001)
            self._absorb_pending()

    # --- bookkeeping ----------------------------------------------------------------------
    def _absorb(self, event: Event, segment: int, size: int, *, live: bool) -> None:
        """Account for one durable event and turn it into work when it is complete."""
        self._refs[segment] = self._refs.get(segment, 0) + 1
        self._counts["spooled"] += 1
        kind: Any
        rid: Any
        if isinstance(event, StatementRecord):
            kind, rid = "begin", event.record_key
        elif isinstance(event, StatementOutcome):
            kind, rid = "end", event.record_key
        else:
            kind, rid = event.get("e"), event.get("record_id")
        if kind == "begin" and isinstance(rid, str):
            if rid in self._open:
                self._release((segment,))  # a duplicate line: the first one counts
            else:
                self._open[rid] = _Open(event, segment, size)
                if rid in self._orphans:  # paired after its batch, unless an end follows
                    self._adopt.append(rid)
        elif kind == "end" and isinstance(rid, str):
            begun = self._open.pop(rid, None)
            if begun is not None:
                # the end that follows its begin wins (a record re-queued after a failed
                # write carries its own outcome; an earlier one is superseded)
                superseded = self._orphans.pop(rid, None)
                if superseded is not None:
                    self._release((superseded[1],))
                self._work.append(_Work.statement(begun, event, segment, size))
            elif live:
                self._orphans[rid] = (event, segment, size, time.monotonic())
            else:
                self._release((segment,))  # its begin is already drained (stale or replay)
        elif kind == "session_refused" and isinstance(event, dict):
            row = {k: v for k, v in event.items() if k != "e"}
            self._work.append(_Work("session", row, (segment,), size))
        elif kind == "session_end" and isinstance(event, dict):
            pid = event.get("pid")
            sid = event.get("session_id")
            unregister = pid if live and isinstance(pid, int) and isinstance(sid, str) else None
            self._work.append(_Work("session_end", {
                "session_id": sid, "ended_at": event.get("ended_at"),
                "reason": event.get("reason"), "end_seq": event.get("end_seq"),
            }, (segment,), size, unregister))
        else:
            # kept on disk for a human: never drained, never deleted
            log.error("audit spool segment %d holds an unknown event; kept", segment)

    def _pair_orphans(self) -> None:
        """Give begins booked after their outcome (and not followed by another) that outcome."""
        adopt, self._adopt = self._adopt, []
        for rid in adopt:
            orphan = self._orphans.get(rid)
            begun = self._open.get(rid)
            if orphan is None or begun is None:
                continue
            del self._orphans[rid], self._open[rid]
            event, segment, size, _ = orphan
            self._work.append(_Work.statement(begun, event, segment, size))

    def _release(self, segments: Iterable[int]) -> None:
        for segment in segments:
            self._refs[segment] -= 1
            if not self._refs[segment]:
                del self._refs[segment]
            self._counts["drained"] += 1

    def _recover(self, recovered: list[RecoveredSegment]) -> None:
        for seg in recovered:
            self._counts["torn_lines"] += seg.torn
            for event in seg.events:
                size = len(json.dumps(event))
                self._absorb(event, seg.number, size, live=False)
        self._counts["recovered_unfinished"] = self._recover_open(RECOVERED_REASON)
        if recovered:
            log.info("audit spool recovered %d segment(s), %d event(s) to drain",
                     len(recovered), len(self._work))

    def _recover_open(self, reason: str, older_than: float | None = None) -> int:
        """Turn begins without an end into work with ``reason``; returns how many."""
        count = 0
        for rid, opened in list(self._open.items()):
            at = _event_at(opened.event)
            if older_than is not None and isinstance(at, int | float) and at > older_than:
                continue
            del self._open[rid]
            self._work.append(_Work.statement(opened, None, None, 0, reason))
            count += 1
        return count

    def _expire_stale(self) -> None:
        now = time.time()
        if now - self._last_stale_check < 1.0:
            return
        self._last_stale_check = now
        # an outcome whose begin never came within a minute: its begin was drained before
        # (a stale record, or a replay after a crash); the row exists, the outcome is dropped
        old = time.monotonic() - ORPHAN_SECONDS
        for rid, (_, segment, _, since) in list(self._orphans.items()):
            if since < old:
                del self._orphans[rid]
                self._release((segment,))
        if self._recover_open(STALE_REASON, older_than=now - self._stale_after):
            log.warning("audit: statements without an outcome after %.0f s recorded as such",
                        self._stale_after)

    # --- drainer --------------------------------------------------------------------------
    async def _drainer_loop(self) -> None:
        backoff = 0.0
        while not self._stopping:
            if backoff:
                await self._sleep_unless_stopping(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain_interval):
                        await self._drain_wake.wait()
            self._drain_wake.clear()
            if self._stopping:
                return
            self._absorb_pending()
            self._expire_stale()
            drained = await self._drain_once()
            backoff = 0.0 if drained else min(max(backoff * 2, 0.1), _MAX_BACKOFF)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            self._drain_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._drain_wake.wait()

    async def _drain_once(self) -> bool:
        """Drain all ready work; False when the database is unreachable."""
        self._draining = True
        self._absorb_pending()
        try:
            if time.monotonic() >= self._next_partitions:
                await self._ensure_partitions()  # before inserting into them
            drained = await self._drain_all()
            if (drained and self._dirty and self._checkpoint_interval
                    and time.monotonic() >= self._next_checkpoint):
                await self._checkpoint()
            return drained
        finally:
            self._draining = False

    # --- upkeep -----------------------------------------------------------------------------
    async def _ensure_partitions(self) -> None:
        ok = await self._upkeep(ENSURE_PARTITIONS, "creating partitions ahead")
        self._next_partitions = time.monotonic() + (PARTITIONS_EVERY if ok else UPKEEP_RETRY)
        if ok:
            self._counts["partition_runs"] += 1

    async def _checkpoint(self) -> None:
        ok = await self._upkeep(CHECKPOINT, "checkpoint")
        interval = self._checkpoint_interval
        retry = min(interval, UPKEEP_RETRY) if interval else UPKEEP_RETRY
        self._next_checkpoint = time.monotonic() + (interval if ok else retry)
        if ok:
            self._dirty = False
            self._counts["checkpoints"] += 1

    async def _upkeep(self, sql: str, what: str) -> bool:
        """Run one upkeep call on the drain connection; failures are logged, never raised."""
        try:
            conn = await self._connect_drain()
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await conn.execute(sql)
            return True
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._counts["upkeep_errors"] += 1
            log.warning("audit %s failed (%s); retrying later", what, _sqlstate(exc))
            if not isinstance(exc, psycopg.DatabaseError) or isinstance(
                    exc, psycopg.OperationalError):
                dropped, self._drain_conn = self._drain_conn, None
                if dropped is not None:
                    with contextlib.suppress(Exception):
                        await dropped.close()
            return False

    async def _drain_all(self) -> bool:
        if not (self._work or self._unregister):
            await self._delete_drained()
            return True
        try:
            conn = await self._connect_drain()
            budget = len(self._work)  # then delete segments, even under a steady stream
            while self._work and budget > 0:
                batch = self._take_batch()
                budget -= len(batch)
                try:
                    async with asyncio.timeout(_DRAIN_TIMEOUT):
                        await self._insert(conn, batch)
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    await self._insert_each(conn, batch, exc)
                except BaseException:
                    self._work.extendleft(reversed(batch))
                    raise
                else:
                    self._complete(batch)
            await self._unregister_ended(conn)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._note_outage(exc)
            return False
        if self._outage:
            self._outage = False
            log.warning("audit database reachable again; spool draining")
        await self._delete_drained()
        return True

    def _take_batch(self) -> list[_Work]:
        batch: list[_Work] = []
        size = 0
        while self._work and len(batch) < self._batch_size:
            if batch and size + self._work[0].size > MAX_BATCH_PAYLOAD:
                break
            work = self._work.popleft()
            batch.append(work)
            size += work.size
        return batch

    async def _insert(self, conn: psycopg.AsyncConnection[Any], batch: list[_Work]) -> None:
        statements = sorted((w.row for w in batch if w.kind == "statement"),
                            key=lambda r: (r.get("at") or 0.0, r.get("seq") or 0))
        sessions = [w.row for w in batch if w.kind == "session"]
        # a session closes once: the first end recorded wins (UPDATE ... FROM would pick any)
        closes = list({w.row["session_id"]: w.row for w in reversed(batch)
                       if w.kind == "session_end"}.values())
        async with conn.transaction():
            if sessions:
                await conn.execute(INSERT_SESSIONS, (_json(sessions),))
            if statements:
                await conn.execute(INSERT_STATEMENTS, (_json(statements),))
            if closes:
                await conn.execute(CLOSE_SESSIONS, (_json(closes),))

    async def _insert_each(self, conn: psycopg.AsyncConnection[Any], batch: list[_Work],
                           cause: Exception) -> None:
        """The database rejected a batch: insert row by row, quarantine what it rejects."""
        log.error("audit batch of %d rejected (%s); retrying row by row", len(batch),
                  _sqlstate(cause))
        for index, work in enumerate(batch):
            try:
                async with asyncio.timeout(_DRAIN_TIMEOUT):
                    await self._insert(conn, [work])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                self._quarantine.append(work)
                log.error("audit %s row %s rejected (%s); kept in the spool", work.kind,
                          work.row.get("record_id") or work.row.get("session_id"),
                          _sqlstate(exc))
            except BaseException:
                self._work.extendleft(reversed(batch[index:]))
                raise
            else:
                self._complete([work])

    def _complete(self, batch: list[_Work]) -> None:
        if batch:
            self._dirty = True
        for work in batch:
            self._release(work.segments)
            if work.kind == "statement":
                self._counts["statements_inserted"] += 1
            if work.unregister is not None:
                self._unregister.append((work.unregister, work.row["session_id"]))

    async def _unregister_ended(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Remove identities of ended backends, unless this proxy re-registered the pid since."""
        if not self._unregister:
            return
        async with self._identity_lock:
            pids = []
            for pid, sid in self._unregister:
                if self._registered.get(pid) == sid:
                    del self._registered[pid]
                    pids.append(pid)
            self._unregister.clear()
            if pids:
                # cleanup only: a stale identity never attaches to a new backend
                try:
                    async with asyncio.timeout(_DRAIN_TIMEOUT):
                        await conn.execute(UNREGISTER_SESSIONS, (pids,))
                except psycopg.DataError as exc:
                    log.warning("audit: unregistering ended backends failed (%s)",
                                _sqlstate(exc))

    async def _delete_drained(self) -> None:
        self._thread.snapshot()
        live = set(self._refs)
        if all(n in live or n == self._spool.current for n in list(self._spool.sizes)):
            return
        try:
            # decided on the spool thread: a batch written (or absorbed) after this snapshot
            # keeps its segment even though ``live`` does not know it yet
            await self._io(self._thread.delete_unreferenced, live)
        except OSError as exc:
            log.warning("audit spool: drained segment not removed (%s)",
                        exc.strerror or type(exc).__name__)
        if self._full and self._spool.total_bytes < self._max_spool_bytes:
            self._full = False
            log.warning("audit spool has room again: accepting statements")

    async def _note_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.error("audit database unreachable (%s); spooling to disk and retrying",
                      _sqlstate(exc))
        conn, self._drain_conn = self._drain_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # --- connections and I/O --------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A new audit connection; once the spool's owner is known, only to that database
        (:class:`ForeignUpstream` otherwise: the drainer treats it as an outage)."""
        async with asyncio.timeout(self._db_timeout):
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, application_name="policyc-proxy-audit",
                connect_timeout=max(2, math.ceil(self._db_timeout)),
            )
            owner = self._owner
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

    async def _connect_drain(self) -> psycopg.AsyncConnection[Any]:
        if self._drain_conn is None or self._drain_conn.closed:
            self._drain_conn = await self._connect()
        return self._drain_conn

    async def _connect_sessions(self) -> psycopg.AsyncConnection[Any]:
        if self._session_conn is None or self._session_conn.closed:
            self._session_conn = await self._connect()
        return self._session_conn

    async def _drop_session_conn(self) -> None:
        conn = self._session_conn
        if conn is not None and (conn.broken or conn.closed
                                 or conn.info.transaction_status
                                 != psycopg.pq.TransactionStatus.IDLE):
            self._session_conn = None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a spool call on the spool thread, in order with its writes."""
        return await asyncio.wrap_future(self._thread.call(fn, *args))

    async def _shutdown(self) -> None:
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        self._thread.stop(abort=False)
        self._running = False
        self._spool.close()
        for conn in (self._drain_conn, self._session_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._drain_conn = self._session_conn = None


def _json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
