"""Stopping the proxy as an operator expects (issue #15, item 3): on SIGTERM it accepts no more
connections, lets statements in flight finish (up to ``--shutdown-timeout``), ends every
session with 57P01 as PostgreSQL does, records each end, and exits 0 without a traceback; a
second signal ends everything at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import CLINIC, Database
from policyc.devcluster import free_port
from proxyharness import wait_for

pytestmark = pytest.mark.db

LOCKED_READ = "SELECT count(*) FROM claims"


def lock_claims(db: Database) -> psycopg.Connection[Any]:
    """A transaction holding claims locked: an agent's read of claims waits for it."""
    holder = db.connect(autocommit=False)
    holder.execute("LOCK TABLE public.claims IN ACCESS EXCLUSIVE MODE")
    return holder


def waiting_for_lock(db: Database) -> bool:
    """A backend waits for the lock on public.claims (an agent's read began)."""
    return bool(db.execute("SELECT count(*) FROM pg_locks WHERE relation = "
                           "'public.claims'::regclass AND NOT granted")[0][0])


def read_in_background(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["rows"] = conn.execute(LOCKED_READ).fetchone()
        except psycopg.Error as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def ends(db: Database) -> dict[str, str]:
    return dict(db.execute("SELECT agent, end_reason FROM audit.sessions WHERE ended_at IS NOT "
                           "NULL AND agent LIKE 'agent-sd%'"))


def test_statements_in_flight_finish_then_every_session_ends_with_57p01(
        proxy: Any, applied_clinic: Database) -> None:
    idle = proxy.connect("agent-sd1", "billing", clinic_id=1)
    busy = proxy.connect("agent-sd2", "billing", clinic_id=1)
    in_tx = proxy.connect("agent-sd3", "billing", clinic_id=1)
    in_tx.execute("BEGIN")
    in_tx.execute("SELECT 1")
    holder = lock_claims(applied_clinic)
    outcome = read_in_background(busy)
    assert wait_for(lambda: waiting_for_lock(applied_clinic))

    late = proxy.dsn("agent-sd4", "billing", clinic_id=1)
    stopped = asyncio.run_coroutine_threadsafe(proxy.server.shut_down(30), proxy.loop)
    # nothing in flight: ended at once, the open transaction rolled back
    for conn in (idle, in_tx):
        with pytest.raises(psycopg.errors.AdminShutdown, match="proxy is shutting down"):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):  # no new connections
        psycopg.connect(late)
    assert not stopped.done()  # the read still runs
    holder.rollback()
    outcome["thread"].join(10)
    assert "error" not in outcome and outcome["rows"] is not None  # it finished
    stopped.result(30)
    with pytest.raises(psycopg.errors.AdminShutdown):
        busy.execute("SELECT 1")
    assert wait_for(lambda: len(ends(applied_clinic)) == 3)
    assert set(ends(applied_clinic).values()) == {"the proxy shut down"}
    holder.close()


def test_after_the_timeout_a_statement_still_running_is_ended(
        proxy: Any, applied_clinic: Database) -> None:
    busy = proxy.connect("agent-sd5", "billing", clinic_id=1)
    holder = lock_claims(applied_clinic)
    try:
        outcome = read_in_background(busy)
        assert wait_for(lambda: waiting_for_lock(applied_clinic))
        started = time.monotonic()
        proxy.call(proxy.server.shut_down(0.5), timeout=30)
        outcome["thread"].join(10)
        assert isinstance(outcome.get("error"), psycopg.errors.AdminShutdown)
        assert time.monotonic() - started < 10
        # the database session was closed: its statement no longer waits for the lock
        assert wait_for(lambda: not waiting_for_lock(applied_clinic))
    finally:
        holder.close()


def _proxy_process(db: Database, spool: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyc.cli", "proxy", str(CLINIC / "policy.yaml"),
         "--listen", f"127.0.0.1:{port}", "--upstream", db.dsn_as("policyc_proxy"),
         "--allow-plaintext-loopback", "--spool", str(spool), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


@pytest.mark.slow
def test_sigterm_then_sigint_on_a_real_process(proxy: Any, applied_clinic: Database,
                                               tmp_path: Path) -> None:
    """The CLI process: SIGTERM waits for the statement in flight; SIGINT after it ends
    everything at once; exit 0, the log says so, no traceback."""
    proc, port = _proxy_process(applied_clinic, tmp_path / "own-spool", "--shutdown-timeout", "60",
                                "--checkpoint-interval", "0")
    dsn = proxy.dsn("agent-sd6", "billing", clinic_id=1).replace(
        f"port={proxy.port}", f"port={port}")
    holder = lock_claims(applied_clinic)
    try:
        conn = wait_for(lambda: _try_connect(dsn), timeout=30)
        if not conn:
            proc.kill()
            pytest.fail(f"the proxy did not start: {proc.communicate(timeout=10)}")
        outcome = read_in_background(conn)
        assert wait_for(lambda: waiting_for_lock(applied_clinic))
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # waiting for the read (60 s allowed)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 20
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "shutting down" in err and "shut down" in err
        outcome["thread"].join(10)
        assert isinstance(outcome.get("error"), psycopg.errors.AdminShutdown)
    finally:
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _try_connect(dsn: str) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError:
        return None


def test_a_held_statement_s_request_is_closed_when_the_proxy_stops(
        applied_clinic: Database, tmp_path: Path) -> None:
    """A statement waiting for a human when the proxy stops: the session ends (57P01) and its
    request is closed as cancelled, so no approver decides what can no longer run."""
    from proxyharness import run_proxy
    from test_proxy_approvals import UPDATE_ALL, _policy

    with run_proxy(_policy(applied_clinic), applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        conn = running.connect("agent-sd7", "billing", clinic_id=1)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                conn.execute(UPDATE_ALL)
            except psycopg.Error as exc:
                outcome["error"] = exc
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert wait_for(lambda: applied_clinic.execute(
            "SELECT count(*) FROM audit.approvals WHERE status = 'pending'")[0][0] == 1)
        running.call(running.server.shut_down(30))
        thread.join(10)
        assert isinstance(outcome.get("error"), psycopg.errors.AdminShutdown)
    status, reason = applied_clinic.execute(
        "SELECT status, decision_reason FROM audit.approvals ORDER BY id DESC LIMIT 1")[0]
    assert status == "cancelled" and "session ended while the statement was held" in reason
    assert applied_clinic.execute(
        "SELECT count(*) FROM public.claims WHERE status = 'reviewed'") == [(0,)]
