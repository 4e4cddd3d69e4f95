"""The classifier on its own: statement splitting, names, columns, limits, errors, the cache.

Policy verdicts and the data-driven cases live in test_verdict.py.
"""

from __future__ import annotations

import pglast.parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyc.policy.model import TableName
from policyc.proxy.judge import classify as classify_module
from policyc.proxy.judge.cache import ClassifierCache
from policyc.proxy.judge.classify import classify
from policyc.proxy.judge.fingerprint import fingerprint, normalize, text_fingerprint
from policyc.proxy.judge.registry.rules import function_risks
from policyc.proxy.judge.statement import ANY_TABLE, RISKY, Classification, StatementInfo


def one(sql: str) -> StatementInfo:
    result = classify(sql)
    assert result.error is None, result.error
    assert len(result.statements) == 1
    return result.statements[0]


# --------------------------------------------------------------------------- statements


def test_multi_statement_texts_are_sliced_per_statement() -> None:
    result = classify("SELECT 'é日本' ; select 2;\n  INSERT INTO t VALUES ('Ω') ;  ")
    assert result.error is None
    assert [s.text for s in result.statements] == [
        "SELECT 'é日本'",
        "select 2",
        "INSERT INTO t VALUES ('Ω')",
    ]
    assert [s.kind for s in result.statements] == ["select", "select", "insert"]


def test_semicolons_inside_literals_and_comments_do_not_split() -> None:
    result = classify("SELECT ';' /* ; */, $q$;$q$ -- ;\n; SELECT 2")
    assert [s.text.split()[0] for s in result.statements] == ["SELECT", "SELECT"]
    assert len(result.statements) == 2


@pytest.mark.parametrize("sql", ["", "   \n\t", "-- nothing", "/* nothing */", ";", " ; ; "])
def test_empty_sql_has_no_statements_and_no_error(sql: str) -> None:
    result = classify(sql)
    assert result == Classification()
    assert result.ok


def test_tables_keep_schema_as_written_and_unqualified_as_empty() -> None:
    info = one("SELECT * FROM public.patients p JOIN visits v ON v.pid = p.id, other.x")
    assert info.tables == {
        TableName("public", "patients"),
        TableName("", "visits"),
        TableName("other", "x"),
    }


def test_columns_resolve_aliases_and_fall_back_to_any_table() -> None:
    info = one(
        "SELECT p.ssn, v.*, name, s.col, public.patients.email, *"
        " FROM public.patients p JOIN visits v USING (pid), (SELECT 1 AS col) s"
    )
    patients, visits = TableName("public", "patients"), TableName("", "visits")
    assert info.columns == {
        (patients, "ssn"),
        (visits, "*"),
        (ANY_TABLE, "name"),
        (ANY_TABLE, "col"),  # s is a subquery alias: could be anything
        (patients, "email"),
        (ANY_TABLE, "*"),
        (ANY_TABLE, "pid"),  # USING column
    }


def test_whole_row_reference_counts_as_star() -> None:
    info = one("SELECT to_jsonb(p) FROM patients AS p")
    assert (TableName("", "patients"), "*") in info.columns


def test_copy_columns_and_tables() -> None:
    info = one("COPY public.visits (id, notes) TO STDOUT")
    visits = TableName("public", "visits")
    assert info.columns == {(visits, "id"), (visits, "notes")}
    assert one("COPY visits TO STDOUT").columns == {(TableName("", "visits"), "*")}
    assert one("COPY visits FROM STDIN").columns == frozenset()


def test_functions_are_recorded_by_lowercase_last_name() -> None:
    info = one("SELECT PG_CATALOG.Upper(x), myschema.PG_SLEEP(1), count(*) FROM t")
    assert info.functions == {"upper", "pg_sleep", "count"}
    assert info.risky == {"sleep"}


def test_function_risks_by_name_and_prefix() -> None:
    assert function_risks("lo_creat") == {"large_object"}
    assert function_risks("dblink_connect_u") == {"dblink"}
    assert function_risks("pg_ls_waldir") == {"file_access"}
    assert function_risks("pg_create_physical_replication_slot") == {"system_admin"}
    assert function_risks("pg_create_something_else") == frozenset()
    assert function_risks("lower") == frozenset()
    assert function_risks("set_config") == frozenset()  # judged by its arguments
    for name in ("pg_read_file", "pg_terminate_backend", "query_to_xml"):
        assert function_risks(name) <= RISKY and function_risks(name)


def test_setting_and_name_fields() -> None:
    assert one("SET LOCAL Statement_Timeout = 5").setting == "statement_timeout"
    assert one("SHOW ALL").setting == "all"
    assert one("RESET ALL").setting == "all"
    assert one("SET TRANSACTION READ ONLY").setting == "transaction"
    assert one("PREPARE q AS SELECT 1").name == "q"
    assert one("EXECUTE q").name == "q"
    assert one("DEALLOCATE q").name == "q"
    assert one("DEALLOCATE ALL").name is None
    assert one("DECLARE c CURSOR FOR SELECT 1").name == "c"
    assert one("FETCH c").name == "c"
    assert one("CLOSE c").name == "c"


def test_ctes_are_listed_and_excluded_from_tables_without_ctes() -> None:
    info = one("WITH d AS (SELECT * FROM t) SELECT * FROM d")
    assert info.ctes == {"d"}
    assert info.tables == {TableName("", "t"), TableName("", "d")}
    assert info.tables_without_ctes == {TableName("", "t")}


def test_prepared_statement_carries_its_query_risks() -> None:
    assert one("PREPARE p AS UPDATE t SET a = 1").risky == {"update_all"}
    assert one("PREPARE p AS SELECT pg_read_file('x')").risky == {"file_access"}


def test_explain_analyze_option_spellings() -> None:
    for sql in (
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        "EXPLAIN (ANALYZE) DELETE FROM t WHERE id = 1",
        "EXPLAIN (analyze on) DELETE FROM t WHERE id = 1",
        "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1",
        "EXPLAIN (ANALYZE yes) DELETE FROM t WHERE id = 1",
    ):
        assert one(sql).risky == {"explain_analyze_write"}, sql
    for sql in (
        "EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1",
        "EXPLAIN (ANALYZE no) DELETE FROM t WHERE id = 1",
        "EXPLAIN (VERBOSE) DELETE FROM t WHERE id = 1",
    ):
        assert one(sql).risky == frozenset(), sql


def test_statement_info_is_frozen_and_hashable() -> None:
    info = one("SELECT 1")
    with pytest.raises(AttributeError):
        info.kind = "ddl"  # type: ignore[misc]
    assert hash(info) == hash(one("SELECT 1"))


# --------------------------------------------------------------------------- refusals


def test_parse_error_names_the_problem_and_position() -> None:
    result = classify("SELECT 1; SELEC 2")
    assert result.statements == ()
    assert result.error == 'could not parse SQL: syntax error at or near "SELEC" at character 10'
    assert result.error_sqlstate == "42601"
    assert not result.ok


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 '123-45-6789'",
        "SELECT 'ok' $$123-45-6789$$",
        "SELECT 'Jane Doe",
        'SELECT "Jane Doe',
        "SELECT 1 4111111111111111",
    ],
)
def test_parse_errors_never_echo_literals(sql: str) -> None:
    result = classify(sql)
    assert result.error is not None
    for fragment in ("123-45-6789", "Jane", "4111111111111111"):
        assert fragment not in result.error
    assert "at character" in result.error


def test_two_megabyte_statement_is_refused_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(sql: str) -> str:
        raise AssertionError("must not parse")

    monkeypatch.setattr(pglast.parser, "parse_sql_json", boom)
    sql = "SELECT '" + "x" * (2 * 1024 * 1024) + "'"
    result = classify(sql)
    assert result.statements == ()
    assert result.error == f"statement of {len(sql)} bytes exceeds the limit of 1000000"
    assert result.error_sqlstate == "54000"


def test_limit_counts_utf8_bytes_not_characters() -> None:
    sql = "SELECT '" + "é" * 600 + "'"  # 609 characters, 1209 bytes
    assert classify(sql, max_length=1000).error == (
        "statement of 1209 bytes exceeds the limit of 1000"
    )
    assert classify(sql, max_length=1209).error is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "NOT " * 3000 + "true",
        "SELECT " + "(" * 20000 + "1" + ")" * 20000,
        "SELECT " + " + ".join(["1"] * 100_000),
        "SELECT " + "ARRAY[" * 2000 + "1" + "]" * 2000,
        "SELECT 1 FROM " + "(SELECT 1 FROM " * 2000 + "t" + ") s" * 2000,
    ],
)
def test_deep_nesting_becomes_an_error_not_a_crash(sql: str) -> None:
    result = classify(sql)
    assert result.statements == ()
    assert result.error_sqlstate == "54001"
    assert result.error


def test_nul_character_is_refused() -> None:
    result = classify("SELECT 1\x00; DROP TABLE t")
    assert result.error == "statement contains a NUL character"
    assert result.statements == ()


def test_internal_fault_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> StatementInfo:
        raise KeyError("stmt")

    monkeypatch.setattr(classify_module, "_classify_statement", broken)
    result = classify("SELECT 1")
    assert result.statements == ()
    assert result.error_sqlstate == "XX000"
    assert result.error is not None and "KeyError" in result.error


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_classify_never_raises(sql: str) -> None:
    result = classify(sql)
    assert (result.error is None) or (result.statements == () and result.error_sqlstate)
    for info in result.statements:
        assert info.risky <= RISKY


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "SELECT 1",
                "DELETE FROM t",
                "SET ROLE x",
                "SELECT 'a;b'",
                "COPY t TO STDOUT",
                "BEGIN",
                "SELECT pg_sleep(1)",
            ]
        ),
        min_size=1,
        max_size=6,
    )
)
def test_joined_statements_classify_like_each_alone(parts: list[str]) -> None:
    result = classify("; ".join(parts))
    assert [(s.kind, s.risky, s.text) for s in result.statements] == [
        (one(p).kind, one(p).risky, p) for p in parts
    ]


# --------------------------------------------------------------------------- audit helpers


def test_fingerprint_ignores_literals_but_not_shape() -> None:
    a = fingerprint("SELECT * FROM t WHERE id = 1")
    assert a == fingerprint("select *   from t where id = 42")
    assert a != fingerprint("SELECT * FROM u WHERE id = 1")
    assert fingerprint("SELEC nonsense").startswith("text:")
    assert fingerprint("SELEC nonsense") == fingerprint("SELEC nonsense")
    assert fingerprint("SELEC nonsense") != fingerprint("SELEC other")


def test_unparseable_text_has_one_fingerprint_whoever_asks() -> None:
    """The classifier's and the judge's fallback are one function: lone surrogates are
    hashed as they are, so texts that differ only there never share a key."""
    assert fingerprint("SELEC é") == text_fingerprint("SELEC é")
    assert text_fingerprint("SELEC \udcff") != text_fingerprint("SELEC \udcfe")
    assert text_fingerprint("SELEC \udcff") != text_fingerprint("SELEC ?")


def test_normalize_replaces_literals() -> None:
    normalized = normalize("SELECT * FROM patients WHERE ssn = '123-45-6789'")
    assert normalized is not None and "123-45-6789" not in normalized
    assert "$1" in normalized
    assert normalize("SELEC") is None


# --------------------------------------------------------------------------- cache


def test_cache_returns_the_same_classification_and_counts() -> None:
    cache = ClassifierCache(maxsize=2)
    first = cache.classify("SELECT 1")
    assert cache.classify("SELECT 1") is first
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.classify("SELEC").error is not None  # errors are cached too
    assert cache.classify("SELEC") is cache.classify("SELEC")


def test_cache_is_a_bounded_lru() -> None:
    cache = ClassifierCache(maxsize=2)
    a = cache.classify("SELECT 1")
    cache.classify("SELECT 2")
    cache.classify("SELECT 1")  # refresh: SELECT 2 is now the oldest
    cache.classify("SELECT 3")
    assert len(cache) == 2
    assert cache.classify("SELECT 1") is a
    misses = cache.misses
    cache.classify("SELECT 2")
    assert cache.misses == misses + 1


def test_cache_does_not_pin_long_texts_and_keeps_the_limit() -> None:
    cache = ClassifierCache(max_key_length=10, max_length=50)
    cache.classify("SELECT 1 + 1 + 1")
    assert len(cache) == 0
    assert cache.classify("SELECT '" + "x" * 60 + "'").error_sqlstate == "54000"
    cache.clear()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)
    with pytest.raises(ValueError, match="maxsize"):
        ClassifierCache(maxsize=0)
