"""Run a real policyc proxy in a background thread (its own event loop) for tests that drive
it with real clients: psycopg, asyncpg, psql and pgbench."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from policyc.identity.devkeys import mint_token
from policyc.policy.model import Policy
from policyc.proxy.config import ProxyConfig, parse_upstream
from policyc.proxy.server import ProxyServer

ROOT = Path(__file__).resolve().parent.parent
DEV_KEYS = ROOT / "examples" / "clinic" / "dev-keys"
GROUPS = {"billing": "billing-agents", "research": "research-agents",
          "clinician": "clinician-agents"}


@dataclass
class RunningProxy:
    server: ProxyServer
    loop: asyncio.AbstractEventLoop
    policy: Policy
    database: str

    @property
    def port(self) -> int:
        return self.server.port

    def token(self, agent: str, group: str, ttl: int = 600, **claims: Any) -> str:
        assert self.policy.identity is not None
        return mint_token(
            DEV_KEYS / "dev-signing-key.pem", issuer=self.policy.identity.issuer,
            audience=self.policy.identity.audience, subject=agent,
            groups=[GROUPS.get(group, group)], claims=claims, ttl_seconds=ttl,
        )

    def dsn(self, agent: str = "agent-7", group: str = "billing", *, token: str | None = None,
            sslmode: str = "disable", **claims: Any) -> str:
        if token is None:
            token = self.token(agent, group, **claims)
        return (f"host=127.0.0.1 port={self.port} dbname={self.database} user={agent} "
                f"password={token} sslmode={sslmode}")

    def connect(self, agent: str = "agent-7", group: str = "billing",
                **claims: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(agent, group, **claims), autocommit=True)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def run_proxy(policy: Policy, upstream_dsn: str, spool: Path, *, tls: bool = True,
              **overrides: Any) -> Iterator[RunningProxy]:
    config = ProxyConfig(
        policy=policy, upstream=parse_upstream(upstream_dsn), listen_port=0,
        tls_cert=DEV_KEYS / "dev-tls.crt" if tls else None,
        tls_key=DEV_KEYS / "dev-tls.key" if tls else None,
        allow_plaintext_loopback=True, spool_dir=spool,
    )
    config = replace(config, **overrides)
    loop = asyncio.new_event_loop()
    server = ProxyServer(config)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    running = RunningProxy(server, loop, policy, parse_upstream(upstream_dsn).dbname)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def write_clinic_policy(path: Path, database: str, edit: Any = None) -> Path:
    """The clinic example policy as a file of its own at ``path`` (for tests that change it
    under a running proxy): ``database:`` the test database, the JWKS by absolute path, and
    ``edit(text) -> text`` applied last."""
    text = (ROOT / "examples" / "clinic" / "policy.yaml").read_text()
    text = text.replace("database: clinic\n", f"database: {database}\n", 1)
    text = text.replace("jwks: dev-keys/jwks.json", f"jwks: {DEV_KEYS / 'jwks.json'}", 1)
    if edit is not None:
        text = edit(text)
    path.write_text(text)
    return path


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (the audit log drains asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
