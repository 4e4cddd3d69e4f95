"""Run a real ``policyc proxy --workers N`` (the CLI, a supervisor and its worker processes) for
tests that drive it with real clients, and look at its workers through ``/proc``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CLINIC, Database
from policyc.devcluster import free_port
from proxyharness import wait_for

POLICY = CLINIC / "policy.yaml"


def workers_of(supervisor: int) -> dict[int, Path]:
    """The supervisor's worker processes now, each with the spool whose lock it holds."""
    found: dict[int, Path] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            if ppid != supervisor:
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.endswith("/spool.lock"):
                    found[int(entry)] = Path(target).parent
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def unix_sockets_of(pid: int) -> list[Path]:
    """The paths of the Unix sockets process ``pid`` has bound (``/proc/net/unix`` by inode)."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    paths: list[Path] = []
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/"):
                paths.append(Path(parts[7]))
    return paths


@dataclass
class Supervised:
    """A running ``policyc proxy --workers N``: the supervisor, its port and spool."""

    proc: subprocess.Popen[str]
    port: int
    spool: Path
    count: int
    output: list[str] = field(default_factory=list)

    def workers(self) -> dict[int, Path]:
        return workers_of(self.proc.pid)

    def worker_pids(self) -> dict[int, int]:
        """Each worker's process id, by worker index (read from the spool it holds)."""
        by_index: dict[int, int] = {}
        for pid, where in self.workers().items():
            index = 0 if where == self.spool else int(where.name.removeprefix("worker-"))
            by_index[index] = pid
        return by_index


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM a proxy process still running (a graceful stop), SIGKILL it after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def supervise(db: Database, spool: Path, count: int = 2,
              extra: tuple[str, ...] = ()) -> Iterator[Supervised]:
    """``policyc proxy --workers count`` (and ``extra`` options) on a fixed free port until
    every worker listens."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyc.cli", "proxy", str(POLICY), "--workers", str(count),
         "--listen", f"127.0.0.1:{port}", "--upstream", db.dsn_as("policyc_proxy"),
         "--allow-plaintext-loopback", "--spool", str(spool), "--checkpoint-interval", "0",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    running = Supervised(proc, port, spool, count)
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: running.output.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        if not wait_for(lambda: sum(line.count("listening on") for line in running.output) >= count
                        and len(running.workers()) == count, timeout=60):
            pytest.fail(f"the workers did not start: {running.output}")
        yield running
    finally:
        stop_process(proc)
