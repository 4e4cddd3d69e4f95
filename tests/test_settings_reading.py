"""The proxy reads a list setting's value as the server does (settings.split_identifiers):
set_config('search_path', text, ...) is judged by the schemas the server will search, so the
two readings must agree, for lists that work and for lists the server refuses."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql

from conftest import Database
from policyc.proxy.judge.settings import memory_kb, split_identifiers

LONG = "x" * 70

AGREE = [
    "",
    "   ",
    "a",
    "a, b",
    "  spaced  ,\tTabbed ",
    'MiXeD, "MiXeD", "with space", "q""uote"',
    '"a,b", c',
    LONG,
    f'"{LONG}é"',
    "é,Ü",
    '""',
]
REFUSED = ["a,,b", "a,", ",a", '"unterminated', "a b", 'a "b"']


@pytest.mark.parametrize("text", AGREE)
def test_lists_agree_with_the_server(db: Database, text: str) -> None:
    ours = split_identifiers(text)
    assert ours is not None
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        named = [schema for schema in ours if schema]  # "" names no schema that can exist
        for schema in named:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute("SELECT set_config('search_path', %s, false)", (text,))
        theirs = conn.execute("SELECT current_schemas(false)").fetchone()
    assert theirs is not None and list(theirs[0]) == named


@pytest.mark.parametrize("text", REFUSED)
def test_lists_the_server_refuses_are_refused(db: Database, text: str) -> None:
    assert split_identifiers(text) is None
    with psycopg.connect(db.dsn, autocommit=True) as conn, \
            pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT set_config('search_path', %s, false)", (text,))


@pytest.mark.parametrize("text", ["8MB", "64", " 1GB ", "512kB", "2048 kB", "1TB", "100000B"])
def test_work_mem_sizes_agree_with_the_server(db: Database, text: str) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT set_config('work_mem', %s, false)", (text,))
        except errors.InvalidParameterValue:
            pytest.skip("out of the server's range")  # 1TB: over MAX_KILOBYTES on some builds
        row = conn.execute(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'").fetchone()
    kb = memory_kb(text)
    assert row is not None and kb is not None and round(kb) == row[0]
