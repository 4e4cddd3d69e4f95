"""Every statement the server executes belongs to exactly one record (issue #11, class 3).

Hypothesis generates sequences of protocol messages from a small alphabet (Parse, Bind,
Execute, Describe, Close, Sync and simple Query, over a tiny pool of names and statement
texts: harmless reads of billing's views, an allowed write, a write billing must have
approved, a blocked ``SET ROLE``, a syntax error, the empty statement, SQL
PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/CLOSE, BEGIN/COMMIT/ROLLBACK, DISCARD ALL and
multi-statement strings).  Each sequence is sent pipelined, in one write, on a bare socket
through a real proxy to the real clinic database, as agent-… of group billing; the answers
are read with a model of the protocol (an error in the extended protocol makes the server
skip everything, simple Queries included, up to the next Sync).  A session the proxy ends is
fine (fail closed): the example stops reading there and is checked all the same.

The server's side of the truth is its own log: ``log_statement = 'all'`` is set for the
group role in the test's database only (``ALTER ROLE billing IN DATABASE … SET``; a
superuser-settable parameter a role-and-database default can carry, so no other test and no
other role logs anything more).  The cluster's ``log_line_prefix`` is PostgreSQL's default
``%m [%p] ``, which already names the backend: the agent's upstream backend pid is read from
``policyc.session_identity`` while the session is open, so no ``ALTER SYSTEM`` is needed (the
fixture checks the prefix and, only if someone changed it, sets the default with ALTER SYSTEM
and restores it afterwards).  The log is read from an offset taken before the session logged
in, once the backend has exited, so every line it wrote is in.

What the log says, and how it is compared with ``audit.statements`` (in ``seq`` order, once
the session's close is drained and every record up to ``end_seq`` is in):

* ``statement: T`` — a simple Query, logged once as the whole string before it runs.  T is
  either a text the agent sent (each statement of it, as the proxy splits it, must be matched
  by a record that says it ran: ``allowed``, ``masked`` or ``approved``), the proxy's poison
  ``SELECT 1/0`` (runs nothing; the agent's pool never sends it), or the statements the proxy
  let through before a refused one joined with ``\\n;\\n`` and followed by the poison (each
  must be matched as above).  Text with no statement in it (the empty query) runs nothing
  and is not recorded.
* ``execute <name>: T`` / ``execute fetch from <name>/<portal>: T`` (then ``DETAIL:
  parameters: …``) — an Execute, logged when the server runs it: matched by a record of T that
  says it ran, with the same parameters.
* Parses the server's raw parser rejects (the poison ``policyc refused this statement``, a
  syntax error) are logged only as ERROR with a ``STATEMENT:`` line: nothing ran.

The check is an ordered matching, which is "exactly one" both ways: (a) every execution the
log shows is matched to its own record, in order; (b) every record that *claims* its
statement ran (a run decision, no SQLSTATE, and no "not run" / "session ended" note) is
matched by an execution.  The one statement the server runs without logging is the empty
statement of the extended protocol (EmptyQueryResponse): its record is exempt from (b).

Found by this test (``test_known_sequences``): a simple Query that follows a failed
extended-protocol message with no Sync between is skipped by the server (no ReadyForQuery
for it), while the proxy counted it as a batch the server answers: later answers were matched
to the wrong records, or the session hung.  The proxy now ends a session that sends a Query
inside an unfinished extended-protocol batch (08P01; no driver does), and the generated
sequences include such Queries.

Settings: ``derandomize=True`` so the suite runs the same sequences every time on a shared
CI machine (a failure is then reproducible by rerunning); set ``POLICYC_EXECUTIONS_EXAMPLES``
to run more examples, and ``POLICYC_EXECUTIONS_RANDOM=1`` to explore with fresh randomness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from psycopg import sql

from attackkit import RawSession
from conftest import Database, clinic_policy
from policyc.proxy.codec import Bind, Close, Describe, Execute, Parse, Query, Sync
from proxyharness import RunningProxy, run_proxy, wait_for

RUN = frozenset({"allowed", "masked", "approved"})
POISON_QUERY = "SELECT 1/0"
POISON_JOIN = "\n;\n"
DEFAULT_PREFIX = "%m [%p] "
_agents = itertools.count(1)

# --------------------------------------------------------------------------- the alphabet

#: Texts of Parse messages (extended protocol).
PARSE_TEXTS = (
    "SELECT id FROM claims WHERE id = $1",
    "SELECT id, status FROM claims ORDER BY id",
    "UPDATE claims SET status = 'paid' WHERE id = $1",
    "UPDATE claims SET status = 'x'",  # update_all: billing needs an approval (refused here)
    "SET ROLE postgres",  # blocked
    "SELEC broken",  # the raw parser rejects it
    "",  # the empty statement
    "EXECUTE q1(1)",
    "DECLARE c1 CURSOR WITH HOLD FOR SELECT id FROM claims",
)

#: Texts of simple Queries, each with its statements as the proxy records them.
QUERIES: dict[str, tuple[str, ...]] = {
    "SELECT id FROM claims WHERE id = 1": ("SELECT id FROM claims WHERE id = 1",),
    "UPDATE claims SET status = 'paid' WHERE id = 1":
        ("UPDATE claims SET status = 'paid' WHERE id = 1",),
    "UPDATE claims SET status = 'x'": ("UPDATE claims SET status = 'x'",),
    "SET ROLE postgres": ("SET ROLE postgres",),
    "SELEC broken": ("SELEC broken",),
    "": (),
    "BEGIN": ("BEGIN",),
    "COMMIT": ("COMMIT",),
    "ROLLBACK": ("ROLLBACK",),
    "PREPARE q1 AS SELECT id FROM claims WHERE id = $1":
        ("PREPARE q1 AS SELECT id FROM claims WHERE id = $1",),
    "EXECUTE q1(1)": ("EXECUTE q1(1)",),
    "EXECUTE s1": ("EXECUTE s1",),
    "DEALLOCATE q1": ("DEALLOCATE q1",),
    "DEALLOCATE ALL": ("DEALLOCATE ALL",),
    "DECLARE c1 CURSOR WITH HOLD FOR SELECT id FROM claims":
        ("DECLARE c1 CURSOR WITH HOLD FOR SELECT id FROM claims",),
    "DECLARE c2 CURSOR FOR SELECT id FROM claims": ("DECLARE c2 CURSOR FOR SELECT id FROM claims",),
    "FETCH 1 FROM c1": ("FETCH 1 FROM c1",),
    "FETCH 1 FROM c2": ("FETCH 1 FROM c2",),
    "FETCH 1 FROM p1": ("FETCH 1 FROM p1",),
    "CLOSE c1": ("CLOSE c1",),
    "CLOSE ALL": ("CLOSE ALL",),
    "DISCARD ALL": ("DISCARD ALL",),
    "SELECT id FROM claims WHERE id = 1; SELECT id FROM visits WHERE id = 2":
        ("SELECT id FROM claims WHERE id = 1", "SELECT id FROM visits WHERE id = 2"),
    "SELECT id FROM claims WHERE id = 1; SET ROLE postgres":
        ("SELECT id FROM claims WHERE id = 1", "SET ROLE postgres"),
    "PREPARE q1 AS SELECT id FROM claims WHERE id = $1; EXECUTE q1(2)":
        ("PREPARE q1 AS SELECT id FROM claims WHERE id = $1", "EXECUTE q1(2)"),
    "BEGIN; UPDATE claims SET status = 'paid' WHERE id = 2; COMMIT":
        ("BEGIN", "UPDATE claims SET status = 'paid' WHERE id = 2", "COMMIT"),
}

STATEMENT_NAMES = ("", "s1", "s2")
PORTAL_NAMES = ("", "p1")

Message = tuple[Any, ...]

_parse = st.tuples(st.just("P"), st.sampled_from(STATEMENT_NAMES), st.sampled_from(PARSE_TEXTS))
_bind = st.tuples(st.just("B"), st.sampled_from(PORTAL_NAMES), st.sampled_from(STATEMENT_NAMES),
                  st.lists(st.sampled_from(["1", "2", "x", None]), max_size=2).map(tuple))
_execute = st.tuples(st.just("E"), st.sampled_from((*PORTAL_NAMES, "c1")),
                     st.sampled_from([0, 1]))
_describe = st.tuples(st.just("D"), st.sampled_from("SP"), st.sampled_from(STATEMENT_NAMES[:2]))
_close = st.tuples(st.just("C"), st.sampled_from("SP"), st.sampled_from(("", "s1", "p1")))
_sync = st.just(("S",))
_query = st.tuples(st.just("Q"), st.sampled_from(sorted(QUERIES)))

#: The proxy does not follow the server when a simple Query comes after extended-protocol
#: messages with no Sync between and one of them failed: the server then skips the Query (it
#: skips every message up to the next Sync), while the proxy counts the Query as a batch the
#: server answers (see test_known_sequences).  Until that is fixed the generated sequences
#: put a Sync before such a Query, so the property keeps testing everything else; once it is
#: fixed, test_known_sequences XPASSes (strict): set this to False then.
SYNC_BEFORE_QUERY_IN_PIPELINE = False


def _sync_before_query(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    extended = False
    for message in messages:
        kind = message[0]
        if kind == "Q" and extended:
            out.append(("S",))
        extended = kind in ("P", "B", "E", "D", "C") or (extended and kind not in ("S", "Q"))
        out.append(message)
    return out




@st.composite
def _run(draw: st.DrawFn) -> list[Message]:
    """A coherent Parse, Bind, Execute (once or twice), with the right parameter count."""
    name = draw(st.sampled_from(STATEMENT_NAMES))
    text = draw(st.sampled_from(PARSE_TEXTS))
    portal = draw(st.sampled_from(PORTAL_NAMES))
    params = ("1",) if "$1" in text else ()
    rows = draw(st.sampled_from([0, 1]))
    return [("P", name, text), ("B", portal, name, params), ("E", portal, rows),
            *([("E", portal, rows)] if rows and draw(st.booleans()) else [])]


_one = st.one_of(_parse, _bind, _execute, _sync, _sync, _query, _query, _query, _close,
                 _describe).map(lambda message: [message])
_sequences = st.lists(st.one_of(_run(), _run(), _one, _one, _one), min_size=1,
                      max_size=7).map(lambda chunks: [m for chunk in chunks for m in chunk])
MESSAGES = _sequences.map(_sync_before_query) if SYNC_BEFORE_QUERY_IN_PIPELINE else _sequences


def encode(message: Message) -> bytes:
    kind = message[0]
    if kind == "P":
        return Parse(message[1], message[2]).encode()
    if kind == "B":
        params = tuple(None if p is None else str(p).encode() for p in message[3])
        return Bind(message[1], message[2], (), params, ()).encode()
    if kind == "E":
        return Execute(message[1], int(message[2])).encode()
    if kind == "D":
        return Describe(message[1], message[2]).encode()
    if kind == "C":
        return Close(message[1], message[2]).encode()
    if kind == "S":
        return Sync().encode()
    if kind == "Q":
        return Query(message[1]).encode()
    raise AssertionError(f"unknown message {message!r}")


# --------------------------------------------------------------------------- the client


class SessionEnded(Exception):
    """The proxy ended the session (a FATAL, or the connection closed): fail closed."""


class Hang(Exception):
    """No answer came: the session waits for something that never happens."""


class Answers:
    """The proxy's answers, frame by frame, with a deadline per frame (a missing answer is a
    hang, reported as such, never a timing assertion on how fast it came)."""

    def __init__(self, raw: RawSession, timeout: float = 15) -> None:
        self.raw = raw
        self.timeout = timeout
        self.frames: deque[tuple[bytes, bytes]] = deque()
        self.seen: list[bytes] = []

    def next(self) -> tuple[bytes, bytes]:
        """The next frame that answers a message (notices and parameter reports skipped)."""
        while True:
            while not self.frames:
                self.raw.sock.settimeout(self.timeout)
                try:
                    data = self.raw.sock.recv(65536)
                except TimeoutError as exc:
                    raise Hang(f"no answer within {self.timeout} s after the frames "
                               f"{self.seen!r}") from exc
                except OSError as exc:
                    raise SessionEnded from exc
                if not data:
                    raise SessionEnded
                for frame in self.raw.framer.feed(data):
                    self.frames.append((frame.type, bytes(frame.payload)))
            kind, payload = self.frames.popleft()
            self.seen.append(kind)
            if kind == b"E" and b"SFATAL\0" in payload:
                raise SessionEnded
            if kind in (b"N", b"S", b"A"):
                continue
            return kind, payload


def read_answers(raw: RawSession, messages: Sequence[Message], timeout: float = 15) -> bool:
    """Read every answer the server owes ``messages``; False when the proxy ended the session.

    The model: Parse, Bind and Close complete with one message, Describe with its description,
    Execute with rows then CommandComplete, EmptyQueryResponse or PortalSuspended; an error in
    any of them makes the server skip every message (simple Queries included) up to the next
    Sync; a Query and a Sync end with ReadyForQuery."""
    answers = Answers(raw, timeout)
    skipping = False

    def expect(*kinds: bytes) -> bytes:
        kind, _payload = answers.next()
        assert kind in (*kinds, b"E"), f"expected {kinds!r}, got {kind!r} after {answers.seen!r}"
        return kind

    def until_ready() -> None:
        while answers.next()[0] != b"Z":
            pass

    try:
        for message in messages:
            kind = message[0]
            if kind == "S":
                until_ready()
                skipping = False
            elif skipping:
                continue
            elif kind == "Q":
                until_ready()
            elif kind in ("P", "B", "C"):
                skipping = expect({"P": b"1", "B": b"2", "C": b"3"}[kind]) == b"E"
            elif kind == "D":
                if message[1] == "S" and expect(b"t") == b"E":
                    skipping = True
                    continue
                skipping = expect(b"T", b"n") == b"E"
            elif kind == "E":
                while (got := expect(b"D", b"C", b"I", b"s")) == b"D":
                    pass
                skipping = got == b"E"
    except SessionEnded:
        return False
    return True


# --------------------------------------------------------------------------- the server log

_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ([A-Z]+):  (.*)$")


@dataclasses.dataclass
class LogEntry:
    pid: int
    level: str
    text: str


def log_entries(path: Path, offset: int) -> list[LogEntry]:
    """The server log from ``offset`` as entries (a message's further lines joined to it)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read().decode("utf-8", "replace")
    entries: list[LogEntry] = []
    for line in data.split("\n"):
        match = _LINE.match(line)
        if match:
            entries.append(LogEntry(int(match[1]), match[2], match[3]))
        elif entries and line:
            # the server writes a message's further lines each after a tab
            entries[-1].text += "\n" + line.removeprefix("\t")
    return entries


@dataclasses.dataclass(frozen=True)
class Execution:
    """What the server ran, by its log: a statement text, and an Execute's parameters."""

    text: str
    parameters: str | None  # the DETAIL line's "$1 = '1', …" of an Execute; None: none
    extended: bool
    line: str
    # the server started running it for sure: an Execute, or the first statement of a
    # string (a later one runs only if those before it succeeded)
    started: bool = True


_EXECUTE = re.compile(r"^execute (?:fetch from )?[^:]*: (.*)$", re.DOTALL)


def executions(entries: list[LogEntry], pid: int) -> list[Execution]:
    """What the backend ``pid`` ran, per statement, by its log_statement lines."""
    mine = [e for e in entries if e.pid == pid]
    out: list[Execution] = []
    for number, entry in enumerate(mine):
        if entry.level != "LOG":
            continue
        if entry.text.startswith("statement: "):
            text = entry.text[len("statement: "):]
            if text == POISON_QUERY:
                continue  # the proxy's refusal: fails at once, runs nothing
            if text.endswith(POISON_JOIN + POISON_QUERY):
                # what the proxy let through before a refused statement, then the poison
                parts = text[: -len(POISON_JOIN + POISON_QUERY)].split(POISON_JOIN)
            else:
                assert text in QUERIES, f"the server ran a statement nobody sent: {entry.text!r}"
                parts = list(QUERIES[text])
            out.extend(Execution(part, None, False, entry.text, index == 0)
                       for index, part in enumerate(parts))
            continue
        found = _EXECUTE.match(entry.text)
        if found is None:
            continue
        detail = mine[number + 1] if number + 1 < len(mine) else None
        parameters = None
        if detail is not None and detail.level == "DETAIL" and \
                detail.text.startswith("parameters: "):
            parameters = detail.text[len("parameters: "):]
        out.append(Execution(found[1], parameters, True, entry.text))
    return out


def logged_parameters(values: list[str | None] | None) -> str | None:
    """Bind parameters as the server's DETAIL line shows them."""
    if not values:
        return None
    shown = ("NULL" if v is None else "'" + v.replace("'", "''") + "'" for v in values)
    return ", ".join(f"${i} = {v}" for i, v in enumerate(shown, 1))


# --------------------------------------------------------------------------- the comparison


@dataclasses.dataclass(frozen=True)
class Record:
    seq: int
    statement: str
    decision: str
    sqlstate: str | None
    reason: str | None
    parameters: list[str | None] | None

    @property
    def claims_run(self) -> bool:
        """The record says its statement ran (and the server logs such a statement)."""
        reason = self.reason or ""
        return (self.decision in RUN and self.sqlstate is None and self.statement.strip() != ""
                and "not run" not in reason and "session ended" not in reason)


def mismatches(runs: list[Execution], records: list[Record]) -> list[str]:
    """Match executions to records in order; what does not match, both ways.

    A run matches the next record of its text (and an Execute's parameters) with a run
    decision; one that says "not run" is passed over for a later one of the same text that
    does not (an Execute the server skipped, then the same text sent by Query), and taken only
    when there is none (then the record is wrong about the run)."""
    problems: list[str] = []
    position = 0
    for run in runs:
        candidates = [index for index in range(position, len(records))
                      if records[index].decision in RUN and records[index].statement == run.text
                      and (not run.extended or logged_parameters(records[index].parameters)
                           == run.parameters)]
        if not candidates:
            problems.append(f"the server ran {run.line!r} (parameters {run.parameters}) with no "
                            "record of it")
            continue
        index = next((i for i in candidates if "not run" not in (records[i].reason or "")),
                     candidates[0])
        record = records[index]
        for skipped in records[position:index]:
            if skipped.claims_run:
                problems.append(f"record {skipped.seq} says it ran, the server did not run it "
                                f"(before {run.line!r})")
        if run.started and "not run" in (record.reason or ""):
            problems.append(f"record {record.seq} says it did not run, the server ran it "
                            f"({run.line!r})")
        position = index + 1
    problems.extend(f"record {r.seq} says it ran, the server did not run it"
                    for r in records[position:] if r.claims_run)
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def logged(applied_clinic: Database, tmp_path: Path) -> Iterator[tuple[Database, RunningProxy]]:
    """The clinic behind a proxy, with every statement of the billing role logged by the
    server.  The policy names no approvers, so a statement billing needs approved is refused at
    once (no hold to wait for) and no EXPLAIN pre-check for ``rows_over`` runs on the agent's
    session."""
    db = applied_clinic
    with db.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE billing IN DATABASE {} SET log_statement = 'all'")
                     .format(sql.Identifier(db.name)))
        prefix = conn.execute("SHOW log_line_prefix").fetchone()
        changed = prefix is None or prefix[0] != DEFAULT_PREFIX
        if changed:
            conn.execute(sql.SQL("ALTER SYSTEM SET log_line_prefix = {}")
                         .format(sql.Literal(DEFAULT_PREFIX)))
            conn.execute("SELECT pg_reload_conf()")
    policy = clinic_policy(db.name)
    policy = dataclasses.replace(
        policy, approvals=dataclasses.replace(policy.approvals, approvers=()))
    try:
        with run_proxy(policy, db.dsn_as("policyc_proxy"), tmp_path / "spool") as proxy:
            yield db, proxy
    finally:
        if changed:
            with db.connect() as conn:
                conn.execute("ALTER SYSTEM RESET log_line_prefix")
                conn.execute("SELECT pg_reload_conf()")


def _event(text: str) -> None:
    """A statistic for ``--hypothesis-show-statistics`` (outside hypothesis: nothing)."""
    with contextlib.suppress(InvalidArgument):
        event(text)


def run_sequence(db: Database, proxy: RunningProxy, messages: Sequence[Message],
                 answer_timeout: float = 15, end_timeout: float = 30) -> list[str]:
    """Send ``messages`` (and a final Sync) on a fresh session, read the answers, leave, and
    compare what the server ran with the records; the problems found (a hang is one)."""
    agent = f"agent-x{next(_agents)}"
    logfile = db.cluster.logfile
    offset = logfile.stat().st_size
    problems: list[str] = []
    raw = RawSession(proxy, agent, "billing", clinic_id=1)
    messages = [*messages, ("S",)]
    try:
        query = "SELECT pid, session_id FROM policyc.session_identity WHERE agent = %s"
        found = wait_for(lambda: db.execute(query, (agent,)))
        assert found, "the session was not registered"
        pid, session_id = found[0]
        raw.sock.sendall(b"".join(encode(m) for m in messages))
        try:
            if not read_answers(raw, messages, answer_timeout):
                _event("the proxy ended the session")
        except Hang as exc:
            problems.append(f"the session hangs: {exc}")
    finally:
        raw.close()
    ended = wait_for(lambda: db.execute(
        "SELECT s.end_seq FROM audit.sessions s WHERE s.session_id = %s AND s.end_seq IS NOT "
        "NULL AND (SELECT count(*) FROM audit.statements t WHERE t.session_id = s.session_id) "
        "= s.end_seq - 1", (session_id,)), timeout=end_timeout)
    if not ended:
        problems.append("the session did not end (or its records did not all arrive) after "
                        "the client left")
    gone = wait_for(lambda: not db.execute(
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), timeout=end_timeout)
    if not gone:
        problems.append("the agent's backend is still there after the client left")
    records = [Record(*row) for row in db.execute(
        "SELECT seq, statement, decision, sqlstate, reason, parameters FROM audit.statements "
        "WHERE session_id = %s ORDER BY seq", (session_id,))]
    runs = executions(log_entries(logfile, offset), pid)
    _event(f"statements the server ran: {min(len(runs), 5)}{'+' if len(runs) >= 5 else ''}")
    problems.extend(mismatches(runs, records))
    if problems:
        shown = "\n".join(f"  {r}" for r in records)
        ran = "\n".join(f"  {r.line!r} {r.parameters or ''}" for r in runs)
        problems.append(f"messages: {messages!r}\nrecords:\n{shown}\nserver ran:\n{ran}")
    return problems


# --------------------------------------------------------------------------- the tests


def test_log_reading_sees_every_kind_of_execution(logged: tuple[Database, RunningProxy]) -> None:
    """The oracle itself: a known sequence shows up in the log as the comparison expects (a
    simple Query, an Execute with its parameters, a suspended portal run twice, a multi-
    statement string cut at a refusal), and every record matches."""
    db, proxy = logged
    messages: list[Message] = [
        ("Q", "SELECT id FROM claims WHERE id = 1"),
        ("P", "s1", "SELECT id FROM claims WHERE id = $1"),
        ("B", "", "s1", ("2",)),
        ("E", "", 0),
        ("P", "", "SELECT id, status FROM claims ORDER BY id"),
        ("B", "p1", "", ()),
        ("E", "p1", 1),
        ("E", "p1", 1),
        ("S",),
        ("Q", "SELECT id FROM claims WHERE id = 1; SET ROLE postgres"),
    ]
    offset = db.cluster.logfile.stat().st_size
    assert run_sequence(db, proxy, messages) == []
    entries = [e.text for e in log_entries(db.cluster.logfile, offset) if e.level == "LOG"]
    assert "statement: SELECT id FROM claims WHERE id = 1" in entries
    assert "execute s1: SELECT id FROM claims WHERE id = $1" in entries
    assert "execute <unnamed>/p1: SELECT id, status FROM claims ORDER BY id" in entries
    assert "execute fetch from <unnamed>/p1: SELECT id, status FROM claims ORDER BY id" in entries
    assert "statement: SELECT id FROM claims WHERE id = 1\n;\nSELECT 1/0" in entries


def test_the_oracle_catches_an_unrecorded_execution() -> None:
    """The comparison fails both ways: an execution without its record, a record that says
    it ran without an execution."""
    ran = Execution("SELECT id FROM claims WHERE id = 1", None, False, "statement: …")
    record = Record(1, "SELECT id FROM claims WHERE id = 1", "allowed", None, None, None)
    other = Record(1, "SELECT id FROM visits WHERE id = 2", "allowed", None, None, None)
    blocked = Record(1, "SELECT id FROM claims WHERE id = 1", "blocked", "42501", None, None)
    assert mismatches([ran], [record]) == []
    assert len(mismatches([ran], [blocked])) == 1
    assert len(mismatches([ran], [other])) == 2
    assert len(mismatches([ran, ran], [record])) == 1
    skipped = dataclasses.replace(record, sqlstate="34000", reason="not run: an earlier message")
    assert mismatches([ran], [skipped, dataclasses.replace(record, seq=2)]) == []
    assert len(mismatches([ran], [skipped])) == 1  # it ran: the record is wrong


def _examples() -> int:
    return int(os.environ.get("POLICYC_EXECUTIONS_EXAMPLES", "60"))


@pytest.mark.slow
@settings(max_examples=_examples(), deadline=None,
          derandomize=os.environ.get("POLICYC_EXECUTIONS_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          database=None)
@given(messages=MESSAGES)
@example(messages=[("Q", "BEGIN"), ("P", "s1", "SELECT id FROM claims WHERE id = $1"),
                   ("B", "p1", "s1", ("1",)), ("S",), ("Q", "FETCH 1 FROM p1"), ("E", "p1", 0),
                   ("S",), ("Q", "COMMIT"), ("Q", "FETCH 1 FROM p1")])
def test_every_execution_has_exactly_one_record(logged: tuple[Database, RunningProxy],
                                                messages: list[Message]) -> None:
    db, proxy = logged
    problems = run_sequence(db, proxy, messages)
    assert not problems, "\n".join(problems)


#: A simple Query sent after an extended-protocol message that failed, with no Sync between:
#: the server skips the Query (it skips everything up to the Sync), the proxy counts it as a
#: batch the server answers.
STALE_EXECUTE = [
    ("Q", "DECLARE c1 CURSOR WITH HOLD FOR SELECT id FROM claims"),
    ("P", "", "SELEC broken"), ("Q", "SELECT id FROM visits WHERE id = 2"), ("E", "c1", 1),
    ("S",),
    ("Q", "SELECT id FROM claims WHERE id = 1"),
]
HANG = [
    ("P", "", "SELEC broken"), ("P", "s1", "SELECT id FROM claims WHERE id = $1"),
    ("Q", "SELECT id FROM claims WHERE id = 1"), ("B", "", "s1", ("1",)),
]


@pytest.mark.slow
@pytest.mark.parametrize("messages", [STALE_EXECUTE, HANG], ids=["stale-execute", "hang"])
def test_known_sequences(logged: tuple[Database, RunningProxy], messages: list[Message]) -> None:
    db, proxy = logged
    problems = run_sequence(db, proxy, messages, answer_timeout=5, end_timeout=5)
    assert not problems, "\n".join(problems)
