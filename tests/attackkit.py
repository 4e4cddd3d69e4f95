"""Runs the attack corpus (``tests/attacks/*.yaml``): each case is an attack an agent with one
valid token tries through a real proxy against the real clinic database, with real clients,
and the secure outcome it must meet.

A case::

    - id: scs-off-then-smuggle          # unique; the test id is file:line:id
      class: 1                          # the issue #11 class it attacks
      why: what the attack tries
      group: billing                    # default billing, with the claim clinic_id=1
      setup: ["superuser SQL run before the agent connects", ...]
      options: "-c standard_conforming_strings=off"   # libpq options at login
      login: "is pinned"                # the login must fail, with this in its message
      steps:                            # on one proxied session, in order
        - simple: SQL                   # the simple query protocol (libpq PQsendQuery)
          expect: ok | SQLSTATE | fatal # every result ok / the first error / session ended
        - extended: SQL                 # Parse/Bind/Execute of the unnamed statement
          params: [..]                  # (libpq PQsendQueryParams)
          expect: ...
        - raw:                          # protocol messages on a bare socket, then Sync
            - [P, name, SQL]            # Parse
            - [B, portal, statement, [params...]]
            - [E, portal, max_rows]
            - [C, S|P, name]            # Close
            - [S]                       # Sync
          expect: [SQLSTATE or ok, ...] # one entry per ReadyForQuery: its batch's first
                                        # error, or ok
        - reconnect: 3                  # a new libpq session of the same agent, once the
                                        # trail holds 3 of its records with rows
      functions: [public.f]             # the group's policy for this case: functions,
      rows_over: 10                     # rows_over and budget (a proxy of its own)
      budget: {rows: 25, per: 3600}
      check:                            # superuser SQL afterwards, exact rows
        - sql: SELECT count(*) FROM public.claims WHERE status = 'hijacked'
          rows: [[0]]
      records:                          # audit.statements rows matching, once drained
        - where: "decision = 'blocked' AND statement LIKE '%hijacked%'"
          count: 1                      # exactly; or at_least: N

Every SQL string may use ``{agent}`` for the session's agent name.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import pq

from conftest import Database
from policyc.proxy.codec import BackendFramer, Bind, Close, Execute, Parse, Query, Sync
from proxyharness import RunningProxy, wait_for

ATTACKS = Path(__file__).resolve().parent / "attacks"


@dataclass
class Case:
    id: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return str(self.data.get("group", "billing"))


def load_cases() -> list[Case]:
    """Every case of every corpus file, with a ``file:line:id`` test id."""
    cases: list[Case] = []
    for path in sorted(ATTACKS.glob("*.yaml")):
        text = path.read_text()
        nodes = yaml.compose(text)
        entries = yaml.safe_load(text) or []
        assert nodes is not None and len(nodes.value) == len(entries)
        for node, entry in zip(nodes.value, entries, strict=True):
            line = node.start_mark.line + 1
            cases.append(Case(f"{path.name}:{line}:{entry['id']}", f"{path.name}:{line}", entry))
    ids = [c.id.rsplit(":", 1)[1] for c in cases]
    assert len(ids) == len(set(ids)), "duplicate attack ids"
    return cases


# --------------------------------------------------------------------------- clients


class RawSession:
    """A PostgreSQL client on a bare socket, for protocol sequences libpq cannot send."""

    def __init__(self, proxy: RunningProxy, agent: str, group: str, **claims: Any) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        self.framer = BackendFramer()
        params = f"user\0{agent}\0database\0{proxy.database}\0\0".encode()
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self.until_ready(1)
        token = proxy.token(agent, group, **claims).encode() + b"\0"
        self.sock.sendall(b"p" + struct.pack("!i", 4 + len(token)) + token)
        frames = self.until_ready(1)
        assert frames and frames[-1][0] == b"Z", frames

    def until_ready(self, count: int, timeout: float = 15) -> list[tuple[bytes, bytes]]:
        """Frames up to the ``count``-th ReadyForQuery (or AuthenticationRequest at login)."""
        deadline = time.monotonic() + timeout
        frames: list[tuple[bytes, bytes]] = []
        seen = 0
        while seen < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                frames.append((b"closed", b""))
                break
            for frame in self.framer.feed(data):
                frames.append((frame.type, bytes(frame.payload)))
                if frame.type in (b"Z", b"R"):
                    seen += 1
        return frames

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X\0\0\0\4")
            self.sock.close()


def _encode(item: list[Any]) -> bytes:
    kind = item[0]
    if kind == "P":
        return Parse(item[1], item[2]).encode()
    if kind == "B":
        params = tuple(None if p is None else str(p).encode() for p in (item[3] if len(item) > 3
                                                                        else []))
        return Bind(item[1], item[2], (), params, ()).encode()
    if kind == "E":
        return Execute(item[1], int(item[2]) if len(item) > 2 else 0).encode()
    if kind == "C":
        return Close(item[1], item[2]).encode()
    if kind == "S":
        return Sync().encode()
    if kind == "Q":
        return Query(item[1]).encode()
    raise AssertionError(f"unknown raw message {kind}")


def _sqlstate(payload: bytes) -> str:
    for field_ in payload.split(b"\0"):
        if field_[:1] == b"C":
            return field_[1:].decode()
    return "?????"


def _batches(frames: list[tuple[bytes, bytes]]) -> list[str]:
    """Per ReadyForQuery: the first error's SQLSTATE, or ok; ``fatal`` when the proxy ended
    the session."""
    out: list[str] = []
    first: str | None = None
    for kind, payload in frames:
        if kind == b"E" and first is None:
            first = _sqlstate(payload)
            if b"SFATAL\0" in payload:
                out.append("fatal")
                return out
        elif kind == b"Z":
            out.append(first or "ok")
            first = None
        elif kind == b"closed":
            out.append("fatal")
    return out


def _run_libpq(conn: psycopg.Connection[Any], sql: str, params: list[Any] | None,
               simple: bool) -> str:
    pgconn = conn.pgconn
    if simple:
        pgconn.send_query(sql.encode())
    else:
        values = None if params is None else [None if p is None else str(p).encode()
                                              for p in params]
        pgconn.send_query_params(sql.encode(), values)
    pgconn.flush()
    first: str | None = None
    while True:
        try:
            _wait(pgconn)
        except psycopg.OperationalError:
            return "fatal"
        result = pgconn.get_result()
        if result is None:
            break
        if result.status == pq.ExecStatus.FATAL_ERROR and first is None:
            code = result.error_field(pq.DiagnosticField.SQLSTATE)
            first = code.decode() if code else "?????"
        elif result.status == pq.ExecStatus.COPY_OUT:
            while True:
                size, _data = pgconn.get_copy_data(1)
                if size == 0:
                    select.select([pgconn.socket], [], [], 10)
                    pgconn.consume_input()
                elif size < 0:
                    break
    if pgconn.status != pq.ConnStatus.OK:
        return "fatal"
    return first or "ok"


def _wait(pgconn: pq.abc.PGconn, timeout: float = 30) -> None:
    """Wait for the answer without blocking inside libpq: the proxy under test runs in this
    process, and a C call that keeps the GIL would starve it."""
    deadline = time.monotonic() + timeout
    while pgconn.is_busy():
        if pgconn.status != pq.ConnStatus.OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no answer from the proxy")
        select.select([pgconn.socket], [], [], min(left, 1.0))
        pgconn.consume_input()


# --------------------------------------------------------------------------- the run


def run_case(case: Case, db: Database, proxy: RunningProxy) -> None:
    data = case.data
    agent = str(data.get("agent", "agent-7"))
    claims = dict(data.get("claims", {"clinic_id": 1}))
    for sql in data.get("setup", []):
        db.execute(sql.format(agent=agent))
    dsn = proxy.dsn(agent, case.group, **claims)
    if "options" in data:
        dsn += f" options='{data['options']}'"
    if "login" in data:
        try:
            psycopg.connect(dsn, autocommit=True).close()
        except psycopg.OperationalError as exc:
            assert str(data["login"]) in str(exc), f"{case.source}: login failed with {exc}"
        else:
            raise AssertionError(f"{case.source}: the login succeeded")
        return
    steps = data.get("steps", [])
    with _sessions(proxy, dsn, agent, case.group, claims, steps) as (conn, raw):
        for number, step in enumerate(steps, 1):
            where = f"{case.source} step {number}"
            expect = step.get("expect", "ok")
            if "reconnect" in step:
                # a new session of the same agent, once the trail holds this many records
                recorded = int(step["reconnect"])
                query = (f"SELECT count(*) FROM audit.statements WHERE agent = '{agent}' "
                         "AND rows IS NOT NULL")
                wait_for(lambda q=query, n=recorded: db.execute(q)[0][0] >= n, timeout=10)
                assert conn is not None
                conn.close()
                conn = psycopg.connect(dsn, autocommit=True)  # noqa: PLW2901 (closed in finally)
                continue
            if "raw" in step:
                assert raw is not None
                messages = [_encode(item) for item in step["raw"]]
                raw.sock.sendall(b"".join(messages))
                syncs = sum(1 for item in step["raw"] if item[0] in ("S", "Q"))
                got: Any = _batches(raw.until_ready(syncs))
                wanted = [str(e) for e in expect] if isinstance(expect, list) else [str(expect)]
                assert got == wanted, f"{where}: expected {wanted}, got {got}"
                continue
            assert conn is not None
            simple = "simple" in step
            sql = str(step["simple"] if simple else step["extended"]).format(agent=agent)
            got = _run_libpq(conn, sql, step.get("params"), simple)
            assert got == str(expect), f"{where}: expected {expect}, got {got} for {sql!r}"
            if got == "fatal":
                break
        if conn is not None and not conn.closed:
            conn.close()  # a reconnect's session (the first is closed by _sessions)
    for check in data.get("check", []):
        rows = [list(r) for r in db.execute(check["sql"].format(agent=agent))]
        assert rows == check["rows"], f"{case.source}: {check['sql']} gave {rows}"
    for record in data.get("records", []):
        where = record["where"].format(agent=agent)
        query = f"SELECT count(*) FROM audit.statements WHERE {where}"
        if "count" in record:
            count = wait_for(lambda q=query, n=record["count"]: db.execute(q)[0][0] == n
                             and n, timeout=10)
            actual = db.execute(query)[0][0]
            assert actual == record["count"], f"{case.source}: {where}: {actual} records"
            del count
        else:
            least = int(record["at_least"])
            wait_for(lambda q=query, n=least: db.execute(q)[0][0] >= n, timeout=10)
            actual = db.execute(query)[0][0]
            assert actual >= least, f"{case.source}: {where}: {actual} records"


@contextlib.contextmanager
def _sessions(proxy: RunningProxy, dsn: str, agent: str, group: str, claims: dict[str, Any],
              steps: list[dict[str, Any]]
              ) -> Iterator[tuple[psycopg.Connection[Any] | None, RawSession | None]]:
    raw = RawSession(proxy, agent, group, **claims) if any("raw" in s for s in steps) else None
    conn = psycopg.connect(dsn, autocommit=True) if any("raw" not in s for s in steps) else None
    try:
        yield conn, raw
    finally:
        if raw is not None:
            raw.close()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
