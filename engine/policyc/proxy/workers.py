"""``policyc proxy --workers N``: N proxy processes accepting on one port, and a supervisor.

One process is one event loop on one core.  With ``SO_REUSEPORT`` (Linux) every worker binds
the same address and the kernel spreads new connections among them; a session lives in the
worker that accepted it.  Each worker is a whole proxy with its own audit log and its own
spool, claimed by the spool-owner rules (:mod:`policyc.proxy.audit.owner`): worker 0 uses the
configured spool directory itself (so ``--workers 1`` and worker 0 share one spool, and what a
single process left there is recovered by worker 0), worker ``k`` uses ``<spool>/worker-<k>``.
A spool is never shared: a worker holds its ``spool.lock`` for as long as it runs.

A client's CancelRequest comes on a new connection that any worker may accept; the pids each
worker hands out name it, and workers forward each other such requests through private Unix
sockets in a directory the supervisor creates for the run (:mod:`policyc.proxy.cancels`).

The supervisor starts the workers, restarts one that dies (the new process recovers the dead
one's spool on start, as any proxy does after a crash: every record acknowledged before the
death is delivered), and stops them all on SIGTERM or SIGINT.  A worker that dies again and
again within seconds of its start (a configuration the database refuses, a spool owned by
another database) stops the whole proxy instead of looping.  See docs/deployment.md.

SIGHUP reloads (:mod:`policyc.proxy.reload`): one process reloads itself; a supervisor passes
the signal on to every worker, and, with ``--reload-on-change``, is the one that watches the
files.  It also checks the policy itself and keeps the newest one that passed, so that a
worker it restarts serves the policy the others serve, not the one the proxy started with.
A process holds SIGHUP blocked until its handler is in place (a worker inherits the block
from its supervisor), so a reload asked for while it starts waits instead of killing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final, TextIO

from policyc import logs
from policyc.proxy import reload
from policyc.proxy.cancels import make_cancel_dir, remove_cancel_dir
from policyc.proxy.config import ProxyConfig
from policyc.proxy.server import ProxyServer

log = logging.getLogger("policyc.proxy.workers")

#: A worker that dies sooner than this after its start counts towards a crash loop.
QUICK_DEATH_SECONDS = 10.0
#: Quick deaths in a row of one worker that stop the whole proxy.
CRASH_LOOP_DEATHS = 5
#: How long workers get to close their sessions and flush their audit logs on stop.
STOP_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def worker_spool(base: Path, index: int) -> Path:
    """Worker ``index``'s spool: the configured directory for worker 0, a subdirectory else."""
    return base if index == 0 else base / f"worker-{index}"


def worker_config(config: ProxyConfig, index: int, *, count: int,
                  cancel_dir: Path | None) -> ProxyConfig:
    """Worker ``index`` of ``count``'s configuration: its own spool and name, the shared port,
    and the directory of the workers' cancel sockets."""
    return replace(config, spool_dir=worker_spool(config.spool_path(), index),
                   proxy_name=f"{config.proxy_name}-{index}", reuse_port=True,
                   worker_index=index, workers=count, cancel_dir=cancel_dir,
                   reload_on_change=False)  # the supervisor watches, and passes SIGHUP on


#: Allocations (net of frees) between two young-generation collections; CPython's default is
#: 700, which collects several times a second at a few thousand statements/s
GC_YOUNG_THRESHOLD: Final = 20_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the statement path once the proxy is up.

    Objects that live as long as the proxy (the policy, the parser, the modules, caches
    warmed at start) are moved out of the collector's view (``gc.freeze``), and young
    collections run every :data:`GC_YOUNG_THRESHOLD` allocations instead of 700: profiled
    under load, the collector took ~5 % of the event loop's CPU, most of it re-walking
    long-lived objects.  Session objects are freed by reference counting; the collector
    still reclaims cycles, only less often.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve(config: ProxyConfig, out: TextIO) -> None:
    """Run one proxy until SIGINT or SIGTERM, then close it (sessions, spool, audit log);
    SIGHUP reloads it."""
    # until the handler is in place a SIGHUP waits (pending) instead of ending the process;
    # threads started meanwhile keep it blocked, so it reaches the event loop's thread.  The
    # mask is given back at the end (a proxy that fails to start must not leave its caller,
    # and whatever that caller starts later, with SIGHUP blocked)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    async def run() -> None:
        nonlocal config
        if config.workers > 1:  # started (or restarted) by a supervisor
            config = await reload.current_credential(config)
        server = ProxyServer(config)
        await server.start()
        settle_heap()
        up = config.upstream
        print(f"policyc proxy: listening on {config.listen_host}:{server.port}, upstream "
              f"{up.host}:{up.port}/{up.dbname}", file=out, flush=True)
        stop, at_once = asyncio.Event(), asyncio.Event()
        reloads: set[asyncio.Task[bool]] = set()

        def on_signal() -> None:  # the second SIGTERM or SIGINT: stop without waiting
            (at_once if stop.is_set() else stop).set()

        def on_hangup() -> None:  # reloads run one at a time (the reloader's lock)
            if stop.is_set():
                return
            task = asyncio.ensure_future(server.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        await stop.wait()
        log.info("shutting down: no new connections; sessions end with 57P01 once their "
                 "statements are answered, within %.0f s (signal again: at once)",
                 config.shutdown_timeout, extra={"event": "shutdown_started",
                                                 "count": len(server.sessions)})
        await server.shut_down(config.shutdown_timeout, at_once)
        log.info("shut down", extra={"event": "shutdown_done"})

    try:
        import uvloop  # noqa: PLC0415 - optional

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies (a killed supervisor must not
    leave workers serving on the port with nobody to restart them)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker_main(config: ProxyConfig) -> None:
    _die_with_parent()
    logs.configure(config.log_format, config.log_level)
    serve(config, sys.stdout)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    quick_deaths: int = 0


class Supervisor:
    """Starts ``count`` workers, restarts the ones that die, stops them all on a signal."""

    def __init__(self, config: ProxyConfig, count: int, *,
                 target: Callable[[ProxyConfig], None] = _worker_main) -> None:
        self.config = config  # with the newest policy that passed a reload's checks
        self.count = count
        self._target = target
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._hangup = False  # a SIGHUP to pass on
        self.cancel_dir: Path | None = None

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or a crash loop (exit 1); pass SIGHUP on."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        # whoever started the supervisor may have left SIGHUP blocked (the mask is inherited)
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        watch = self.config.reload_on_change
        seen = reload.stamps(reload.watched_files(self.config)) if watch else {}
        next_look = time.monotonic() + reload.POLL_SECONDS
        try:
            # one private directory for the run: a restarted worker finds its siblings there
            self.cancel_dir = make_cancel_dir(f"worker-{self.count - 1}.sock")
            log.info("cancel requests pass between workers through %s", self.cancel_dir)
            for index in range(self.count):
                self._start(index, quick_deaths=0)
            while not self._stopping:
                sentinels = [w.process.sentinel for w in self._workers.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.5)
                if watch and time.monotonic() >= next_look:
                    next_look = time.monotonic() + reload.POLL_SECONDS
                    now = reload.stamps(reload.watched_files(self.config))
                    if reload.changed(seen, now):
                        self._hangup = True
                    seen = now
                if self._hangup and not self._stopping:
                    self._hangup = False
                    self._reload()
                for worker in list(self._workers.values()):
                    if self._stopping or worker.process.is_alive():
                        continue
                    if not self._restart(worker):
                        self._stopping = True
                        return 1
            return 0
        finally:
            self._stop_all()
            if self.cancel_dir is not None:
                remove_cancel_dir(self.cancel_dir)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def pids(self) -> dict[int, int | None]:
        """Each worker's process id, by worker index."""
        return {i: w.process.pid for i, w in self._workers.items()}

    def _on_hangup(self, signum: int, _frame: object) -> None:
        self._hangup = True  # acted on in run(), between two looks at the workers

    def _reload(self) -> None:
        """Check the files as a worker will, keep the policy for restarts when they pass, and
        pass SIGHUP on to every worker (each reloads and logs the outcome itself)."""
        try:
            checked = reload.check_files(self.config)
        except reload.ReloadFailed as exc:
            log.debug("the supervisor keeps its policy for restarts: %s", exc)
        else:
            self.config = replace(self.config, policy=checked.policy)
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGHUP)
        log.info("reload: SIGHUP passed on to %d workers", len(self._workers))

    def _stop(self, signum: int, _frame: object) -> None:
        if self._stopping:  # a second signal: the workers stop without waiting either
            for worker in self._workers.values():
                if worker.process.is_alive() and worker.process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGTERM)
        self._stopping = True

    def _start(self, index: int, quick_deaths: int) -> None:
        process = self._context.Process(target=self._target,
                                        args=(worker_config(self.config, index,
                                                            count=self.count,
                                                            cancel_dir=self.cancel_dir),),
                                        name=f"policyc-proxy-worker-{index}")
        # the worker starts with SIGHUP blocked (inherited) until its handler is in place; a
        # SIGHUP to the supervisor meanwhile waits here and reaches the new worker too
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._workers[index] = _Worker(index, process, time.monotonic(), quick_deaths)
        log.info("worker %d started (pid %s)", index, process.pid)

    def _restart(self, worker: _Worker) -> bool:
        """Start a dead worker again, after a pause that grows with quick deaths in a row;
        False when it keeps dying (a crash loop: the proxy stops)."""
        lived = time.monotonic() - worker.started
        pid, code = worker.process.pid, worker.process.exitcode
        worker.process.close()
        quick = worker.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
        log.error("worker %d (pid %s) died (exit code %s) after %.1f s; restarting it (its "
                  "spool is recovered on start)", worker.index, pid, code, lived)
        if quick >= CRASH_LOOP_DEATHS:
            log.error("worker %d died %d times in a row within %.0f s of its start: stopping",
                      worker.index, quick, QUICK_DEATH_SECONDS)
            del self._workers[worker.index]
            return False
        pause = min(30.0, 0.5 * 2 ** quick) if quick else 0.0
        deadline = time.monotonic() + pause
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._stopping:
            del self._workers[worker.index]
            return True
        self._start(worker.index, quick)
        return True

    def _stop_all(self) -> None:
        """SIGTERM every worker (each closes its sessions and flushes its audit log), then
        SIGKILL whoever is still there after their shutdown timeout and
        :data:`STOP_GRACE_SECONDS` more."""
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        grace = self.config.shutdown_timeout + STOP_GRACE_SECONDS
        deadline = time.monotonic() + grace
        for worker in self._workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in %.0f s: killing it", worker.index,
                          grace)
                worker.process.kill()
                worker.process.join(5)
        self._workers.clear()
