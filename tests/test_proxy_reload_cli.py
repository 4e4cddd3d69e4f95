"""Live reload (issue #15, item 2) on a real ``policyc proxy`` process: SIGHUP reloads instead
of ending it (it used to exit 129), with ``--workers 2`` the supervisor passes SIGHUP on to
every worker and a worker it restarts serves the reloaded policy, and ``--reload-on-change``
(here from a ``--config`` file) picks up an edited policy by itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database
from policyc.devcluster import free_port
from proxyharness import DEV_KEYS, GROUPS, wait_for, write_clinic_policy
from test_proxy_reload import allow_size, may_size, session_of, versions
from workerharness import stop_process, workers_of

pytestmark = [pytest.mark.db, pytest.mark.slow]


@dataclass
class Process:
    """A ``policyc proxy`` process, its output read as it comes (the log is JSON lines)."""

    proc: subprocess.Popen[str]
    port: int
    database: str
    out: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.log) if line.get("event") == name]

    def dsn(self, agent: str, group: str, **claims: Any) -> str:
        from policyc.identity.devkeys import mint_token

        token = mint_token(DEV_KEYS / "dev-signing-key.pem", issuer="https://idp.clinic.example/",
                           audience="pg-gateway", subject=agent,
                           groups=[GROUPS.get(group, group)], claims=claims, ttl_seconds=600)
        return (f"host=127.0.0.1 port={self.port} dbname={self.database} user={agent} "
                f"password={token} sslmode=disable")

    def connect(self, agent: str, group: str, **claims: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(agent, group, **claims), autocommit=True)


@contextlib.contextmanager
def proxy_process(db: Database, tmp_path: Path, *args: str, listening: int = 1,
                  sighup_blocked: bool = False) -> Iterator[Process]:
    """``policyc proxy ARGS`` with JSON logs, until ``listening`` processes listen; with
    ``sighup_blocked`` it starts with SIGHUP blocked, as a parent may leave it (the mask is
    inherited)."""
    port = free_port()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK if sighup_blocked else signal.SIG_UNBLOCK,
                                  {signal.SIGHUP})
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policyc.cli", "proxy", *args, "--listen",
             f"127.0.0.1:{port}", "--upstream", db.dsn_as("policyc_proxy"),
             "--allow-plaintext-loopback", "--spool", str(tmp_path / "spool"),
             "--checkpoint-interval", "0", "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    running = Process(proc, port, db.name)

    def read_log(stream: Any) -> None:
        for line in iter(stream.readline, ""):
            try:
                running.log.append(json.loads(line))
            except ValueError:
                running.log.append({"message": line})  # a traceback, say: shown on failure
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: running.out.extend(iter(stdout.readline, "")),
                     daemon=True).start()
    threading.Thread(target=read_log, args=(proc.stderr,), daemon=True).start()
    try:
        if not wait_for(lambda: sum("listening on" in line for line in running.out)
                        >= listening, timeout=60):
            pytest.fail(f"the proxy did not start: {running.out} {running.log}")
        yield running
    finally:
        stop_process(proc)


def reloaded(process: Process, count: int, digest: str) -> Callable[[], bool]:
    return lambda: len([e for e in process.events("policy_reloaded")
                        if e.get("policy_hash") == digest]) >= count


def test_sighup_reloads_a_running_proxy(applied_clinic: Database, tmp_path: Path) -> None:
    policy = write_clinic_policy(tmp_path / "policy.yaml", applied_clinic.name)
    first = hashlib.sha256(policy.read_bytes()).hexdigest()
    with proxy_process(applied_clinic, tmp_path, str(policy), sighup_blocked=True) as process:
        opened = process.connect("agent-hup1", "research")
        assert not may_size(opened)
        write_clinic_policy(policy, applied_clinic.name, allow_size)
        second = hashlib.sha256(policy.read_bytes()).hexdigest()
        process.proc.send_signal(signal.SIGHUP)
        assert wait_for(reloaded(process, 1, second), timeout=20), process.log
        assert process.proc.poll() is None  # not 129: it runs on
        assert not may_size(opened)  # the open session keeps its rules, and its connection
        with process.connect("agent-hup2", "research") as fresh:
            assert may_size(fresh)
            ids = [session_of(opened), session_of(fresh)]
        assert versions(applied_clinic, *ids) == dict(zip(ids, [first, second], strict=True))

        policy.write_text("version: [\n")  # a bad file: said, counted, the old one kept
        process.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: process.events("reload_failed"), timeout=20)
        failed, = process.events("reload_failed")
        assert failed["level"] == "warning" and f"{policy}:" in failed["reason"]
        assert process.proc.poll() is None
        with process.connect("agent-hup3", "research") as fresh:
            assert may_size(fresh)
        opened.close()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(60) == 0


def test_the_supervisor_passes_sighup_on_and_restarts_workers_with_the_new_policy(
        applied_clinic: Database, tmp_path: Path) -> None:
    policy = write_clinic_policy(tmp_path / "policy.yaml", applied_clinic.name)
    with proxy_process(applied_clinic, tmp_path, str(policy), "--workers", "2",
                       listening=2, sighup_blocked=True) as process:
        supervisor = process.proc.pid
        assert wait_for(lambda: len(workers_of(supervisor)) == 2, timeout=30)
        pids = set(workers_of(supervisor))
        write_clinic_policy(policy, applied_clinic.name, allow_size)
        second = hashlib.sha256(policy.read_bytes()).hexdigest()
        process.proc.send_signal(signal.SIGHUP)
        if not wait_for(reloaded(process, 2, second), timeout=30):
            pytest.fail("no reload by both workers:\n" + "\n".join(
                f"{e.get('ts')} {e.get('logger')} {e.get('worker')} {e.get('event')} "
                f"{e.get('message')}" for e in process.log))
        assert {e.get("worker") for e in process.events("policy_reloaded")} == {0, 1}
        assert process.proc.poll() is None and set(workers_of(supervisor)) == pids

        # a worker that dies comes back with the policy the others serve, not the first one
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(workers_of(supervisor)) == 2 and victim not in
                        workers_of(supervisor), timeout=60)
        assert wait_for(lambda: sum("listening on" in line for line in process.out) >= 3,
                        timeout=60)
        sessions = [process.connect(f"agent-w{i}", "research") for i in range(8)]
        try:
            assert all(may_size(conn) for conn in sessions)
            ids = [session_of(conn) for conn in sessions]
        finally:
            for conn in sessions:
                conn.close()
        assert set(versions(applied_clinic, *ids).values()) == {second}
        assert process.proc.poll() is None


def test_reload_on_change_from_the_configuration_file(applied_clinic: Database,
                                                      tmp_path: Path) -> None:
    policy = write_clinic_policy(tmp_path / "policy.yaml", applied_clinic.name)
    config = tmp_path / "proxy.toml"
    config.write_text('policy = "policy.yaml"\nreload_on_change = true\n')
    with proxy_process(applied_clinic, tmp_path, "--config", str(config)) as process:
        with process.connect("agent-roc1", "research") as conn:
            assert not may_size(conn)
        write_clinic_policy(policy, applied_clinic.name, allow_size)
        second = hashlib.sha256(policy.read_bytes()).hexdigest()
        assert wait_for(reloaded(process, 1, second), timeout=20), process.log
        with process.connect("agent-roc2", "research") as conn:
            assert may_size(conn)
            sid = session_of(conn)
        assert versions(applied_clinic, sid) == {sid: second}
        policy.write_text("groups: [\n")  # half written: the old one stays
        assert wait_for(lambda: process.events("reload_failed"), timeout=20)
        with process.connect("agent-roc3", "research") as conn:
            assert may_size(conn)
        assert len(process.events("policy_reloaded")) == 1  # nothing else changed meanwhile
