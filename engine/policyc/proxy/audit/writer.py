"""Group commit: spool lines become durable in batches, and their callers hear of it once.

Concurrent sessions share fsyncs: each write takes every line queued so far (one write loop,
one ``os.fdatasync``) and wakes all their callers; lines queued while it runs form the next
batch.  Where the write runs:

* **inline**, on the event loop, scheduled with ``call_soon`` when a waited line is queued
  (:meth:`Writer.inline_flush`): the session has already sent an overlapped read upstream
  and yielded, so the database runs it during the fsync, and every session whose bytes are
  ready queues its lines first.  No thread hop: handing a batch to a thread and back costs two
  wake-ups and two GIL hand-overs, measured at 100-180 µs per statement at one client on the
  development host (2 CPUs, fdatasync ≈ 150-250 µs), most of what the fsync itself costs;
  inline was about 30 % faster at one client and no slower at 16.  Measured again for issue
  #13 with ``bench/spoolcost.py`` (same host, spool alone): inline 6.0-7.5k records/s at one
  writer against 4.1-4.9k on the thread, 17.8-19.0k against 12.5-15.5k at 16 (16 records per
  fsync inline, 7-8 on the thread).  The thread costs the loop less per record at one writer
  (66-73 µs against 131-165 µs, the fsync included) but each record waits longer for it.
* on the **spool thread** (:class:`~policyc.proxy.audit.spoolthread.SpoolThread`) while the
  moving average of an append is over :data:`INLINE_MAX_FSYNC` (a slow or networked disk: then
  the loop must keep serving sessions during the fsync), while that thread owns the spool, and
  for every other spool call (open, deleting drained segments), so one owner at a time touches
  the :class:`~policyc.proxy.audit.spool.Spool`.

Fire-and-forget lines (a statement's end, a session's close) never cost an fsync of their
own: they ride with the next batch, or a timer writes them after ``lazy_delay`` (2 ms).  A
crash in that window loses an outcome, never a begin: the record is then drained with
``reason = 'proxy stopped before the statement completed'``, as for any crash.  The writer
leaves the drainer's bookkeeping of written batches to the drainer (:meth:`Writer.absorb_into`
runs on its schedule, off the statements' path).  Past ``max_spool_bytes`` new statements are
refused (:class:`~policyc.proxy.audit.failures.AuditUnavailable`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from policyc.proxy.audit.books import Books, Counts
from policyc.proxy.audit.events import Event, encode_event
from policyc.proxy.audit.failures import AuditUnavailable
from policyc.proxy.audit.spool import Spool
from policyc.proxy.audit.spoolthread import SpoolThread, Write
from policyc.proxy.tally import Histogram

log = logging.getLogger("policyc.proxy.audit")

#: The event loop writes and fsyncs the spool itself while one append takes less than this
#: (moving average); slower disks get the spool thread, so the loop keeps serving sessions.
INLINE_MAX_FSYNC: Final = 0.002
#: After how many written batches the drainer books them early (see the drain module).
DRAIN_AFTER_BATCHES: Final = 256


@dataclass
class LogState:
    """Where the audit log is in its life; shared by its parts."""

    running: bool = False
    closing: bool = False  # no new waited lines
    stopping: bool = False  # nothing new at all; the drainer ends


class Writer:
    """Queues spool lines and makes them durable in batches; see the module docstring."""

    def __init__(self, spool: Spool, state: LogState, counts: Counts, *,
                 max_spool_bytes: int, lazy_delay: float, inline: bool,
                 wake_drainer: Callable[[], None]) -> None:
        self.spool = spool
        self.thread = SpoolThread(spool)
        self.inline = inline
        self.max_spool_bytes = max_spool_bytes
        self.full = False  # refusing statements until the drainer makes room
        self.unwritten = 0  # Writes handed over and not yet booked by the drainer
        self.queued_bytes = 0  # their bytes, until written
        self._state = state
        self._counts = counts
        self._wake_drainer = wake_drainer
        self._inline_scheduled = False
        self._lazy_delay = max(0.0, lazy_delay)
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._lazy_since: float | None = None  # when the oldest unwritten lazy line came
        self._unabsorbed: list[tuple[list[Write], int]] = []  # written, not yet in the books
        self._fsync_seconds = 0.0  # moving average of one append (write + fdatasync)
        self.flushes = Histogram()  # each batch's write + fdatasync, for /metrics
        self._write_failing = False
        # the audit log's loop, kept: ``asyncio.get_running_loop()`` costs a getpid() system
        # call (fork detection), twice per statement on the hot path
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.thread.start(loop, self.written, self.failed)

    def stop_timer(self) -> None:
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None

    # --- queueing ---------------------------------------------------------------------
    def enqueue(self, events: list[dict[str, Any]], *, wait: bool,
                limit: bool) -> asyncio.Future[None] | None:
        """Queue generic events (encoded here); see :meth:`enqueue_lines`."""
        encoded = [encode_event(e) for e in events]
        data = b"".join(line for _, line in encoded)
        return self.enqueue_lines(data, [e for e, _ in encoded],
                                  [len(line) for _, line in encoded], wait=wait, limit=limit)

    def enqueue_lines(self, data: bytes, kept: list[Event], sizes: list[int], *, wait: bool,
                      limit: bool) -> asyncio.Future[None] | None:
        """Queue encoded lines (``kept``: their events, ``sizes``: their lengths).  With
        ``wait``, return a future done once they are durable; with ``limit``, refuse them
        when the spool is full."""
        state = self._state
        if not state.running or state.stopping or (wait and state.closing):
            raise AuditUnavailable("the audit log is not running")
        if limit and (self.spool.total_bytes + self.queued_bytes + len(data)
                      > self.max_spool_bytes):
            self._counts["full_refusals"] += 1
            if not self.full:
                self.full = True
                log.error("audit spool is full (%d bytes): refusing statements until the "
                          "audit database drains it", self.spool.total_bytes)
            raise AuditUnavailable("the local audit spool is full and the audit database "
                                   "has not drained it")
        self.unwritten += 1
        self.queued_bytes += len(data)
        loop = self._loop
        assert loop is not None  # running (checked above) means started
        if not wait:
            self.thread.put(Write(data, kept, sizes, None), now=False)
            if self._lazy_since is None:
                self._lazy_since = time.monotonic()
            if self._lazy_timer is None:
                self._lazy_timer = loop.call_later(self._lazy_delay, self._lazy_due)
            return None
        future = loop.create_future()
        write = Write(data, kept, sizes, future)
        if self.inline and self._fsync_seconds < INLINE_MAX_FSYNC:
            self.thread.put(write, now=False)
            if not self._inline_scheduled:
                self._inline_scheduled = True
                loop.call_soon(self.inline_flush)
        else:
            self.thread.put(write, now=True)
        return future

    def _lazy_due(self) -> None:
        """Fire-and-forget lines waited ``lazy_delay`` for a batch to ride with: write them."""
        self._lazy_timer = None
        if not self.thread.queued or self._inline_scheduled:
            return
        now = time.monotonic()
        if self._lazy_since is None:
            self._lazy_since = now
        wait = self._lazy_since + self._lazy_delay - now
        if wait > 0:  # what is queued came after the last batch took the older lines
            self._lazy_timer = asyncio.get_running_loop().call_later(wait, self._lazy_due)
            return
        if self.inline and self._fsync_seconds < INLINE_MAX_FSYNC and self._state.running:
            self.inline_flush()
        else:
            self.thread.kick()

    # --- writing ----------------------------------------------------------------------
    def inline_flush(self) -> None:
        """Write and fsync what is queued, on the event loop, once the callbacks ready now
        have run (see the module docstring); while the spool thread owns the spool, the batch
        goes to it instead."""
        self._inline_scheduled = False
        batch = self.thread.take()
        if batch is None:
            self.thread.kick()
            return
        self._lazy_since = None  # every queued line goes now
        started = time.perf_counter()
        try:
            segment = self.spool.append(b"".join(w.data for w in batch))
        except OSError as exc:
            self.thread.release([w for w in batch if w.future is None])
            self.failed(batch, exc, False)
            self.thread.kick()  # the thread retries the fire-and-forget lines
            return
        self.thread.release([], segment)
        self.written(batch, segment, time.perf_counter() - started)

    def written(self, batch: list[Write], segment: int, seconds: float) -> None:
        """On the event loop: ``batch`` is durable in ``segment``; writing it took
        ``seconds``."""
        if not self._state.running:
            return  # aborted meanwhile: its callers were already told
        self._fsync_seconds += (seconds - self._fsync_seconds) * 0.1
        self.flushes.observe(seconds)
        self.queued_bytes -= sum(len(w.data) for w in batch)
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
            self._wake_drainer()

    @property
    def failing(self) -> bool:
        """The last write of the spool failed (and none succeeded since)."""
        return self._write_failing

    def failed(self, batch: list[Write], exc: OSError, dropped: bool) -> None:
        """On the event loop: writing ``batch`` failed.  Waited lines fail their callers;
        the thread retries the others (unless ``dropped``: the log is stopping)."""
        if not self._state.running:
            return
        self._counts["io_errors"] += 1
        if not self._write_failing:
            self._write_failing = True
            log.error("audit spool write failed (%s): refusing statements",
                      exc.strerror or type(exc).__name__)
        for w in batch:
            if w.future is not None or dropped:
                self.unwritten -= 1
                self.queued_bytes -= len(w.data)
            if w.future is not None and not w.future.done():
                w.future.set_exception(AuditUnavailable("the local audit spool failed"))

    def absorb_into(self, books: Books) -> None:
        """Book the batches written since last time, in order."""
        pending, self._unabsorbed = self._unabsorbed, []
        for batch, segment in pending:
            if not self._state.running:
                return
            self.unwritten -= len(batch)
            for w in batch:
                for event, size in zip(w.events, w.sizes, strict=True):
                    books.absorb(event, segment, size, live=True)
            books.pair_orphans()
            self.thread.absorbed(segment)

    async def wait_written(self, books: Books) -> None:
        """Until every queued line is written and booked (or the spool fails)."""
        self.absorb_into(books)
        while self.unwritten and not self._write_failing:
            self.thread.kick()
            await asyncio.sleep(0.001)
            self.absorb_into(books)

    def abort(self) -> None:
        """Stop the thread at once; callers still waiting get :class:`AuditUnavailable`."""
        for pending in self.thread.stop(abort=True):
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(AuditUnavailable("the audit log was stopped"))
        self.unwritten = self.queued_bytes = 0
