"""The admin listener (``--admin HOST:PORT``): ``/live``, ``/ready`` and ``/metrics`` over HTTP.

Off the agents' port and on loopback unless the operator says otherwise, so a load balancer,
Kubernetes or Prometheus can watch the proxy without any agent reaching it.  The HTTP spoken
is the least a probe or a scraper needs (``GET``/``HEAD``, one request per connection, no
keep-alive), read under a size and time limit like everything else the proxy reads.

* ``/live`` — 200 while the event loop answers.
* ``/ready`` — 200 when a new agent session could be served and audited: the database takes
  the service role's login, the audit trail is writable (spool writable and under its limit,
  the drain reaching the database), the token keys are loaded, and the proxy is not shutting
  down; otherwise 503.  The body (JSON) names each check and what failed, never a secret.
* ``/metrics`` — Prometheus text (:mod:`policyc.proxy.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from policyc.errors import PolicycError
from policyc.proxy.metrics import ProxyCollector

if TYPE_CHECKING:
    from policyc.proxy.server import ProxyServer

log = logging.getLogger("policyc.proxy.admin")

MAX_REQUEST_BYTES: Final = 8192  # request line and headers together
READ_TIMEOUT: Final = 5.0
#: Admin requests served at once; more are closed at once (a probe or scraper retries).
MAX_ADMIN_CONNECTIONS: Final = 32
#: How long one answer of the upstream check stands (probes come every few seconds, from
#: several balancers at once: one login per period is enough).
UPSTREAM_CHECK_TTL: Final = 2.0
UPSTREAM_CHECK_TIMEOUT: Final = 3


@dataclass
class _Answer:
    ok: bool
    why: str | None
    at: float


class AdminServer:
    """Serves ``/live``, ``/ready`` and ``/metrics`` for one :class:`ProxyServer`."""

    def __init__(self, proxy: ProxyServer, host: str, port: int) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(proxy))
        self._server: asyncio.base_events.Server | None = None
        self._upstream: _Answer | None = None
        self._checking: asyncio.Task[_Answer] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise PolicycError(f"cannot listen on {self.host}:{self.port} for --admin: "
                               f"{reason.lower()}; choose another address or port") from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._clients):
            task.cancel()
        if self._checking is not None:
            self._checking.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    # ---- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_ADMIN_CONNECTIONS:  # a flood must not use up descriptors
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        head_only = False
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            head_only = head.startswith(b"HEAD ")
            status, ctype, body = await self._answer(head)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except (ConnectionError, asyncio.CancelledError):
            writer.close()
            return
        except Exception as exc:  # an answer that cannot be made never ends the proxy
            log.error("admin request failed: %s", type(exc).__name__, exc_info=exc)
            status, ctype, body = 500, "text/plain", b"internal error\n"
        finally:
            if task is not None:
                self._clients.discard(task)
        with contextlib.suppress(Exception):  # a client that does not read is dropped
            async with asyncio.timeout(READ_TIMEOUT):
                writer.write(_response(status, ctype, b"" if head_only else body, len(body)))
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        """The answer to one request head (at most MAX_REQUEST_BYTES: the reader's limit)."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request\n"
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = target.split("?", 1)[0]
        if path == "/live":
            return 200, "text/plain", b"live\n"
        if path == "/ready":
            ready, checks = await self.readiness()
            body = json.dumps({"ready": ready, "checks": checks}, sort_keys=True).encode()
            return (200 if ready else 503), "application/json", body + b"\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, "text/plain", b"not found: try /live, /ready or /metrics\n"

    # ---- readiness -------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Each check's verdict (``ok`` or what is wrong) and whether all passed."""
        proxy = self.proxy
        checks: dict[str, str] = {}
        checks["accepting"] = "ok" if proxy.accepting else "the proxy is shutting down"
        audit = proxy.audit
        problem = "the audit log is not started" if audit is None else audit.health().problem()
        checks["audit"] = problem or "ok"
        keys = getattr(proxy.verifier, "keys", None)
        key_problem = "no token verifier" if keys is None else await _key_problem(keys)
        checks["keys"] = key_problem or "ok"
        upstream = await self._upstream_answer()
        checks["upstream"] = "ok" if upstream.ok else (upstream.why or "unreachable")
        return all(v == "ok" for v in checks.values()), checks

    async def _upstream_answer(self) -> _Answer:
        answer = self._upstream
        if answer is not None and time.monotonic() - answer.at < UPSTREAM_CHECK_TTL:
            return answer
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_upstream())
        answer = await asyncio.shield(self._checking)
        self._upstream = answer
        return answer

    async def _check_upstream(self) -> _Answer:
        """The service role logs in and runs ``SELECT 1``: what every agent login needs."""
        conninfo = self.proxy.config.upstream.conninfo()
        try:
            async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=UPSTREAM_CHECK_TIMEOUT,
                    application_name="policyc-proxy-ready") as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            why = f"the database refused or did not answer ({sqlstate or type(exc).__name__})"
            return _Answer(False, why, time.monotonic())
        except OSError as exc:
            return _Answer(False, f"the database is unreachable ({type(exc).__name__})",
                           time.monotonic())
        return _Answer(True, None, time.monotonic())


async def _key_problem(keys: object) -> str | None:
    problem = getattr(keys, "problem", None)
    if problem is None:
        return None
    result: str | None = await problem()
    return result


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   500: "Internal Server Error",
                   503: "Service Unavailable"}


def _response(status: int, ctype: str, body: bytes, length: int) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body
