"""``policyc proxy --workers N``: workers share one port (SO_REUSEPORT), each with its own spool;
a worker killed mid-load is restarted and its spool recovered, so every statement its clients
were answered is in ``audit.statements``; SIGTERM to the supervisor stops every worker."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, clinic_policy
from policyc.proxy.config import ProxyConfig, parse_upstream
from policyc.proxy.workers import worker_config, worker_spool
from proxyharness import wait_for
from test_spool_ownership import POLICY, agent_dsn, billing_token, recorded, spooled_texts
from workerharness import supervise, workers_of

WORKERS = 2


# --- pure: what each worker gets ---------------------------------------------------------------
def test_each_worker_has_its_own_spool_and_name_and_shares_the_port(tmp_path: Path) -> None:
    base = ProxyConfig(policy=clinic_policy("clinic"),
                       upstream=parse_upstream("host=db dbname=clinic"), listen_port=6432,
                       spool_dir=tmp_path / "spool", proxy_name="edge")
    run = tmp_path / "run"
    configs = [worker_config(base, k, count=3, cancel_dir=run) for k in range(3)]
    assert [c.spool_dir for c in configs] == [
        tmp_path / "spool", tmp_path / "spool" / "worker-1", tmp_path / "spool" / "worker-2"]
    assert [c.proxy_name for c in configs] == ["edge-0", "edge-1", "edge-2"]
    assert all(c.reuse_port and c.listen_port == 6432 for c in configs)
    assert [(c.worker_index, c.workers, c.cancel_dir) for c in configs] == [
        (0, 3, run), (1, 3, run), (2, 3, run)]
    assert not base.reuse_port and base.workers == 1 and base.cancel_dir is None
    assert worker_spool(tmp_path, 0) == tmp_path  # --workers 1 and worker 0: one spool
    default = dataclasses.replace(base, spool_dir=None)
    assert worker_config(default, 1, count=2, cancel_dir=run).spool_dir == \
        default.spool_path() / "worker-1"


def test_workers_need_a_fixed_port_and_a_positive_count() -> None:
    for argv, why in ((["--workers", "2", "--listen", "127.0.0.1:0"], "fixed port"),
                      (["--workers", "0"], "not a positive number")):
        done = subprocess.run(
            [sys.executable, "-m", "policyc.cli", "proxy", str(POLICY),
             "--allow-plaintext-loopback", "--upstream", "host=127.0.0.1 port=1", *argv],
            capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and why in done.stderr, done.stderr


# --- a real supervisor -----------------------------------------------------------------------
@pytest.fixture
def supervised(applied_clinic: Database, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str],
                                                                          int, Path]]:
    with supervise(applied_clinic, tmp_path / "spool", WORKERS) as running:
        assert running.output[0].startswith(
            f"policyc proxy: {WORKERS} workers on 127.0.0.1:{running.port}")
        yield running.proc, running.port, running.spool


def _run(conn: psycopg.Connection[Any]) -> str:
    marker = f"m_{uuid.uuid4().hex}"
    assert conn.execute(f"SELECT 1 AS {marker}").fetchall() == [(1,)]
    return marker


def test_a_killed_worker_is_restarted_and_its_spool_delivered(
        applied_clinic: Database,
        supervised: tuple[subprocess.Popen[str], int, Path]) -> None:
    db = applied_clinic
    proc, port, spool = supervised
    token = billing_token(db)
    clients = [psycopg.connect(agent_dsn(db, port, token), autocommit=True) for _ in range(8)]
    answered: dict[int, list[str]] = {i: [] for i in range(len(clients))}
    try:
        with db.connect() as locker:
            # the drainers cannot insert while this lock is held: records stay spooled
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE audit.statements IN ACCESS EXCLUSIVE MODE")
            for _ in range(3):
                for i, conn in enumerate(clients):
                    answered[i].append(_run(conn))
            workers = workers_of(proc.pid)
            spooled = {pid: "\n".join(spooled_texts(where)) for pid, where in workers.items()}
            on = {i: next(pid for pid, text in spooled.items() if markers[0] in text)
                  for i, markers in answered.items()}  # each client's worker, by its spool
            victim = on[0]
            victim_spool = workers[victim]
            os.kill(victim, signal.SIGKILL)
            restarted = wait_for(lambda: len(now := workers_of(proc.pid)) == WORKERS
                                 and victim not in now and now, timeout=60)
            assert restarted, "the supervisor did not restart the killed worker"
            assert victim_spool in restarted.values()
            # the survivors' clients were never disturbed
            for i, conn in enumerate(clients):
                if on[i] != victim:
                    answered[i].append(_run(conn))
            locker.execute("ROLLBACK")
        every = [m for markers in answered.values() for m in markers]
        assert wait_for(lambda: all(recorded(db, m) == 1 for m in every), timeout=60), [
            m for m in every if recorded(db, m) != 1]
        # the restarted worker serves: new connections work wherever they land
        for _ in range(4):
            with psycopg.connect(agent_dsn(db, port, token), autocommit=True) as conn:
                _run(conn)
    finally:
        for conn in clients:
            conn.close()
    assert proc.poll() is None
    spools = {worker_spool(spool, k) for k in range(WORKERS)}
    assert set(workers_of(proc.pid).values()) == spools


def test_sigterm_to_the_supervisor_stops_every_worker(
        supervised: tuple[subprocess.Popen[str], int, Path]) -> None:
    proc, port, _spool = supervised
    workers = list(workers_of(proc.pid))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or \
            "zombie" in Path(f"/proc/{pid}/status").read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _free_pair() -> int:
    """A port P with P and P + 1 free now (the admin ports of two workers)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two consecutive free ports")


@pytest.mark.db
@pytest.mark.slow
def test_each_worker_serves_its_own_admin_port(applied_clinic: Database, tmp_path: Path) -> None:
    """``--admin PORT`` with workers: worker K answers /ready and /metrics on PORT + K."""
    from test_proxy_admin import get, samples

    port = _free_pair()
    with supervise(applied_clinic, tmp_path / "spool", extra=("--admin", str(port))):
        for index in range(WORKERS):
            assert wait_for(lambda i=index: get(port + i, "/ready")[0] == 200)
            info = [labels for (name, labels) in samples(port + index)
                    if name == "policyc_proxy_info"]
            assert [dict(labels)["worker"] for labels in info] == [str(index)]
