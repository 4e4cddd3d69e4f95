"""The spool's own thread: it writes and fsyncs batches of lines and runs every other spool call.

One owner at a time touches the :class:`~policyc.proxy.audit.spool.Spool`: this thread, or the
event loop writing a batch inline (:mod:`policyc.proxy.audit.writer` decides which).  A drained
segment is deleted here, sparing every segment written or booked since the drainer's snapshot
of what is live (:meth:`SpoolThread.delete_unreferenced`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from policyc.proxy.audit.events import Event
from policyc.proxy.audit.spool import Spool

log = logging.getLogger("policyc.proxy.audit")

T = TypeVar("T")


@dataclass
class Write:
    """Lines waiting for the writer; ``future`` is None for fire-and-forget events."""

    data: bytes
    events: list[Event]
    sizes: list[int]
    future: asyncio.Future[None] | None


class SpoolThread:
    """The spool's own thread: it writes and fsyncs batches of lines and runs every other
    spool call, in order.  ``busy`` (under the condition's lock) says who owns the
    :class:`Spool` right now: this thread, or the event loop writing a batch inline.

    The event loop hands lines over with :meth:`put` (a lock and a condition: no executor,
    no task, no future per batch) and hears back once per batch through
    ``call_soon_threadsafe``.  A line someone waits for wakes the thread at once (``"now"``)
    unless the loop writes it itself (``"quiet"``, see
    :meth:`~policyc.proxy.audit.writer.Writer.inline_flush`).  A fire-and-forget line (a
    statement's end, a session's close) is queued quietly too: it rides with the next batch,
    or the writer's timer kicks it out (:meth:`kick`) after ``lazy_delay``, so it never costs
    an fsync of its own that the next begin would queue behind, nor a wake-up of this thread
    per statement.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._cond = threading.Condition(threading.Lock())
        self._lines: list[Write] = []
        self._inflight: list[Write] = []
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
        self._written: Callable[[list[Write], int, float], None] | None = None
        self._failed: Callable[[list[Write], OSError, bool], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop,
              written: Callable[[list[Write], int, float], None],
              failed: Callable[[list[Write], OSError, bool], None]) -> None:
        self._loop, self._written, self._failed = loop, written, failed
        self._thread = threading.Thread(target=self._run, name="policyc-audit-spool",
                                        daemon=True)
        self._thread.start()

    # --- called on the event loop -------------------------------------------------------
    def put(self, write: Write, *, now: bool) -> None:
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

    def take(self) -> list[Write] | None:
        """Everything queued, for the event loop to write itself; None while the thread owns
        the spool (or nothing is queued).  Hand the spool back with :meth:`release`."""
        with self._cond:
            if self._busy or not self._lines or self._mode != "run":
                return None
            batch, self._lines, self._urgent = self._lines, [], False
            self._busy = True
            self._inflight = batch
            return batch

    def release(self, retry: list[Write], written: int | None = None) -> None:
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

    def stop(self, *, abort: bool) -> list[Write]:
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
    def _next(self) -> tuple[Any, list[Write]] | None:
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
