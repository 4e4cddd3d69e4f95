"""The admin listener (issue #15, item 1): ``/live``, ``/ready`` and ``/metrics`` over real HTTP
against a real proxy; readiness that turns red when an agent session could not be served or
audited; metrics that count what happened and never carry PHI, statement text or tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Database, clinic_policy
from policyc.proxy.audit.log import AuditHealth
from policyc.proxy.tally import Histogram
from proxyharness import DEV_KEYS, run_proxy, wait_for
from test_proxy_shutdown import lock_claims, read_in_background, waiting_for_lock

SECRET_VALUE = "SSN-123-45-6789"


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on the admin port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by name and sorted labels."""
    status, ctype, body = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def admin_port(running: Any) -> int:
    assert running.server.admin is not None
    port: int = running.server.admin.port
    return port


@pytest.fixture
def watched(applied_clinic: Database, tmp_path: Path) -> Any:
    """A proxy with its admin listener on a free loopback port."""
    policy = clinic_policy(applied_clinic.name)
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool",
                   admin_port=0) as running:
        yield running


# ---- without a database ------------------------------------------------------------------

def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert histogram.count == 5 and histogram.total == pytest.approx(3.0535)


def health(**changes: Any) -> AuditHealth:
    base = AuditHealth(running=True, outage=False, spool_failing=False, spool_full=False,
                       spool_bytes=10, spool_limit=100, pending=0, oldest_pending_seconds=0.0,
                       flushes=Histogram(), counts={})
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(("changes", "problem"), [
    ({}, None),
    ({"running": False}, "not running"),
    ({"spool_failing": True}, "cannot be written"),
    ({"spool_full": True}, "at its limit"),
    ({"spool_bytes": 100}, "at its limit"),
    ({"outage": True}, "unreachable"),
])
def test_the_audit_trail_is_writable_only_when_every_part_is(changes: dict[str, Any],
                                                             problem: str | None) -> None:
    found = health(**changes).problem()
    assert (found is None) if problem is None else (found is not None and problem in found)


# ---- a real proxy ------------------------------------------------------------------------

@pytest.mark.db
def test_live_ready_and_unknown_paths(watched: Any) -> None:
    port = admin_port(watched)
    assert port != watched.port  # off the agents' port
    assert get(port, "/live")[:2] == (200, "text/plain")
    status, ctype, body = get(port, "/ready")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"ready": True, "checks": {
        "accepting": "ok", "audit": "ok", "keys": "ok", "upstream": "ok"}}
    assert get(port, "/nothing")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ready", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 (http to loopback)
    assert refused.value.code == 405


@pytest.mark.db
def test_garbage_and_slow_requests_end_only_their_connection(watched: Any) -> None:
    port = admin_port(watched)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nX: " + b"a" * 20000)  # past the header limit
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert get(port, "/live")[0] == 200


@pytest.mark.db
def test_metrics_count_sessions_statements_and_refusals_without_secrets(watched: Any) -> None:
    port = admin_port(watched)
    before = samples(port)
    token = watched.token("agent-m1", "billing", clinic_id=1)
    with psycopg.connect(watched.dsn("agent-m1", "billing", token=token),
                         autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM patients WHERE full_name = %s", (SECRET_VALUE,))
        conn.execute(f"SELECT '{SECRET_VALUE}' AS v")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE postgres")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(watched.dsn("agent-m1", "billing", token=token[:-4] + "AAAA"))
    status, _, body = get(port, "/metrics")
    assert status == 200
    for secret in (SECRET_VALUE, token, token[:40], "agent-m1"):
        assert secret not in body  # no PHI, statement text, token or agent name by default
    after = samples(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("policyc_sessions_total", group="billing", outcome="opened") == 1
    assert grew("policyc_sessions_total", group="", outcome="refused") == 1
    assert grew("policyc_login_failures_total", reason="bad_signature") == 1
    assert grew("policyc_statements_total", decision="blocked", kind="role",
                group="billing") == 1
    allowed = sum(v for (name, labels), v in after.items()
                  if name == "policyc_statements_total" and ("group", "billing") in labels
                  and dict(labels)["decision"] in ("allowed", "masked")) - sum(
        v for (name, labels), v in before.items()
        if name == "policyc_statements_total" and ("group", "billing") in labels
        and dict(labels)["decision"] in ("allowed", "masked"))
    assert allowed >= 2
    ran = grew("policyc_statement_upstream_seconds_count")
    assert ran >= 2 and grew("policyc_statement_proxy_seconds_count") == ran
    assert value(after, "policyc_spool_flush_seconds_count") > 0
    assert value(after, "policyc_spool_limit_bytes") > value(after, "policyc_spool_bytes") > 0
    assert value(after, "policyc_sessions_open", group="billing") == 0
    assert value(after, "policyc_jwks_refreshes_total", outcome="ok") >= 1
    assert value(after, "policyc_audit_outage") == 0


@pytest.mark.db
def test_agent_names_are_labels_only_when_the_operator_asks(applied_clinic: Database,
                                                            tmp_path: Path) -> None:
    policy = clinic_policy(applied_clinic.name)
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool",
                   admin_port=0, metrics_agent_labels=True) as running:
        with running.connect("agent-m2", "billing", clinic_id=1) as conn:
            conn.execute("SELECT 1")
        found = samples(admin_port(running))
    assert value(found, "policyc_sessions_total", group="billing", outcome="opened",
                 agent="agent-m2") == 1


@pytest.mark.db
def test_not_ready_while_the_database_refuses_the_service_login(watched: Any,
                                                                applied_clinic: Database) -> None:
    port = admin_port(watched)
    applied_clinic.execute("ALTER ROLE policyc_proxy NOLOGIN")
    try:
        status, _, body = get(port, "/ready")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["upstream"].startswith("the database refused")
        assert checks["audit"] == "ok"
        assert get(port, "/live")[0] == 200  # alive, only not ready
    finally:
        applied_clinic.execute("ALTER ROLE policyc_proxy LOGIN")
    time.sleep(2.2)  # the last answer stands for two seconds
    assert get(port, "/ready")[0] == 200


@pytest.mark.db
def test_not_ready_without_token_keys(applied_clinic: Database, tmp_path: Path) -> None:
    """An operator withdrawing the JWKS file: no agent can log in, so not ready."""
    policy = clinic_policy(applied_clinic.name)
    assert policy.identity is not None
    keys = tmp_path / "jwks.json"
    shutil.copy(DEV_KEYS / "jwks.json", keys)
    policy = dataclasses.replace(policy, identity=dataclasses.replace(policy.identity,
                                                                      jwks=str(keys)))
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool",
                   admin_port=0) as running:
        port = admin_port(running)
        assert get(port, "/ready")[0] == 200
        keys.unlink()
        status, _, body = get(port, "/ready")
        assert status == 503 and "cannot be read" in json.loads(body)["checks"]["keys"]
        assert value(samples(port), "policyc_jwks_refreshes_total", outcome="failed") >= 1


@pytest.mark.db
def test_not_ready_once_shutting_down(watched: Any, applied_clinic: Database) -> None:
    """While statements in flight finish, /ready says no, so a balancer stops sending."""
    port = admin_port(watched)
    holder = lock_claims(applied_clinic)
    conn = watched.connect("agent-m3", "billing", clinic_id=1)
    outcome = read_in_background(conn)
    try:
        assert wait_for(lambda: waiting_for_lock(applied_clinic))
        stopping = asyncio.run_coroutine_threadsafe(watched.server.shut_down(30), watched.loop)
        assert wait_for(lambda: get(port, "/ready")[0] == 503)
        assert json.loads(get(port, "/ready")[2])["checks"]["accepting"] == \
            "the proxy is shutting down"
        assert get(port, "/live")[0] == 200
    finally:
        holder.rollback()
        holder.close()
    stopping.result(30)
    outcome["thread"].join(10)
    assert outcome.get("rows") is not None  # the read in flight finished


@pytest.mark.db
def test_reloads_and_the_policy_in_force_are_metrics(watched: Any) -> None:
    """The fixture's policy names the test's database; its file names ``clinic``: a reload
    reads the file, refuses it, keeps the policy in force, and the metrics say so."""
    port = admin_port(watched)
    in_force = watched.server.policy_hash
    assert watched.call(watched.server.reload()) is False
    found = samples(port)
    assert value(found, "policyc_reloads_total", outcome="failed") == 1
    assert value(found, "policyc_reloads_total", outcome="ok") == 0
    assert value(found, "policyc_policy_info", hash=in_force) == 1


@pytest.mark.db
def test_the_metrics_table_in_the_operators_guide_is_what_is_served(watched: Any) -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    table = guide.split("## Metrics", 1)[1].split("\n\n", 2)[1]
    documented = set()
    for line in table.splitlines()[2:]:
        first_cell = line.split("|")[1]
        documented |= {part.strip(" `") for part in first_cell.split(",")}
    _, _, body = get(admin_port(watched), "/metrics")
    served = {family.name + ("_total" if family.type == "counter" else "")
              for family in text_string_to_metric_families(body)}
    assert documented == served


@pytest.mark.db
def test_a_flood_of_idle_admin_connections_is_capped(watched: Any) -> None:
    """Connections that never send a request hold at most MAX_ADMIN_CONNECTIONS slots; the
    rest are closed at once, and agents are served meanwhile."""
    from policyc.proxy.admin import MAX_ADMIN_CONNECTIONS

    port = admin_port(watched)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(MAX_ADMIN_CONNECTIONS)]
    try:
        assert wait_for(lambda: len(watched.server.admin._clients) == MAX_ADMIN_CONNECTIONS)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(100) == b""  # closed without an answer
        with watched.connect("agent-m4", "billing", clinic_id=1) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for sock in idle:
            sock.close()

    def live() -> bool:
        try:
            return get(port, "/live")[0] == 200
        except OSError:  # still at the cap for a moment: closed without an answer
            return False
    assert wait_for(live)
