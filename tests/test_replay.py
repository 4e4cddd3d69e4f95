"""Session recording and ``policyc replay``: with ``results: full`` the replay shows exactly what
the client received (compared with the client's own raw results), seqs run 1..n, ``--verify``
passes and catches a superuser's tampering; the per-session result limit is recorded, never
silent; ``results: none`` keeps no digest; a spool failure leaves no gap in the seqs."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import socket
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import Database, clinic_policy
from policyc.cli import main
from policyc.policy.model import ResultRecording
from policyc.proxy.codec.backend import DataRow, RowDescription
from policyc.proxy.codec.backend import FieldDescription as Field
from policyc.proxy.results import (
    ResultBudget,
    ResultCapture,
    ResultDecodeError,
    decode_result,
    not_kept_reason,
    with_formats,
)
from policyc.replay import Replay, verify
from proxyharness import RunningProxy, run_proxy, wait_for

# --- no database --------------------------------------------------------------------------


def test_capture_round_trip_and_budget() -> None:
    header = RowDescription((Field("id", type_oid=23), Field("name"))).encode()
    rows = [DataRow((b"1", b"Ada")).encode(), DataRow((b"2", None)).encode()]
    budget = ResultBudget(len(header) + sum(map(len, rows)) + 10)
    capture = ResultCapture(budget)
    capture.start(header)
    for row in rows:
        capture.add(row)
    blob = capture.finish()
    assert blob is not None and budget.kept == len(header) + sum(map(len, rows))
    decoded = decode_result(blob)
    assert [c.name for c in decoded.columns] == ["id", "name"]
    assert decoded.rows == [["1", "Ada"], ["2", None]] and decoded.data_frames == 2
    # the next result does not fit in the 10 bytes left: dropped at once, buffers released
    second = ResultCapture(budget)
    second.start(header)
    assert second.dropped and second.finish() is None
    assert budget.kept == len(header) + sum(map(len, rows))  # a dropped result costs nothing
    # an empty result (a statement without rows or description) keeps nothing
    assert ResultCapture(ResultBudget(100)).finish() is None
    assert not_kept_reason(5) == "result not kept: session result limit of 5 bytes reached"


def test_capture_stops_buffering_past_the_limit() -> None:
    budget = ResultBudget(1 << 20)
    capture = ResultCapture(budget)
    capture.start(None)
    row = DataRow((b"x" * 1000,)).encode()
    for _ in range(5000):  # 5 MB offered, 1 MB allowed
        capture.add(row)
    assert capture.dropped and capture.finish() is None and budget.kept == 0
    assert capture._pending == [] and capture._out == bytearray()


def test_statement_row_description_takes_the_bind_formats() -> None:
    described = RowDescription((Field("a", type_oid=23), Field("b"))).encode()
    binary = with_formats(described, (1,))
    rows = DataRow((b"\x00\x00\x00\x07", b"hi")).encode()
    blob = zlib.compress(binary + rows)
    decoded = decode_result(blob)
    assert [c.format for c in decoded.columns] == [1, 1]
    assert decoded.rows == [["\\x00000007", "\\x6869"]]
    assert with_formats(described, (0, 1)) != described
    assert with_formats(described, (0, 1, 1)) == described  # a mismatch keeps what was sent


def test_decode_refuses_what_the_proxy_did_not_write() -> None:
    for blob in (b"not zlib", zlib.compress(b"D\x00\x00\x00\x09\x00"),
                 zlib.compress(b"Z\x00\x00\x00\x05I")):
        with pytest.raises(ResultDecodeError):
            decode_result(blob)


def _replay(statements: list[dict[str, Any]], end_seq: int | None) -> Replay:
    return Replay(uuid.uuid4(), {"end_seq": end_seq}, statements)


def test_verify_names_gaps_repeats_and_records_past_the_end() -> None:
    def rows(*seqs: int) -> list[dict[str, Any]]:
        return [{"seq": n, "record_id": f"r{n}"} for n in seqs]

    assert verify(_replay(rows(1, 2, 3), 4)).ok
    assert verify(_replay([], 1)).ok
    assert verify(_replay(rows(1, 2), None)).ok  # still open: no known end
    assert verify(_replay(rows(1, 2, 5, 6, 8), 9)).problems == [
        "statement seq 3-4, 7 missing (removed?)"]
    assert verify(_replay(rows(1, 2), 5)).problems == ["statement seq 3-4 missing (removed?)"]
    assert verify(_replay(rows(1, 2, 2, 3), 4)).problems == [
        "statement seq 2 recorded more than once"]
    assert verify(_replay(rows(1, 2, 3), 3)).problems == [
        "statement seq 3 after the session's end (end_seq 3)"]
    missing_session = Replay(uuid.uuid4(), None, rows(1))
    assert verify(missing_session).problems == ["the session's row in audit.sessions is missing"]


# --- through the real proxy -------------------------------------------------------------------


def full_policy(db: Database, results: ResultRecording = ResultRecording.FULL,
                limit: int = 16 << 20) -> Any:
    policy = clinic_policy(db.name)
    return dataclasses.replace(
        policy, approvals=dataclasses.replace(policy.approvals, hold_seconds=1),
        audit=dataclasses.replace(policy.audit, results=results, results_limit_bytes=limit))


@pytest.fixture
def auditor(applied_clinic: Database) -> str:
    """An ordinary human auditor's connection string (member of policyc_auditor)."""
    applied_clinic.execute("CREATE ROLE carol LOGIN IN ROLE policyc_auditor")
    return applied_clinic.dsn_as("carol")


@pytest.fixture
def full_proxy(applied_clinic: Database, tmp_path: Path) -> Iterator[RunningProxy]:
    with run_proxy(full_policy(applied_clinic), applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as running:
        yield running


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def received(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    """What the client itself received for the current result: column names, formats and the
    raw values (text as text, binary as \\x hex), from libpq's own result."""
    res = cur.pgresult
    assert res is not None
    formats = [res.fformat(c) for c in range(res.nfields)]

    def value(r: int, c: int) -> str | None:
        raw = res.get_value(r, c)
        if raw is None:
            return None
        return "\\x" + bytes(raw).hex() if formats[c] else bytes(raw).decode()

    return {
        "columns": [{"name": (res.fname(c) or b"").decode(), "type_oid": res.ftype(c),
                     "format": "binary" if formats[c] else "text"}
                    for c in range(res.nfields)],
        "rows": [[value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)],
    }


def session_of(db: Database, agent: str) -> str:
    found = wait_for(lambda: db.execute(
        "SELECT session_id::text FROM audit.sessions WHERE agent = %s AND ended_at IS NOT NULL",
        (agent,)))
    assert found, "the session was not closed in the audit trail"
    [(session_id,)] = found
    return str(session_id)


def wait_drained(db: Database, session_id: str) -> None:
    """Every statement of the (closed) session is in audit.statements."""
    def done() -> bool:
        [(end_seq,)] = db.execute(
            "SELECT end_seq FROM audit.sessions WHERE session_id = %s", (session_id,))
        [(count,)] = db.execute(
            "SELECT count(*) FROM audit.statements WHERE session_id = %s", (session_id,))
        return end_seq is not None and count == end_seq - 1
    assert wait_for(done)


def test_replay_equals_what_the_client_received(
        applied_clinic: Database, full_proxy: RunningProxy, auditor: str) -> None:
    expected: list[tuple[str, dict[str, Any] | None]] = []  # (decision, result) per seq
    with full_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        cur = conn.cursor()
        # a masked multi-row result (HMAC pseudonyms, partial names, years), extended protocol
        cur.execute("SELECT id, full_name, ssn, birth_date FROM patients ORDER BY id LIMIT 25")
        expected.append(("masked", received(cur)))
        # NULL, the text 'NULL' and the empty string are three different things
        cur.execute("SELECT NULL::text AS a, 'NULL' AS b, '' AS c, 42 AS d, "
                    "p.id, c.amount FROM patients p LEFT JOIN claims c ON c.patient_id = p.id "
                    "ORDER BY p.id LIMIT 3")
        expected.append(("allowed", received(cur)))  # no PHI column read
        # an error: recorded with its SQLSTATE, no digest, nothing kept
        with pytest.raises(psycopg.errors.DivisionByZero):
            cur.execute("SELECT 1/0")
        expected.append(("allowed", None))
        # a blocked statement never reaches the database
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("SET ROLE postgres")
        expected.append(("blocked", None))
        # a prepared statement, executed twice with other parameters
        for low in (0, 200):
            cur.execute("SELECT id, birth_date FROM patients WHERE id > %s ORDER BY id LIMIT 4",
                        (low,), prepare=True)
            expected.append(("masked", received(cur)))
        # binary results: shown as hex, exactly the bytes the client got
        with conn.cursor(binary=True) as bcur:
            bcur.execute("SELECT id, ssn, birth_date FROM patients ORDER BY id LIMIT 2")
            expected.append(("masked", received(bcur)))
        # simple protocol, two statements in one query: two records, two results
        ccur = psycopg.ClientCursor(conn)
        ccur.execute("SELECT 'one' AS first; SELECT id FROM patients WHERE false")
        first = received(ccur)
        assert ccur.nextset()
        expected += [("allowed", first), ("allowed", received(ccur))]
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)

    code, out = cli("replay", session_id, "--json", "--dsn", auditor)
    assert code == 0, out
    doc = json.loads(out)
    statements = doc["statements"]
    assert [s["seq"] for s in statements] == list(range(1, len(expected) + 1))
    assert doc["session"]["end_seq"] == len(expected) + 1
    assert (doc["session"]["agent"], doc["session"]["group_name"]) == ("agent-7", "billing")
    assert doc["session"]["claims"]["clinic_id"] == 1
    for statement, (decision, result) in zip(statements, expected, strict=True):
        assert statement["decision"] == decision, statement
        assert statement["result"] == result, statement["statement"]
        if result is not None:
            assert statement["rows"] == len(result["rows"])
            assert statement["result_digest"] and len(statement["result_digest"]) == 64
    error, blocked = statements[2], statements[3]
    assert (error["sqlstate"], error["result_digest"]) == ("22012", None)
    assert (blocked["sqlstate"], blocked["statement"]) == ("42501", "SET ROLE postgres")
    assert statements[4]["parameters"] == ["0"] and statements[5]["parameters"] == ["200"]
    assert "public.patients.ssn" in statements[0]["phi_columns"]
    masked = statements[0]["result"]["rows"]
    assert all(len(r[2]) == 64 for r in masked)  # what the agent saw: pseudonyms, not SSNs

    # the transcript says the same in words; --verify recomputes every digest
    code, text = cli("replay", session_id, "--verify", "--dsn", auditor)
    assert code == 0, text
    assert f"session {session_id}  agent agent-7  group billing" in text
    assert '      NULL | "NULL" | "" | "42"' in text
    assert "    > SET ROLE postgres" in text
    assert text.rstrip().endswith(
        f"verify: ok ({len(expected)} statements, seqs contiguous, 7 kept result(s) match "
        "their digests)")
    # the trail the proxy wrote is also sound for the chain verifier
    assert applied_clinic.execute(
        "SELECT * FROM audit.verify() WHERE chain = %s", (session_id,)) == []


def tamper(db: Database, sql: str, params: Any) -> None:
    """A superuser going around the append-only triggers."""
    with db.connect() as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql, params)


def test_verify_catches_a_superuser_rewriting_a_kept_result(
        applied_clinic: Database, full_proxy: RunningProxy, auditor: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with full_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        for _ in range(3):
            conn.execute("SELECT id, full_name FROM patients ORDER BY id LIMIT 3").fetchall()
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    assert cli("replay", session_id, "--verify", "--dsn", auditor)[0] == 0

    # rewrite one value of seq 2's kept rows, as well-formed frames: only the digest tells
    [(blob,)] = applied_clinic.execute(
        "SELECT result FROM audit.statements WHERE session_id = %s AND seq = 2", (session_id,))
    data = zlib.decompress(blob)
    decoded = decode_result(blob)
    victim = decoded.rows[0][1]
    assert victim is not None
    forged = data.replace(victim.encode(), ("X" * len(victim.encode())).encode(), 1)
    assert forged != data
    tamper(applied_clinic, "UPDATE audit.statements SET result = %s "
           "WHERE session_id = %s AND seq = 2", (zlib.compress(forged), session_id))
    capsys.readouterr()
    code, out = cli("replay", session_id, "--verify", "--json", "--dsn", auditor)
    assert code == 1
    problems = json.loads(out)["verify"]["problems"]
    assert len(problems) == 1
    assert problems[0].startswith("statement seq 2 (record ")
    assert problems[0].endswith("the kept result does not match its digest")
    assert "statement seq 2" in capsys.readouterr().err

    # and a removed record is a gap in the seqs
    tamper(applied_clinic, "DELETE FROM audit.statements WHERE session_id = %s AND seq = 3",
           (session_id,))
    code, out = cli("replay", session_id, "--verify", "--dsn", auditor)
    assert code == 1
    assert "  MISMATCH statement seq 3 missing (removed?)" in out


def test_copy_out_is_kept_as_sent(applied_clinic: Database, tmp_path: Path,
                                  auditor: str) -> None:
    policy = full_policy(applied_clinic)
    groups = tuple(
        dataclasses.replace(g, approval=dataclasses.replace(
            g.approval, statements=tuple(s for s in g.approval.statements if s != "copy_out")))
        for g in policy.groups)
    policy = dataclasses.replace(policy, groups=groups)
    query = "COPY (SELECT id, full_name, ssn FROM patients ORDER BY id LIMIT 4) TO STDOUT"
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool") as px, \
            px.connect("agent-7", "billing", clinic_id=1) as conn, conn.cursor() as cur, \
            cur.copy(query) as copy:
        got = [bytes(chunk).decode() for chunk in copy]
    assert len(got) == 4
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    code, out = cli("replay", session_id, "--json", "--verify", "--dsn", auditor)
    assert code == 0, out
    [statement] = json.loads(out)["statements"]
    assert (statement["kind"], statement["rows"]) == ("copy_out", 4)
    assert statement["result"] == {"copy_format": "text", "copy_data": got}
    code, text = cli("replay", session_id, "--dsn", auditor)
    assert "      | " + got[0].rstrip("\n") in text


def test_result_limit_is_per_session_and_recorded(
        applied_clinic: Database, tmp_path: Path, auditor: str) -> None:
    policy = full_policy(applied_clinic, limit=3000)
    with run_proxy(policy, applied_clinic.dsn_as("policyc_proxy"), tmp_path / "spool") as px, \
            px.connect("agent-7", "billing", clinic_id=1) as conn:
        small = "SELECT id FROM patients ORDER BY id LIMIT 5"
        conn.execute(small).fetchall()  # ~100 bytes: kept
        conn.execute("SELECT id, ssn FROM patients ORDER BY id").fetchall()  # ~8 kB: not kept
        conn.execute(small).fetchall()  # fits what is left: kept
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    rows = applied_clinic.execute(
        "SELECT seq, reason, result IS NOT NULL, result_digest IS NOT NULL, rows "
        "FROM audit.statements WHERE session_id = %s ORDER BY seq", (session_id,))
    reason = "result not kept: session result limit of 3000 bytes reached"
    assert [r[:4] for r in rows] == [(1, None, True, True), (2, reason, False, True),
                                     (3, None, True, True)]
    assert rows[1][4] > 50  # the rows were sent (and counted, and digested) all the same
    code, text = cli("replay", session_id, "--verify", "--dsn", auditor)
    assert code == 0, text
    assert f"    reason: {reason}" in text
    assert "(rows not kept)" in text


@pytest.mark.parametrize("results", [ResultRecording.NONE, ResultRecording.DIGEST])
def test_results_none_keeps_no_digest_and_digest_no_rows(
        applied_clinic: Database, tmp_path: Path, auditor: str,
        results: ResultRecording) -> None:
    with run_proxy(full_policy(applied_clinic, results), applied_clinic.dsn_as("policyc_proxy"),
                   tmp_path / "spool") as px, px.connect("agent-7", "billing", clinic_id=1) as c:
        c.execute("SELECT id, ssn FROM patients ORDER BY id LIMIT 3").fetchall()
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    assert applied_clinic.execute(
        "SELECT seq, result_digest IS NOT NULL, result FROM audit.statements "
        "WHERE session_id = %s", (session_id,)) == [(1, results is ResultRecording.DIGEST, None)]
    code, out = cli("replay", session_id, "--json", "--verify", "--dsn", auditor)
    assert code == 0
    [statement] = json.loads(out)["statements"]
    assert statement["result"] is None and statement["rows"] == 3


@pytest.mark.parametrize(("sql", "note"), [
    ("SELECT 2", "answer withheld: the audit trail was unavailable"),  # sent, answer withheld
    ("SELECT now()", "not run: the audit trail was unavailable"),  # a function: never sent
])
def test_a_spool_failure_ends_the_session_without_a_gap_in_its_seqs(
        applied_clinic: Database, full_proxy: RunningProxy, auditor: str, sql: str,
        note: str) -> None:
    audit = full_proxy.server.audit
    assert audit is not None
    spool = audit._spool
    append = spool.append

    def broken(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with full_proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        conn.execute("SELECT 1").fetchall()
        spool.append = broken  # type: ignore[method-assign]
        try:
            with pytest.raises(psycopg.OperationalError, match="audit trail is unavailable"):
                conn.execute(sql).fetchall()
        finally:
            spool.append = append  # type: ignore[method-assign]
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    rows = applied_clinic.execute(
        "SELECT seq, sqlstate, reason FROM audit.statements WHERE session_id = %s ORDER BY seq",
        (session_id,))
    assert [r[:2] for r in rows] == [(1, None), (2, "58030")]
    assert rows[1][2].startswith(note)
    assert applied_clinic.execute(
        "SELECT end_reason, end_seq FROM audit.sessions WHERE session_id = %s",
        (session_id,)) == [("audit trail unavailable: the local audit spool failed", 3)]
    code, text = cli("replay", session_id, "--verify", "--dsn", auditor)
    assert code == 0, text


def test_statements_cut_short_by_terminate_keep_their_seqs(
        applied_clinic: Database, full_proxy: RunningProxy, auditor: str) -> None:
    """A query and Terminate in one packet: the session ends before anything runs, yet every
    record it numbered is written, so the seqs have no gap."""
    token = full_proxy.token("agent-7", "billing", clinic_id=1)
    params = f"user\0agent-7\0database\0{full_proxy.database}\0\0".encode()
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    password = b"p" + struct.pack("!i", 4 + len(token) + 1) + token.encode() + b"\0"

    def query(sql: str) -> bytes:
        body = sql.encode() + b"\0"
        return b"Q" + struct.pack("!i", 4 + len(body)) + body

    with socket.create_connection(("127.0.0.1", full_proxy.port), timeout=10) as raw:
        raw.sendall(startup)
        raw.recv(65536)  # AuthenticationCleartextPassword
        raw.sendall(password)
        received = b""
        while not received.endswith(b"Z\x00\x00\x00\x05I"):  # logged in
            received += raw.recv(65536)
        raw.sendall(query("SELECT 1") + query("SET ROLE postgres") + b"X\x00\x00\x00\x04")
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while raw.recv(65536):
                pass
    session_id = session_of(applied_clinic, "agent-7")
    wait_drained(applied_clinic, session_id)
    rows = applied_clinic.execute(
        "SELECT seq, decision, reason FROM audit.statements WHERE session_id = %s ORDER BY seq",
        (session_id,))
    assert [r[:2] for r in rows] == [(1, "allowed"), (2, "blocked")]
    assert rows[0][2] == "session ended: client terminated the session"
    code, text = cli("replay", session_id, "--verify", "--dsn", auditor)
    assert code == 0, text


def test_replay_usage_and_missing_sessions(applied_clinic: Database, auditor: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("replay", "not-a-uuid", "--dsn", auditor)[0] == 64
    assert cli("replay")[0] == 64
    missing = str(uuid.uuid4())
    assert cli("replay", missing, "--dsn", auditor)[0] == 1
    assert f"no session {missing}" in capsys.readouterr().err
    # an agent's group role cannot read the audit trail
    code, _ = cli("replay", missing, "--dsn", applied_clinic.dsn_as("billing"))
    assert code == 1 and "permission denied" in capsys.readouterr().err
    nowhere = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"
    assert cli("replay", missing, "--dsn", nowhere)[0] == 69
    assert "cannot reach the database" in capsys.readouterr().err
