"""The durability point, attacked: a provably side-effect-free read may go upstream while its
audit record is being written, but no byte of its answer reaches the client before the record
is durable; anything else reaches the database only once its record is durable.

The spool is broken or held up through its ``append`` (write + fdatasync), on the event loop
(inline) and on the spool thread alike; the database side is watched in pg_stat_activity.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import Database, clinic_policy
from policyc.proxy.codec import Bind, Describe, Execute, Parse, Query
from policyc.proxy.codec.framing import BackendFramer
from policyc.proxy.judge.cache import Judge
from policyc.proxy.judge.classify import classify
from policyc.proxy.judge.effects import combined_scope
from policyc.proxy.judge.statement import Scope
from proxyharness import RunningProxy, wait_for

SYNC = b"S\x00\x00\x00\x04"


# ---- what qualifies ----------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "pure"), [
    ("SELECT id, birth_date, zip FROM patients WHERE id = 5", True),
    ("SELECT id FROM patients WHERE id = $1", True),
    ("TABLE patients", True),
    ("VALUES (1, 'a'), (2, 'b')", True),
    ("SHOW work_mem", True),
    ("SELECT 1; SELECT 2", True),
    ("WITH p AS (SELECT id FROM patients) SELECT * FROM p JOIN visits v ON v.patient_id = p.id "
     "WHERE EXISTS (SELECT 1 FROM visits w WHERE w.id = v.id) ORDER BY 1 USING <", True),
    ("SELECT 2::int, CAST(3 AS pg_catalog.int4), 'x'::text, a COLLATE \"C\" FROM t", True),
    ("SELECT a FROM t WHERE a OPERATOR(pg_catalog.=) 1", True),
    ("SELECT nextval('claims_id_seq')", False),
    ("SELECT pg_sleep(0)", False),
    ("SELECT set_config('application_name', 'x', false)", False),
    ("SELECT count(*) FROM patients", False),  # an aggregate is a function too
    ("SELECT lower(full_name) FROM patients", False),
    ("SELECT * FROM patients FOR UPDATE", False),
    ("SELECT * FROM (SELECT * FROM patients FOR SHARE) p", False),
    ("SELECT * INTO scratch FROM patients", False),
    ("WITH d AS (DELETE FROM notes RETURNING *) SELECT * FROM d", False),
    ("SELECT * FROM patients TABLESAMPLE system (10)", False),
    ("SELECT * FROM generate_series(1, 3)", False),
    ("SELECT a FROM t WHERE a OPERATOR(public.=) 1", False),
    ("SELECT 1::public.money_like", False),
    ("SELECT 1; SELECT pg_sleep(0)", False),
    ("EXPLAIN SELECT 1", False),
    ("EXPLAIN ANALYZE SELECT 1", False),
    ("BEGIN", False),
    ("DECLARE c CURSOR FOR SELECT 1", False),
    ("COPY patients TO STDOUT", False),
    ("LISTEN chan", False),
    ("PREPARE p AS SELECT 1", False),
    ("EXECUTE p", False),
    ("SET work_mem = '1MB'", False),
    ("INSERT INTO notes (id, patient_id, author, written_at, body) VALUES (1, 1, 'a', "
     "'2024-01-01', 'x')", False),
])
def test_side_effect_free_is_proven_not_guessed(sql: str, pure: bool) -> None:
    classification = classify(sql)
    assert classification.error is None
    assert all(s.side_effect_free for s in classification.statements) is pure


def test_a_decision_is_side_effect_free_only_when_the_group_may_run_it() -> None:
    policy = clinic_policy("clinic")
    groups = {g.name: g for g in policy.groups}
    judge = Judge(policy, 1 << 20)
    assert judge.judge(groups["research"], "SELECT id, zip FROM patients").side_effect_free
    # a read the proxy refuses is never sent early (it is never sent at all)
    refused = judge.judge(groups["research"], "SELECT rolpassword FROM pg_authid")
    assert classify("SELECT rolpassword FROM pg_authid").statements[0].side_effect_free
    assert refused.blocked_index == 0 and not refused.side_effect_free
    assert not judge.judge(groups["research"], "SELECT pg_sleep(0)").side_effect_free


def test_the_shape_cache_gives_the_full_decision_with_the_query_s_own_text() -> None:
    policy = clinic_policy("clinic")
    group = next(g for g in policy.groups if g.name == "billing")
    cached = Judge(policy, 1 << 20)
    texts = ["SELECT id, ssn FROM patients WHERE id = 1",
             "SELECT id, ssn FROM patients WHERE id = 2;",
             "  select id, ssn from patients where id = 'x' ",  # another shape (case)
             "SELECT id, ssn FROM patients WHERE id = $1",  # the first's shape
             "SELECT id, ssn FROM patients WHERE id = 3;",  # the second's
             "\nSELECT id, ssn FROM patients WHERE id = 4 ;\n"]  # another (white space)
    for sql in texts:
        fast = cached.judge(group, sql)
        full = Judge(policy, 1 << 20).judge(group, sql)
        assert fast == full, sql
    assert cached.shape_hits == 2
    # literals may decide for statements that are not pure reads: never cached by shape
    shaped = Judge(policy, 1 << 20)
    for sql in ("SELECT set_config('application_name', 'a', false)", "SELECT pg_sleep(1)",
                "DELETE FROM claims WHERE 1 = 1", "SELECT id FROM patients FOR UPDATE"):
        shaped.judge(group, sql)
        shaped.judge(group, sql.replace("1", "2").replace("'a'", "'role'"))
    assert shaped.shape_hits == 0 and not shaped._shapes
    for sql in ("SELECT 1; SELECT 2", "SELECT 1 -- c", "SELECT 1 /* c */"):
        shaped.judge(group, sql)
        shaped.judge(group, sql.replace("1", "3"))
    assert shaped.shape_hits == 0


# ---- a raw client, to see every byte ------------------------------------------------------

@pytest.mark.parametrize(("sql", "scope"), [
    ("SELECT id FROM patients WHERE id = 5", "none"),
    ("BEGIN", "none"),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "none"),
    ("SAVEPOINT a", "none"),
    ("RELEASE a", "none"),
    ("ROLLBACK TO a", "none"),
    ("ROLLBACK", "rollback"),
    ("ABORT", "rollback"),
    ("COMMIT", "commit"),
    ("END", "commit"),
    ("COMMIT AND CHAIN", "commit"),
    ("PREPARE TRANSACTION 'x'", "any"),
    ("COMMIT PREPARED 'x'", "any"),
    ("ROLLBACK PREPARED 'x'", "any"),
    ("INSERT INTO visits (id, patient_id, clinic_id, visited_at) VALUES (1, 2, 2, now())",
     "transaction"),
    ("UPDATE visits SET notes = lower(substring(notes from 2)), diagnosis = DEFAULT "
     "WHERE id = 3 RETURNING id", "transaction"),
    ("DELETE FROM notes WHERE patient_id IN (SELECT id FROM patients WHERE clinic_id = 1)",
     "transaction"),
    ("INSERT INTO notes SELECT * FROM notes ON CONFLICT (id) DO UPDATE SET body = "
     "EXCLUDED.body", "transaction"),
    ("WITH d AS (DELETE FROM notes RETURNING *) INSERT INTO notes SELECT * FROM d",
     "transaction"),
    ("SELECT count(*) FROM patients", "transaction"),
    # reaches beyond the transaction, or cannot be shown not to
    ("UPDATE visits SET notes = pg_terminate_backend(1)::text", "any"),
    ("INSERT INTO claims (id) VALUES (nextval('claims_id_seq'))", "any"),
    ("UPDATE visits SET notes = public.lower(notes)", "any"),
    ("UPDATE visits SET notes = 'x' WHERE id IN (SELECT id FROM visits FOR UPDATE)", "any"),
    ("INSERT INTO notes SELECT * FROM dblink('x', 'y') AS t(a int)", "any"),
    ("SELECT pg_advisory_lock(1)", "any"),
    ("SELECT set_config('a.b', 'c', false)", "any"),
    ("CALL p()", "any"),
    ("DO $$ BEGIN COMMIT; END $$", "any"),
    ("COPY notes FROM STDIN", "any"),
    ("SET work_mem = '1MB'", "any"),
    ("TRUNCATE notes", "any"),
    ("LOCK TABLE notes", "any"),
    ("NOTIFY chan", "any"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "any"),
])
def test_effect_scope_is_proven_not_guessed(sql: str, scope: str) -> None:
    [statement] = classify(sql).statements
    assert statement.scope == scope


@pytest.mark.parametrize(("scopes", "combined"), [
    (["none", "transaction"], "transaction"),
    (["transaction", "rollback"], "any"),  # one unit: it needs the block and ends it
    (["rollback", "none"], "rollback"),
    (["rollback", "transaction"], "any"),  # runs after the block ended: autocommit
    (["none", "any", "none"], "any"),
    (["none", "commit"], "commit"),
    (["transaction", "commit"], "any"),  # the INSERT's record must be durable first
    (["commit", "transaction"], "any"),  # runs after the block: autocommit
    (["rollback", "commit"], "any"),
])
def test_a_statement_after_a_rollback_is_outside_the_block(scopes: list[Scope],
                                                           combined: str) -> None:
    assert combined_scope(scopes) == combined


class RawClient:
    """A PostgreSQL client on a bare socket: every frame the proxy sends is seen."""

    def __init__(self, proxy: RunningProxy, group: str, application: str, **claims: Any) -> None:
        agent = "agent-7"
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        self.framer = BackendFramer()
        params = (f"user\0{agent}\0database\0{proxy.database}\0"
                  f"application_name\0{application}\0\0").encode()
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        assert self.until(b"R")[-1][0] == b"R"
        token = proxy.token(agent, group, **claims).encode() + b"\0"
        self.sock.sendall(b"p" + struct.pack("!i", 4 + len(token)) + token)
        assert self.until(b"Z")[-1][0] == b"Z"

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def read(self, timeout: float) -> list[tuple[bytes, bytes]]:
        """Frames that arrive within ``timeout`` (fewer if the proxy closes the socket)."""
        self.sock.settimeout(timeout)
        frames: list[tuple[bytes, bytes]] = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                frames += [(f.type, bytes(f.payload)) for f in self.framer.feed(data)]
        return frames

    def until(self, kind: bytes, timeout: float = 10) -> list[tuple[bytes, bytes]]:
        deadline = time.monotonic() + timeout
        frames: list[tuple[bytes, bytes]] = []
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                break
            frames += [(f.type, bytes(f.payload)) for f in self.framer.feed(data)]
            if any(k == kind for k, _ in frames):
                break
        return frames

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def raw_client(proxy: RunningProxy, group: str, application: str,
               **claims: Any) -> Iterator[RawClient]:
    client = RawClient(proxy, group, application, **claims)
    try:
        yield client
    finally:
        client.close()


def sqlstates(frames: list[tuple[bytes, bytes]]) -> list[str]:
    out = []
    for kind, payload in frames:
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in payload.split(b"\0") if f)
            out.append(fields[b"C"].decode())
    return out


@contextlib.contextmanager
def spool(proxy: RunningProxy, *, inline: bool, fail: bool = False,
          fail_after: float = 0.3) -> Iterator[threading.Event]:
    """The proxy's spool, appends failing after ``fail_after`` seconds or once the event is
    set (``fail``), or held until the event is set; with ``inline`` False the spool thread
    writes, else the event loop itself."""
    audit = proxy.server.audit
    assert audit is not None
    store = audit._spool
    append = store.append
    release = threading.Event()

    def held(data: bytes) -> int:
        if fail:  # late: the database has answered by then
            release.wait(fail_after)
            raise OSError(errno.EIO, "Input/output error")
        release.wait(20)
        return append(data)

    audit._writer.inline = inline
    store.append = held  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        store.append = append  # type: ignore[method-assign]
        audit._writer.inline = True


@pytest.fixture(autouse=True)
def _watchable(request: pytest.FixtureRequest) -> None:
    """These tests watch the server run statements (pg_stat_activity, as a superuser): turn
    the group roles' track_activities (off since issue #11, so agents cannot watch each other)
    back on for their sessions."""
    if "applied_clinic" in request.fixturenames:
        db = request.getfixturevalue("applied_clinic")
        for role in ("billing", "clinician", "research"):
            db.execute(f"ALTER ROLE {role} SET track_activities = on")


def activity(db: Database, application: str) -> list[tuple[str, str]]:
    return [(str(q), str(s)) for q, s in db.execute(
        "SELECT query, state FROM pg_stat_activity WHERE application_name = %s",
        (application,))]


def statements_of(db: Database, agent: str = "agent-7") -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT s.seq, s.statement, s.sqlstate, s.reason, s.rows FROM audit.statements s "
        "JOIN audit.sessions USING (session_id) WHERE s.agent = %s ORDER BY s.seq", (agent,))


# ---- the answer waits for the record ------------------------------------------------------

READ = "SELECT id, clinic_id FROM patients ORDER BY id LIMIT 3"


def extended(sql: str) -> list[bytes]:
    return [Parse("", sql, ()).encode(), Bind("", "", (), (), ()).encode(),
            Describe("P", "").encode(), Execute("", 0).encode(), SYNC]


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_no_byte_of_an_early_read_s_answer_without_its_record(
        applied_clinic: Database, proxy: RunningProxy, inline: bool, protocol: str) -> None:
    """The spool cannot write: the read was sent upstream (and answered there), yet the client
    gets 58030 and never a RowDescription, DataRow or CommandComplete of it."""
    with raw_client(proxy, "billing", "durability-fail", clinic_id=1) as client:
        client.send(Query("SELECT 1").encode())
        assert sqlstates(client.until(b"Z")) == []
        with spool(proxy, inline=inline, fail=True):
            client.send(*([Query(READ).encode()] if protocol == "simple" else extended(READ)))
            frames = client.read(10)
    kinds = [kind for kind, _ in frames]
    assert sqlstates(frames) == ["58030"], frames
    assert not {b"T", b"D", b"C", b"1", b"2", b"Z"} & set(kinds), kinds
    rows = wait_for(lambda: [r for r in statements_of(applied_clinic) if r[1] == READ])
    assert rows and rows[0][2] == "58030"
    assert rows[0][3].startswith("answer withheld: the audit trail was unavailable")
    seqs = [r[0] for r in statements_of(applied_clinic)]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
def test_a_read_runs_while_its_record_is_written_and_is_answered_after(
        applied_clinic: Database, proxy: RunningProxy, inline: bool) -> None:
    app = f"durability-{uuid.uuid4().hex[:8]}"
    with raw_client(proxy, "billing", app, clinic_id=1) as client, \
            spool(proxy, inline=inline) as release:
        client.send(Query(READ).encode())
        # the database ran it (idle again, with our text) while the record is still held
        assert wait_for(lambda: activity(applied_clinic, app) == [(READ, "idle")]), \
            activity(applied_clinic, app)
        assert client.read(0.5) == []  # not one byte yet
        release.set()
        frames = client.until(b"Z")
    kinds = [kind for kind, _ in frames]
    assert kinds == [b"T", b"D", b"D", b"D", b"C", b"Z"], kinds


SIDE_EFFECTS = [
    # functions agents may call (pg_sleep and nextval are refused outright since issue #11)
    ("billing", "SELECT current_setting('TimeZone')"),
    ("billing", "SELECT pg_backend_pid()"),
    ("billing", "SELECT count(*) FROM patients"),
    ("clinician", "SELECT id FROM visits ORDER BY id LIMIT 1 FOR UPDATE"),
    ("clinician", "INSERT INTO notes (id, patient_id, author, written_at, body) "
                  "VALUES (7001, 1, 'agent', '2024-01-01', 'durability')"),
]


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize(("group", "sql"), SIDE_EFFECTS, ids=[s for _, s in SIDE_EFFECTS])
def test_a_statement_that_may_change_something_waits_for_its_record(
        applied_clinic: Database, proxy: RunningProxy, inline: bool, protocol: str,
        group: str, sql: str) -> None:
    app = f"durability-{uuid.uuid4().hex[:8]}"
    with raw_client(proxy, group, app, clinic_id=1) as client:
        client.send(Query("SELECT 1").encode())
        client.until(b"Z")
        with spool(proxy, inline=inline) as release:
            client.send(*([Query(sql).encode()] if protocol == "simple" else extended(sql)))
            # the database never sees it while held (only the proxy's own EXPLAIN of a
            # simple-protocol SELECT, which runs nothing, may come first)
            before = {("SELECT 1", "idle"), ("EXPLAIN (FORMAT JSON) " + sql, "idle")}
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert set(activity(applied_clinic, app)) <= before
                time.sleep(0.05)
            assert client.read(0.1) == []
            release.set()
            assert wait_for(lambda: activity(applied_clinic, app)[0][0] == sql)
            frames = client.until(b"Z")
    assert frames[-1][0] == b"Z"
    assert wait_for(lambda: [r[1] for r in statements_of(applied_clinic)] == ["SELECT 1", sql])


def test_pipelined_reads_and_writes_keep_their_order_and_seqs(
        applied_clinic: Database, proxy: RunningProxy) -> None:
    with proxy.connect("agent-7", "clinician", clinic_id=1) as conn:
        with conn.pipeline():
            cursors = [
                conn.execute("SELECT id FROM patients WHERE id = %s", (1,)),
                conn.execute("SELECT count(*) FROM notes"),
                conn.execute("INSERT INTO notes (id, patient_id, author, written_at, body) "
                             "VALUES (%s, %s, 'agent', now(), %s) RETURNING patient_id",
                             (7002, 1, "pipelined")),
                conn.execute("SELECT id FROM patients WHERE id = %s", (4,)),
                conn.execute("SELECT body FROM notes WHERE body = %s", ("pipelined",)),
            ]
        results = [c.fetchall() for c in cursors]
        conn.execute("SELECT 1").fetchall()
        with conn.transaction():  # a read inside a transaction goes early too
            assert conn.execute("SELECT id FROM patients WHERE id = 1").fetchall() == [(1,)]
    assert results[0] == [(1,)] and results[2] == [(1,)] and results[3] == [(4,)]
    assert results[4] == [("pipelined",)]
    rows = wait_for(lambda: (r := statements_of(applied_clinic)) and len(r) >= 9 and r)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r[2] is None for r in rows), rows
    assert [r[4] for r in rows[:5]] == [1, 1, 1, 1, 1]


def test_many_sessions_share_the_spool_and_every_answer_is_audited(
        applied_clinic: Database, proxy: RunningProxy) -> None:
    """Concurrent sessions, reads sent early and writes sent late, on the same spool."""
    errors: list[BaseException] = []

    def agent(n: int) -> None:
        try:
            with psycopg.connect(proxy.dsn(f"agent-{n}", "clinician", clinic_id=1),
                                 autocommit=True) as conn:
                for i in range(30):
                    assert conn.execute("SELECT id FROM patients WHERE id = %s",
                                        (1 + 3 * (i % 5),)).fetchall()
                    conn.execute("SELECT count(*) FROM visits").fetchall()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert wait_for(lambda: applied_clinic.execute(
        "SELECT count(*) FROM audit.statements WHERE agent LIKE 'agent-%'")[0][0] == 360)
    gaps = applied_clinic.execute(
        "SELECT session_id FROM audit.statements WHERE agent LIKE 'agent-%' GROUP BY session_id "
        "HAVING max(seq) <> count(*) OR min(seq) <> 1")
    assert gaps == []


# ---- writes inside a transaction block -----------------------------------------------------

NOTE = ("INSERT INTO notes (id, patient_id, author, written_at, body) "
        "VALUES ({id}, 1, 'agent', now(), 'in a block')")


def note_count(db: Database, note_id: int) -> int:
    return int(db.execute("SELECT count(*) FROM notes WHERE id = %s", (note_id,))[0][0])


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_write_in_a_block_runs_while_its_record_is_written_and_commit_waits(
        applied_clinic: Database, proxy: RunningProxy, protocol: str) -> None:
    """Inside BEGIN ... the INSERT goes upstream while its record is held, its answer waits;
    the COMMIT that would make it last does not reach the database before the records."""
    app = f"durability-{uuid.uuid4().hex[:8]}"
    note_id = 7101 if protocol == "simple" else 7102
    sql = NOTE.format(id=note_id)
    with raw_client(proxy, "clinician", app, clinic_id=1) as client:
        client.send(Query("BEGIN").encode())
        client.until(b"Z")
        with spool(proxy, inline=False) as release:
            client.send(*([Query(sql).encode()] if protocol == "simple" else extended(sql)))
            assert wait_for(lambda: activity(applied_clinic, app) == [
                (sql, "idle in transaction")]), activity(applied_clinic, app)
            assert client.read(0.3) == []  # not one byte of its answer yet
            client.send(Query("COMMIT").encode())
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # the COMMIT is held back
                assert activity(applied_clinic, app) == [(sql, "idle in transaction")]
                time.sleep(0.05)
            assert client.read(0.1) == []
            assert note_count(applied_clinic, note_id) == 0
            release.set()
            frames = client.until(b"Z")
            frames += client.until(b"Z") if [k for k, _ in frames].count(b"Z") < 2 else []
    assert sqlstates(frames) == []
    assert note_count(applied_clinic, note_id) == 1
    rows = wait_for(lambda: (r := statements_of(applied_clinic)) and len(r) >= 3 and r)
    assert [r[1] for r in rows] == ["BEGIN", sql, "COMMIT"]
    assert all(r[2] is None for r in rows), rows


@pytest.mark.parametrize("first", ["ROLLBACK", "COMMIT", "COMMIT; INSERT"])
def test_a_write_after_the_block_ends_in_the_same_batch_waits_for_its_record(
        applied_clinic: Database, proxy: RunningProxy, first: str) -> None:
    """``ROLLBACK`` (which may go early) and an INSERT sent together: the INSERT runs in
    autocommit, so it must not reach the database before its record is durable."""
    app = f"durability-{uuid.uuid4().hex[:8]}"
    note_id = {"ROLLBACK": 7103, "COMMIT": 7104}.get(first, 7106)
    sql = NOTE.format(id=note_id)
    with raw_client(proxy, "clinician", app, clinic_id=1) as client:
        client.send(Query("BEGIN").encode())
        client.until(b"Z")
        with spool(proxy, inline=False) as release:
            if first.endswith("INSERT"):  # one query string: COMMIT; INSERT ...
                client.send(Query("COMMIT; " + sql).encode(), Query("SELECT 1").encode())
            else:
                client.send(Query(first).encode(), Query(sql).encode())
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert activity(applied_clinic, app) == [("BEGIN", "idle in transaction")]
                assert note_count(applied_clinic, note_id) == 0
                time.sleep(0.05)
            release.set()
            frames = client.until(b"Z")
            frames += client.until(b"Z") if [k for k, _ in frames].count(b"Z") < 2 else []
    assert sqlstates(frames) == []
    assert note_count(applied_clinic, note_id) == 1


def test_a_write_in_a_block_whose_record_fails_is_rolled_back(
        applied_clinic: Database, proxy: RunningProxy) -> None:
    """The spool fails after the INSERT reached the database: the client gets 58030, no
    answer, and the session ends, so the INSERT never commits."""
    app = f"durability-{uuid.uuid4().hex[:8]}"
    sql = NOTE.format(id=7105)
    with raw_client(proxy, "clinician", app, clinic_id=1) as client:
        client.send(Query("BEGIN").encode())
        client.until(b"Z")
        with spool(proxy, inline=False, fail=True, fail_after=20) as fail_now:
            client.send(Query(sql).encode())
            # it ran while its record was being written: the row exists in the transaction
            assert wait_for(lambda: activity(applied_clinic, app) == [
                (sql, "idle in transaction")]), activity(applied_clinic, app)
            client.send(Query("COMMIT").encode())
            fail_now.set()
            frames = client.read(5)
    # 58030 for the INSERT's withheld answer, and (when its batch was already waiting) for
    # the COMMIT that did not run; never an answer
    states = sqlstates(frames)
    assert states and set(states) == {"58030"}, frames
    assert not {b"C", b"Z"} & {kind for kind, _ in frames}
    assert wait_for(lambda: activity(applied_clinic, app) == [])
    assert note_count(applied_clinic, 7105) == 0


def test_a_commit_runs_while_its_own_record_is_written_once_the_rest_is_durable(
        applied_clinic: Database, proxy: RunningProxy) -> None:
    """COMMIT makes the INSERT last, and the INSERT's record is durable: the COMMIT itself
    overlaps its own record (the data is committed), and its answer waits for it."""
    app = f"durability-{uuid.uuid4().hex[:8]}"
    sql = NOTE.format(id=7107)
    with raw_client(proxy, "clinician", app, clinic_id=1) as client:
        client.send(Query("BEGIN").encode())
        client.until(b"Z")
        client.send(Query(sql).encode())
        assert sqlstates(client.until(b"Z")) == []
        with spool(proxy, inline=False) as release:
            client.send(Query("COMMIT").encode())
            assert wait_for(lambda: activity(applied_clinic, app) == [("COMMIT", "idle")])
            assert note_count(applied_clinic, 7107) == 1
            assert client.read(0.3) == []  # no byte of its answer before its record
            release.set()
            frames = client.until(b"Z")
    assert sqlstates(frames) == [] and frames[-1][0] == b"Z"
    rows = wait_for(lambda: (r := statements_of(applied_clinic)) and len(r) >= 3 and r)
    assert [r[1] for r in rows] == ["BEGIN", sql, "COMMIT"]


# ---- answers that carry nothing from the database (issue #13) -----------------------------

@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_begin_is_answered_before_its_record_and_a_later_read_still_waits_for_its_own(
        applied_clinic: Database, proxy: RunningProxy, protocol: str) -> None:
    """The answer to BEGIN (and SAVEPOINT, RELEASE) may leave while its record is written:
    it carries nothing from the database.  The read after it does not: no byte of its answer
    before its own record (and so BEGIN's, records being durable in order) is durable."""
    app = f"durability-{uuid.uuid4().hex[:8]}"
    with raw_client(proxy, "billing", app, clinic_id=1) as client, \
            spool(proxy, inline=False) as release:
        client.send(*([Query("BEGIN").encode()] if protocol == "simple"
                      else extended("BEGIN")))
        frames = client.until(b"Z", timeout=5)
        assert [k for k, _ in frames][-2:] == [b"C", b"Z"], frames
        assert frames[-1][1] == b"T"  # inside the block, while its record is still held
        client.send(*([Query(READ).encode()] if protocol == "simple" else extended(READ)))
        assert wait_for(lambda: activity(applied_clinic, app) == [
            (READ, "idle in transaction")]), activity(applied_clinic, app)
        assert client.read(0.3) == []  # not one byte of the read's answer yet
        release.set()
        frames = client.until(b"Z")
    assert sqlstates(frames) == [] and [k for k, _ in frames].count(b"D") == 3
    rows = wait_for(lambda: (r := statements_of(applied_clinic)) and len(r) >= 2 and r)
    assert [r[1] for r in rows] == ["BEGIN", READ]
