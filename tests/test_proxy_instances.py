"""Several proxy instances sharing one database, each with its own spool (docs/deployment.md):
a statement held on one instance is released there when a human approves it with the
``policyc approvals`` / ``approve`` tooling, whichever instance asked; and behind HAProxy in
TCP mode (a session stays on the instance that accepted it) the same holds."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database
from policyc.cli import main
from policyc.devcluster import free_port
from proxyharness import RunningProxy, run_proxy, wait_for
from test_proxy_approvals import UPDATE_ALL, _in_thread, _policy

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                      if Path("/usr/sbin/haproxy").exists() else None)


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def pending(db: Database) -> dict[str, dict[str, Any]]:
    """``policyc approvals --json`` as alice: the pending requests, by agent."""
    code, out = cli("approvals", "--json", "--dsn", db.dsn_as("alice"))
    assert code == 0, out
    return {r["agent"]: r for r in map(json.loads, out.splitlines())}


def approve_held(db: Database, agent: str, proxy: str) -> None:
    """Wait for ``agent``'s request, check which instance asked, approve it on the CLI."""
    requests = wait_for(lambda: pending(db).get(agent) and pending(db))
    assert requests, f"no request of {agent} appeared"
    assert requests[agent]["proxy"] == proxy
    code, out = cli("approve", str(requests[agent]["id"]), "--reason", "ticket 7",
                    "--dsn", db.dsn_as("alice"))
    assert code == 0 and "approved" in out, out


@pytest.fixture
def instances(applied_clinic: Database, tmp_path: Path) -> Iterator[tuple[RunningProxy,
                                                                         RunningProxy]]:
    db = applied_clinic
    db.execute("CREATE ROLE alice LOGIN IN ROLE security_analysts")
    policy = _policy(db)
    with run_proxy(policy, db.dsn_as("policyc_proxy"), tmp_path / "a",
                   proxy_name="proxy-a") as a, \
            run_proxy(policy, db.dsn_as("policyc_proxy"), tmp_path / "b",
                      proxy_name="proxy-b") as b:
        yield a, b


def test_approvals_decided_by_the_cli_release_the_instance_that_holds(
        applied_clinic: Database, instances: tuple[RunningProxy, RunningProxy]) -> None:
    db = applied_clinic
    a, b = instances
    for proxy, agent, name in ((a, "agent-7", "proxy-a"), (b, "agent-8", "proxy-b")):
        with proxy.connect(agent, "billing", clinic_id=1) as conn:
            thread, result = _in_thread(lambda c=conn: c.execute(UPDATE_ALL).rowcount)
            approve_held(db, agent, name)
            thread.join(20)
            assert not thread.is_alive() and "error" not in result, result
            assert result["value"] > 0
    # both instances are still up and serving; each approval names the instance that asked
    for proxy in (a, b):
        with proxy.connect("agent-9", "billing", clinic_id=1) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert sorted(db.execute("SELECT agent, proxy, status FROM audit.approvals")) == [
        ("agent-7", "proxy-a", "approved"), ("agent-8", "proxy-b", "approved")]


def _haproxy_config(listen: int, backends: dict[str, int]) -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{port} check inter 2s"
                        for name, port in backends.items())
    return f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend agents
    bind 127.0.0.1:{listen}
    default_backend proxies
backend proxies
    balance roundrobin
{servers}
"""


@pytest.fixture
def balancer(instances: tuple[RunningProxy, RunningProxy], tmp_path: Path) -> Iterator[int]:
    if HAPROXY is None:
        pytest.skip("HAProxy comes from scripts/system-deps.sh")
    a, b = instances
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(_haproxy_config(port, {"a": a.port, "b": b.port}))
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"haproxy did not start: {proc.communicate()[1]}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_behind_a_tcp_load_balancer(applied_clinic: Database,
                                    instances: tuple[RunningProxy, RunningProxy],
                                    balancer: int) -> None:
    db = applied_clinic
    a, _b = instances
    conns: list[psycopg.Connection[Any]] = []
    try:
        for n in range(4):  # round robin: sessions land on both instances
            conns.append(psycopg.connect(a.dsn(f"agent-{n + 1}", "billing", clinic_id=1)
                                         .replace(f"port={a.port}", f"port={balancer}"),
                                         autocommit=True))
        landed = wait_for(lambda: {r[0] for r in db.execute(
            "SELECT proxy FROM audit.sessions WHERE outcome = 'open' AND ended_at IS NULL")}
            == {"proxy-a", "proxy-b"})
        assert landed, db.execute("SELECT agent, proxy, outcome FROM audit.sessions")
        # the sessions open now (earlier tests' sessions of the same agents are closed), and
        # one agent on each instance: the balancer's rotation decides which
        where = dict(db.execute("SELECT agent, proxy FROM audit.sessions "
                                "WHERE outcome = 'open' AND ended_at IS NULL"))
        askers = [next(agent for agent, proxy in sorted(where.items()) if proxy == instance)
                  for instance in ("proxy-a", "proxy-b")]
        for agent in askers:  # one session on each instance asks; each is released where it waits
            done: dict[str, Any] = {}
            conn = conns[int(agent.removeprefix("agent-")) - 1]
            thread = threading.Thread(
                target=lambda c=conn, d=done: d.update(rows=c.execute(UPDATE_ALL).rowcount))
            thread.start()
            approve_held(db, agent, where[agent])
            thread.join(20)
            assert done.get("rows", 0) > 0
    finally:
        for conn in conns:
            conn.close()
