"""The proxy reads every statement exactly as the server does (issue #11, class 1).

The proxy judges each statement of a simple query by what :func:`classify` (pglast, the
PostgreSQL 18 parser) makes of the text; the server runs what *its* lexer makes of the same
bytes.  Both readings agree only under the settings the proxy pins for agent sessions
(``client_encoding = UTF8``, ``standard_conforming_strings = on``).  Here:

* every case of ``lexing_cases.sql`` (and a few generated ones: very long literals, deep
  comments, many statements) runs on a real PostgreSQL 15 server with those settings through
  the simple query protocol; the server's command tags must match classify's statements one
  for one, in number and kind, and the statement texts classify cut out must run to the very
  same tags and rows, alone and joined the way the proxy re-sends them; pieces of the corpus
  recombined by hypothesis (literals, aliases, comments and whitespace between tokens,
  separators) must be read alike too;
* where pglast 18 and PostgreSQL 15 do read differently (hex, octal, binary and underscored
  numbers, a vertical tab as whitespace), the server refuses the whole text, so nothing of it
  runs;
* through the proxy, every client encoding the server accepts, by every route (SET, SET NAMES,
  set_config, login options and the startup parameter), is refused unless it is UTF8, and the
  session stays UTF8 and usable; bytes that are not UTF-8 never run;
* on a direct connection with ``standard_conforming_strings = off`` or a multibyte client
  encoding, the server really does read other statements than classify: why the pin matters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq
from pytest_postgresql.janitor import DatabaseJanitor

from conftest import Database
from policyc.devcluster import SUPERUSER, Cluster
from policyc.proxy.judge.classify import classify
from policyc.proxy.judge.statement import Classification, StatementKind
from proxyharness import RunningProxy, wait_for

CORPUS = Path(__file__).resolve().with_name("lexing_cases.sql")
_MARKER = re.compile(r"-- case: ([A-Za-z0-9_.-]+)[ \t]*\Z")
#: The separator the proxy puts between the statement texts it re-sends (session._on_query).
PROXY_JOIN = "\n;\n"


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    text: str

    @property
    def test_id(self) -> str:
        return f"{CORPUS.name}:{self.line}:{self.name}"


def load_cases(path: Path = CORPUS) -> list[Case]:
    """The cases of a corpus file: ``-- case: <id>`` lines start them; text before the first
    is a header.  Lines are split at LF only (a CR inside a case is part of the case) and a
    case's trailing newlines are dropped."""
    with path.open(encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    cases: list[Case] = []
    name: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        marker = _MARKER.match(line)
        if marker is None:
            if name is not None:
                body.append(line)
            continue
        if name is not None:
            cases.append(Case(name, start, "\n".join(body).rstrip("\n")))
        name, start, body = marker.group(1), number, []
    if name is not None:
        cases.append(Case(name, start, "\n".join(body).rstrip("\n")))
    return cases


CASES = load_cases()


def _generated() -> list[Case]:
    """Cases too large or too repetitive to keep in the corpus file."""
    nested = 500
    return [
        Case("long-plain-literal", 0,
             "SELECT '" + "it''s; \\ -- /* $$ E'' " * 20_000 + "' AS long"),
        Case("long-e-literal", 0, "SELECT E'" + "\\'; \\\\ -- " * 30_000 + "' AS long"),
        Case("long-dollar-literal", 0, "SELECT $x$" + "$$ ; ' \\ $y$ " * 30_000 + "$x$ AS long"),
        Case("long-uescape-literal", 0,
             "SELECT U&'" + "!0027;!003B" * 20_000 + "' UESCAPE '!' AS long"),
        Case("long-block-comment", 0, "SELECT 1 /* " + "; ' $$ -- " * 30_000 + " */ AS x"),
        Case("long-line-comment", 0, "SELECT 1 -- " + "; ' $$ /* " * 30_000 + "\n AS x"),
        Case("long-quoted-identifier", 0, 'SELECT 1 AS "' + "; ' \\" * 5_000 + '"'),
        Case("deep-nested-comment", 0,
             "SELECT 1 " + "/* ; " * nested + "'" + " */" * nested + " AS x; SELECT 2"),
        Case("many-statements", 0, "; ".join(f"SELECT {i} AS \"{i};\"" for i in range(400))),
        Case("many-empty-statements", 0, ";" * 5_000 + "SELECT 1" + ";" * 5_000),
    ]


GENERATED = _generated()


# --------------------------------------------------------------------------- the server side


@dataclass(frozen=True)
class Outcome:
    """One result of a simple query: its command tag ("" for EmptyQueryResponse) and rows."""

    tag: str
    rows: tuple[tuple[bytes | None, ...], ...] = ()


class ServerError(AssertionError):
    def __init__(self, sqlstate: str, message: str, before: list[Outcome]) -> None:
        super().__init__(f"the server refused the text: {sqlstate} {message}")
        self.sqlstate = sqlstate
        self.before = before


def run_simple(pgconn: pq.abc.PGconn, text: str | bytes) -> list[Outcome]:
    """Send ``text`` as one simple-protocol Query and collect one outcome per result.

    Blocks in libpq's get_result: only for connections to the server itself, with no proxy
    thread waiting for the GIL on the answer."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    pgconn.send_query(data)
    out: list[Outcome] = []
    error: tuple[str, str] | None = None
    while (result := pgconn.get_result()) is not None:
        status = result.status
        if status == pq.ExecStatus.FATAL_ERROR:
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            error = (sqlstate, result.get_error_message().splitlines()[0])
        elif status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK,
                        pq.ExecStatus.EMPTY_QUERY):
            rows = tuple(
                tuple(result.get_value(row, col) for col in range(result.nfields))
                for row in range(result.ntuples))
            out.append(Outcome((result.command_status or b"").decode(), rows))
        else:
            raise AssertionError(f"unexpected result status {pq.ExecStatus(status).name}")
    if error is not None:
        raise ServerError(error[0], error[1], out)
    return out


def _command(pgconn: pq.abc.PGconn, sql: str) -> None:
    result = pgconn.exec_(sql.encode())
    assert result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK), (
        sql, result.get_error_message())


def _show(pgconn: pq.abc.PGconn, setting: str) -> str:
    result = pgconn.exec_(f"SHOW {setting}".encode())
    value = result.get_value(0, 0)
    assert value is not None
    return value.decode()


# Command tags (first words, counts removed) and the classify kinds they stand for.
_TAG_KINDS: dict[str, frozenset[StatementKind]] = {
    "SELECT": frozenset({"select"}),
    "INSERT": frozenset({"insert"}),
    "UPDATE": frozenset({"update"}),
    "DELETE": frozenset({"delete"}),
    "MERGE": frozenset({"merge"}),
    "COPY": frozenset({"copy_in", "copy_out"}),
    "SET": frozenset({"set", "role"}),
    "SET CONSTRAINTS": frozenset({"set"}),
    "RESET": frozenset({"reset"}),
    "SHOW": frozenset({"show"}),
    "BEGIN": frozenset({"transaction"}),
    "START TRANSACTION": frozenset({"transaction"}),
    "COMMIT": frozenset({"transaction"}),
    "ROLLBACK": frozenset({"transaction"}),
    "SAVEPOINT": frozenset({"transaction"}),
    "RELEASE": frozenset({"transaction"}),
    "PREPARE": frozenset({"prepare"}),
    "DEALLOCATE": frozenset({"deallocate"}),
    "DEALLOCATE ALL": frozenset({"deallocate"}),
    "DECLARE CURSOR": frozenset({"declare_cursor"}),
    "FETCH": frozenset({"fetch"}),
    "MOVE": frozenset({"fetch"}),
    "CLOSE CURSOR": frozenset({"close_cursor"}),
    "CLOSE CURSOR ALL": frozenset({"close_cursor"}),
    "EXPLAIN": frozenset({"explain"}),
    "DO": frozenset({"do"}),
    "CALL": frozenset({"call"}),
    "LISTEN": frozenset({"listen"}),
    "UNLISTEN": frozenset({"listen"}),
    "NOTIFY": frozenset({"notify"}),
    "LOCK TABLE": frozenset({"lock"}),
    "VACUUM": frozenset({"vacuum"}),
    "ANALYZE": frozenset({"vacuum"}),
    "DISCARD ALL": frozenset({"discard"}),
    "DISCARD PLANS": frozenset({"discard"}),
    "DISCARD SEQUENCES": frozenset({"discard"}),
    "DISCARD TEMP": frozenset({"discard"}),
    "TRUNCATE TABLE": frozenset({"truncate"}),
}
_DDL_VERBS = ("CREATE ", "ALTER ", "DROP ", "COMMENT", "GRANT", "REVOKE", "SECURITY LABEL")


def kinds_for_tag(tag: str) -> frozenset[StatementKind]:
    """The classify kinds a server command tag may stand for (empty: unknown tag)."""
    words = tag.split()
    while words and words[-1].isdigit():
        words.pop()
    head = " ".join(words)
    found = _TAG_KINDS.get(head)
    if found is not None:
        return found
    if head.startswith(_DDL_VERBS):
        return frozenset({"ddl"})
    return frozenset()


def describe(classification: Classification) -> list[tuple[str, str]]:
    return [(info.kind, info.text[:80]) for info in classification.statements]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lexdb(pg_cluster: Cluster) -> Iterator[str]:
    """One throwaway database for the whole corpus (a database per case would be slow)."""
    janitor = DatabaseJanitor(user=SUPERUSER, host="127.0.0.1", port=pg_cluster.port,
                              dbname="lexing_agrees")
    janitor.init()
    try:
        yield pg_cluster.dsn(janitor.dbname)
    finally:
        janitor.drop()


@pytest.fixture(scope="module")
def pinned(lexdb: str) -> Iterator[pq.abc.PGconn]:
    """A superuser session read the way the proxy pins agent sessions, with lex_t."""
    with psycopg.connect(lexdb, autocommit=True) as conn:
        pgconn = conn.pgconn
        for command in ("SET client_encoding = 'UTF8'", "SET standard_conforming_strings = on",
                        "SET backslash_quote = safe_encoding",
                        "CREATE TEMP TABLE lex_t (v text, n int)"):
            _command(pgconn, command)
        assert _show(pgconn, "client_encoding") == "UTF8"
        assert _show(pgconn, "standard_conforming_strings") == "on"
        yield pgconn


def _in_rolled_back_transaction(pgconn: pq.abc.PGconn, texts: list[str]) -> list[Outcome]:
    """Run each text as one simple query inside a transaction that is then rolled back;
    prepared statements (which outlive a rollback) are deallocated."""
    _command(pgconn, "BEGIN")
    try:
        return [outcome for text in texts for outcome in run_simple(pgconn, text)]
    finally:
        _command(pgconn, "ROLLBACK")
        _command(pgconn, "DEALLOCATE ALL")
        assert pgconn.transaction_status == pq.TransactionStatus.IDLE


# --------------------------------------------------------------------------- the corpus tests


def test_corpus_is_intact() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "case ids must be unique"
    assert len(CASES) >= 100
    texts = {case.name: case.text for case in CASES}
    # raw control characters an editor could normalize away
    for name in ("line-comment-ends-at-cr", "line-comment-ends-at-crlf",
                 "string-continues-after-cr"):
        assert "\r" in texts[name], f"{name} lost its CR byte"
    assert "\f" in texts["whitespace-form-feed"], "whitespace-form-feed lost its FF byte"
    breaks = texts["line-comment-does-not-end-at-unicode-line-breaks"]
    for char in ("\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e"):
        assert char in breaks, f"U+{ord(char):04X} was lost"
    assert not texts["line-comment-at-end-of-text"].endswith("\n")
    # lookalikes that Unicode normalization (NFC/NFKC) would turn into ASCII ; ' and space
    lookalikes = (texts["utf8-lookalike-quotes-in-identifiers"]
                  + texts["utf8-lookalikes-are-letters"])
    for char in ("\u037e", "\u00a0", "\uff07", "\uff1b"):
        assert char in lookalikes, f"U+{ord(char):04X} was normalized away"
    for case in CASES:
        assert case.text.strip(), f"{case.test_id} is empty"
        assert "\x00" not in case.text


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.test_id) for case in CASES]
    + [pytest.param(case, id=f"generated:{case.name}") for case in GENERATED],
)
def test_statement_boundaries_and_kinds_match_the_server(
    case: Case, pinned: pq.abc.PGconn
) -> None:
    assert_one_reading(pinned, case.text)


def assert_one_reading(pgconn: pq.abc.PGconn, text: str) -> None:
    """The server and classify read ``text`` as the same statements: as many, of the same
    kinds, and each text classify cut out runs as exactly the statement the server ran."""
    classification = classify(text)
    assert classification.ok, f"classify refused valid SQL: {classification.error}"
    statements = classification.statements
    whole = _in_rolled_back_transaction(pgconn, [text])
    if not statements:
        # nothing but empty statements, whitespace and comments: EmptyQueryResponse, once
        assert whole == [Outcome("")], [o.tag for o in whole]
        return
    tags = [outcome.tag for outcome in whole]
    assert len(whole) == len(statements), (
        f"the server ran {len(whole)} statements {tags}, classify read "
        f"{len(statements)}: {describe(classification)}")
    for index, (outcome, info) in enumerate(zip(whole, statements, strict=True)):
        if info.kind == "execute":  # EXECUTE reports the tag of the statement it ran
            continue
        kinds = kinds_for_tag(outcome.tag)
        assert kinds, f"statement {index}: no kind known for tag {outcome.tag!r}"
        assert info.kind in kinds, (
            f"statement {index}: the server's tag is {outcome.tag!r}, classify says "
            f"{info.kind!r}: {info.text[:200]!r}")
    texts = [info.text for info in statements]
    # the boundaries: each statement text classify cut out runs as exactly that statement
    alone = _in_rolled_back_transaction(pgconn, texts)
    assert [o.tag for o in alone] == tags
    assert alone == whole, "the statement texts alone give other rows than the whole text"
    # and re-sent the way the proxy re-sends the statements before a refused one
    joined = _in_rolled_back_transaction(pgconn, [PROXY_JOIN.join(texts)])
    assert joined == whole, "the statement texts joined give other results"


# Pieces of the corpus, recombined: every combination is valid SQL, so every one must be read
# alike.  Expressions, aliases, what may stand between tokens, whole statements, separators.
_EXPRESSIONS = (
    "'\\'", "'\\\\'", "'a\\'", "'it''s; ok'", "'; -- /* */ $$'", "E'\\''", "E'\\\\'",
    "E'\\'; \\''", "e'\\x27;'", "U&'d!0061t' UESCAPE '!'", "U&'\\0027;'",
    "u&'x;003B' UESCAPE ';'", "$$;'$$", "$a$ $$ ; $a$", "$ab$ $a$ $ab$", "$_$\\$_$", "B'01'",
    "X'AF'", "N';'", "'a'\n'b'", "'a' -- ;\n'b'", "1 --1\n", "2 /* ; */ - 1", "2 */*x*/ 3",
    "2 *-1", "2 +-- c\n1", "'ソ\\'", "E'ソ\\\\'", "$ソ$;$ソ$", "text'a;b'", "'1'::int", "1.e2",
    ".5", "(SELECT ';')", "ARRAY[';', $$'$$]", "'{\"a\\\";b\"}'::text[]", "'𝄞;'",
)
_ALIASES = ("", " AS \"a;b\"", " AS \"c'd\"", " AS \"e\\\"", " AS x$q$", " AS ソ",
            " AS U&\"!003B\" UESCAPE '!'", " \"--\"", " AS a\uff1bb", " AS it\uff07s")
_GAPS = (" ", "\n", "\t", "/* ' ; */", "-- ' ;\n", "\r", "\f", "/* /* ; */ $$ */", " -- ;\r")
_STATEMENTS = (
    "SHOW standard_conforming_strings", "SET LOCAL application_name = $$;'$$",
    "INSERT INTO lex_t VALUES (E'\\';', 1)", "DO $d$BEGIN PERFORM ';'; END$d$", "TABLE lex_t",
    "UPDATE lex_t SET v = '\\' WHERE n = 1", "DELETE FROM lex_t WHERE v = $$;$$",
    "SELECT count(*) FROM lex_t", "SAVEPOINT \"s;\"",
)
_SEPARATORS = (";", ";;", "; /* ; */ ;", ";\n-- ;\n", ";\r", "\n;\n", " ; ", ";\f")
_ENDINGS = ("", ";", " -- end ; '", "/* end ; */", ";;\n")

_item = st.builds(lambda g1, e, a, g2: g1 + e + a + g2, st.sampled_from(_GAPS),
                  st.sampled_from(_EXPRESSIONS), st.sampled_from(_ALIASES), st.sampled_from(_GAPS))
_select = st.builds(lambda gap, items: "SELECT" + gap + ",".join(items),
                    st.sampled_from(_GAPS), st.lists(_item, min_size=1, max_size=4))
_statement = st.one_of(_select, _select, st.sampled_from(_STATEMENTS))


@st.composite
def _texts(draw: st.DrawFn) -> str:
    statements = draw(st.lists(_statement, min_size=1, max_size=4))
    text = statements[0]
    for statement in statements[1:]:
        text += draw(st.sampled_from(_SEPARATORS)) + statement
    return text + draw(st.sampled_from(_ENDINGS))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts())
def test_recombined_pieces_are_read_alike(pinned: pq.abc.PGconn, text: str) -> None:
    assert_one_reading(pinned, text)


#: Texts PostgreSQL 15 refuses, first those the PostgreSQL 18 parser in pglast reads (newer
#: numeric literals; a vertical tab is whitespace since PostgreSQL 16), then near misses of the
#: corpus.  The server parses the whole query string before it runs any of it, so where the
#: two parsers differ the difference can only turn into an error, never into a statement the
#: proxy did not see.
_SERVER_REFUSES = {
    "hex-integer": "SELECT 0x1F",
    "octal-integer": "SELECT 0o17",
    "binary-integer": "SELECT 0b101",
    "underscored-integer": "SELECT 1_000",
    "underscored-numeric": "SELECT 1_000.5",
    "vertical-tab-is-not-whitespace": "SELECT 1\v",
    "vertical-tab-between-statements": "SELECT 1;\vSELECT 2",
    "trailing-junk-after-number": "SELECT 1e1x",
    "trailing-junk-after-parameter": "SELECT $1a",
    "unterminated-block-comment": "SELECT 1 /* /* */",
    "unterminated-dollar-quote": "SELECT $a$ ; $A$",
    "unterminated-quoted-identifier": 'SELECT 1 AS "a\\"; SELECT "',
    "comment-between-string-pieces": "SELECT 'a' /* */ 'b'",
    "continuation-without-newline": "SELECT 'a' 'b'",
    "block-comment-is-no-continuation-whitespace": "SELECT 'a'\n/* c */\n'b'",
    "byte-order-mark-is-not-whitespace": "\ufeffSELECT 1",
    "no-break-space-is-not-whitespace": "SELECT\u00a01",
}


@pytest.mark.parametrize("text", list(_SERVER_REFUSES.values()), ids=list(_SERVER_REFUSES))
def test_where_the_parsers_differ_the_server_runs_nothing(
    text: str, pinned: pq.abc.PGconn
) -> None:
    smuggled = "INSERT INTO lex_t VALUES ('ran', 1); " + text
    _command(pinned, "BEGIN")
    try:
        with pytest.raises(ServerError) as refused:
            run_simple(pinned, smuggled)
        assert refused.value.sqlstate == "42601"
        assert refused.value.before == [], "part of the text ran before the error"
        _command(pinned, "ROLLBACK")
        _command(pinned, "BEGIN")
        assert run_simple(pinned, "SELECT count(*) FROM lex_t") == [
            Outcome("SELECT 1", ((b"0",),))]
    finally:
        _command(pinned, "ROLLBACK")


# --------------------------------------------------------------------------- the premise


SMUGGLE = "SELECT '\\', '; INSERT INTO lex_t VALUES ($q$smuggled$q$, 1); SELECT ' -- '"


def test_premise_without_standard_conforming_strings_the_server_reads_other_statements(
    lexdb: str,
) -> None:
    """Why the proxy pins standard_conforming_strings: off, the server runs an INSERT that
    classify reads as part of a string constant."""
    seen = classify(SMUGGLE)
    assert [info.kind for info in seen.statements] == ["select"]
    assert not seen.statements[0].tables
    with psycopg.connect(lexdb, autocommit=True) as conn:
        pgconn = conn.pgconn
        _command(pgconn, "CREATE TEMP TABLE lex_t (v text, n int)")
        _command(pgconn, "SET standard_conforming_strings = on")
        assert [o.tag for o in run_simple(pgconn, SMUGGLE)] == ["SELECT 1"]
        _command(pgconn, "SET standard_conforming_strings = off")
        _command(pgconn, "SET escape_string_warning = off")
        ran = run_simple(pgconn, SMUGGLE)
        assert [o.tag for o in ran] == ["SELECT 1", "INSERT 0 1", "SELECT 1"]
        assert run_simple(pgconn, "SELECT v FROM lex_t") == [
            Outcome("SELECT 1", ((b"smuggled",),))]


def test_premise_in_a_multibyte_encoding_the_server_reads_other_statements(
    lexdb: str,
) -> None:
    """Why the proxy pins client_encoding: in SJIS the bytes 0x83 0x5C are one character (ソ),
    while a reader that does not know SJIS sees a backslash that escapes the next quote."""
    data = b"SELECT E'\x83\\' ; INSERT INTO lex_t VALUES ($q$smuggled$q$, 1) ; SELECT '' -- '"
    seen = classify(data.decode("latin-1"))  # what a byte-oriented reading makes of it
    assert [info.kind for info in seen.statements] == ["select"]
    with psycopg.connect(lexdb, autocommit=True) as conn:
        pgconn = conn.pgconn
        _command(pgconn, "CREATE TEMP TABLE lex_t (v text, n int)")
        _command(pgconn, "SET client_encoding = 'SJIS'")
        ran = run_simple(pgconn, data)
        assert [o.tag for o in ran] == ["SELECT 1", "INSERT 0 1", "SELECT 1"]
        assert ran[0].rows == (("ソ".encode("shift_jis"),),)
        _command(pgconn, "SET client_encoding = 'UTF8'")
        assert run_simple(pgconn, "SELECT v FROM lex_t") == [
            Outcome("SELECT 1", ((b"smuggled",),))]
        # with UTF8, the bytes are refused outright: 0x83 cannot start a UTF-8 character
        with pytest.raises(ServerError) as refused:
            run_simple(pgconn, data)
        assert refused.value.sqlstate == "22021"


# --------------------------------------------------------------------------- through the proxy


def _client_encodings(db: Database) -> tuple[list[str], set[str]]:
    """Every encoding name (canonical and alias) the server accepts as a client encoding, by
    SET on a direct connection, and which of them are UTF8 to the server."""
    canonical = [row[0] for row in db.execute(
        "SELECT pg_encoding_to_char(i) FROM generate_series(0, 63) AS i "
        "WHERE pg_encoding_to_char(i) <> '' ORDER BY i")]
    # aliases from PostgreSQL's encoding name table, and spellings it normalizes (it drops
    # every character that is not a letter or digit and ignores case)
    aliases = ["shiftjis", "Shift_JIS", "mskanji", "win932", "windows932", "S.JIS", " sjis ",
               "big5", "win950", "windows950", "win936", "windows936", "gb-18030", "win949",
               "uhc", "johab", "iso88591", "Latin-1", "koi8", "alt", "tcvn", "vscii", "abc",
               "euc-jp", "eucjis2004", "shiftjis2004", "sql-ascii", "mule_internal",
               "unicode", "utf-8", "Utf_8", "u.t.f.8", "UTF8"]
    accepted: list[str] = []
    utf8: set[str] = set()
    pgconn = pq.PGconn.connect(db.dsn.encode())  # libpq itself: no client-side codec needed
    try:
        assert pgconn.status == pq.ConnStatus.OK
        for name in [*canonical, *aliases]:
            literal = "'" + name.replace("'", "''") + "'"
            result = pgconn.exec_(f"SET client_encoding TO {literal}".encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                continue
            accepted.append(name)
            if _show(pgconn, "client_encoding") == "UTF8":
                utf8.add(name)
            _command(pgconn, "RESET client_encoding")
    finally:
        pgconn.finish()
    return accepted, utf8


def test_proxy_refuses_every_other_client_encoding_by_every_route(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    accepted, utf8 = _client_encodings(applied_clinic)
    assert {"SJIS", "BIG5", "GBK", "GB18030", "UHC", "JOHAB", "LATIN1", "SQL_ASCII",
            "EUC_JP", "UTF8", "Shift_JIS", "u.t.f.8"} <= set(accepted), accepted
    refused: list[str] = []
    problems: list[str] = []
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        assert conn.info.encoding == "utf-8"
        for name in accepted:
            literal = "'" + name.replace("'", "''") + "'"
            routes = [f"SET client_encoding TO {literal}", f"SET NAMES {literal}",
                      f"SET SESSION client_encoding = {literal.lower()}",
                      f"SELECT set_config('client_encoding', {literal}, false)"]
            if name.replace("_", "").isalnum():
                routes.append(f'SET client_encoding = "{name}"')
            for route in routes:
                try:
                    conn.execute(route)
                except psycopg.errors.InsufficientPrivilege:
                    refused.append(route)
                else:
                    if name not in utf8:
                        problems.append(f"{route}: accepted")
                show = conn.execute("SHOW client_encoding").fetchone()
                if show != ("UTF8",):
                    problems.append(f"{route}: SHOW client_encoding says {show}")
            # inside a transaction block too, with SET LOCAL
            conn.execute("BEGIN")
            try:
                conn.execute(f"SET LOCAL client_encoding TO {literal}")
            except psycopg.errors.InsufficientPrivilege:
                pass
            else:
                if name not in utf8:
                    problems.append(f"SET LOCAL {name}: accepted")
            conn.execute("ROLLBACK")
        # the canonical UTF8 spellings the proxy documents are accepted, not just tolerated
        for route in ("SET client_encoding TO 'UTF8'", "SET NAMES 'UTF8'",
                      "SET client_encoding = 'utf8'", "SET client_encoding = DEFAULT",
                      "RESET client_encoding", "SET NAMES DEFAULT"):
            conn.execute(route)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        # the session still reads and writes multibyte text as UTF-8
        assert conn.execute("SELECT 'ソ表𝄞' || %s", ("功",)).fetchone() == ("ソ表𝄞功",)
    assert not problems, problems
    # every encoding PostgreSQL 15 knows but MULE_INTERNAL (no conversion from UTF8), and
    # the aliases: each was tried by every route above, and each attempt was refused
    non_utf8 = [name for name in accepted if name not in utf8]
    assert len(non_utf8) >= 60
    assert len(refused) >= 4 * len(non_utf8)


LOGIN_SAMPLE = ("SJIS", "BIG5", "GBK", "GB18030", "LATIN1", "SQL_ASCII", "EUC_JP")


def test_proxy_refuses_other_client_encodings_at_login(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    for name in LOGIN_SAMPLE:
        with pytest.raises(psycopg.OperationalError, match="pinned to UTF8"):
            psycopg.connect(proxy.dsn(), options=f"-c client_encoding={name}")
        with pytest.raises(psycopg.OperationalError, match="only client_encoding UTF8"):
            psycopg.connect(proxy.dsn(), client_encoding=name)
    # what reached the proxy: each attempt is a refused session, for its encoding
    refusals = wait_for(lambda: (rows := applied_clinic.execute(
        "SELECT count(*) FROM audit.sessions WHERE outcome = 'refused' "
        "AND reason = 'bad_encoding'"))[0][0] >= 2 * len(LOGIN_SAMPLE) and rows)
    assert refusals[0][0] == 2 * len(LOGIN_SAMPLE)
    # UTF8 by either route logs in, and the session is UTF8
    for extra in (" options='-c client_encoding=UTF8'", " client_encoding=utf8"):
        with psycopg.connect(proxy.dsn() + extra, autocommit=True) as conn:
            assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)


def test_bytes_that_are_not_utf8_never_run_through_the_proxy(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    """The SJIS smuggle sent anyway, as raw bytes on a UTF8 session: refused, nothing runs."""
    claims = "SELECT count(*) FROM public.claims WHERE status = 'hijacked'"
    update = b" ; UPDATE claims SET status = 'hijacked' WHERE id > 0"
    attacks = [
        b"SELECT E'\x83\\'" + update + b" ; SELECT '' -- '",  # SJIS: 83 5C is one character
        b"SELECT '\x95\\'" + update + b" ; SELECT '' -- '",
        b"SELECT 1" + update + b" ; SELECT '\xa5\\'",  # BIG5: A5 5C
        b"SELECT '\xc0\xa7'" + update,  # an overlong encoding of a quote
        b"SELECT '\xed\xa0\x80'" + update,  # a UTF-16 surrogate
        b"SELECT '\xf8\x88\x80\x80\x80'" + update,  # a five-byte sequence
    ]
    for attack in attacks:
        with proxy.connect("agent-7", "billing", clinic_id=1) as conn, \
                pytest.raises(psycopg.Error):
            conn.execute(attack)
        assert applied_clinic.execute(claims) == [(0,)]
    # a UTF8 session is still served afterwards, and the payload does run when it is
    # readable, so the checks above could have failed
    with proxy.connect("agent-7", "billing", clinic_id=1) as conn:
        assert conn.execute("SELECT 'ソ'").fetchone() == ("ソ",)
        conn.execute("SELECT 'ソ' ; UPDATE claims SET status = 'hijacked' WHERE id > 0")
    assert wait_for(lambda: applied_clinic.execute(claims)[0][0] > 0)
