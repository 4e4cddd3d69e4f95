"""The vetted registry of pg_catalog functions and catalog relations (issue #11, class 2).

The registry is an allow-list: the proxy refuses any function name it does not classify, so
these tests hold it to the running server — every function and catalog relation of the server
is judged, none is judged looser than its volatility allows without a stated reason, and no
allowed catalog view calls a function an agent may not call.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pglast.parser import parse_sql_json

from conftest import ROOT, Database
from policyc.errors import PolicycError
from policyc.proxy.judge.registry import (
    AGENT_CALLABLE,
    PROPOSED_MARK,
    STRICTNESS,
    SUPPORTED_MAJORS,
    FunctionClass,
    Registry,
    RegistryError,
    load_registry,
    parse_functions,
    parse_relations,
    registry_for_server_version,
    stricter,
)
from policyc.proxy.judge.registry.rules import (
    ALWAYS_BLOCKED,
    FUNCTION_RULES,
    SHAPE_TEXTS,
    TRANSACTION_SAFE,
    function_risks,
    parse_function_rules,
    parse_shapes,
)
from policyc.vocab import APPROVABLE_SHAPES, Shape

F = FunctionClass

#: VOLATILE functions an agent may call anyway, each with the reason. Anything else VOLATILE
#: classed pure, session or catalog is a mis-classification.
VOLATILE_YET_CALLABLE: dict[str, str] = {
    # pure for our purpose: the clock or a random source, nothing else
    "random": "random source",
    "gen_random_uuid": "random source",
    "clock_timestamp": "the clock",
    "timeofday": "the clock",
    # the caller's own session
    "current_query": "the session's own statement text",
    "currval": "the session's own last nextval",
    "lastval": "the session's own last nextval",
    "pg_advisory_unlock_all": "releases the session's own advisory locks (asyncpg pools)",
    "pg_is_in_recovery": "primary or standby, asked by drivers (target_session_attrs)",
    "pg_jit_available": "a session property",
    # catalog reads, volatile only because they ask the OS library or walk pg_inherits
    "pg_collation_actual_version": "collation library version",
    "pg_database_collation_actual_version": "collation library version",
    "pg_partition_ancestors": "reads pg_inherits",
    "pg_partition_tree": "reads pg_inherits",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(15)


@pytest.fixture
def server(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a fresh database with the procedural languages apply installs."""
    with db.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        yield conn


def _server_registry(conn: psycopg.Connection[Any]) -> Registry:
    return registry_for_server_version(conn.info.server_version)


def _function_names(conn: psycopg.Connection[Any], where: str = "true") -> set[str]:
    sql = ("SELECT DISTINCT proname FROM pg_proc "
           "WHERE pronamespace = 'pg_catalog'::regnamespace AND " + where)
    return {str(name) for (name,) in conn.execute(sql.encode())}


def _catalog_relations(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('pg_catalog', 'information_schema')"
        " AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
    )
    return {(str(s), str(n)) for s, n in rows}


# ----------------------------------------------------------------------------- against the server


def test_every_server_function_is_classified(server: psycopg.Connection[Any]) -> None:
    registry = _server_registry(server)
    missing = sorted(_function_names(server) - set(registry.functions))
    assert not missing, (
        f"pg_catalog functions the PostgreSQL {registry.major} registry does not classify "
        f"(run scripts/function_registry.py --write, then review): {', '.join(missing)}"
    )


def test_every_classified_function_exists(server: psycopg.Connection[Any]) -> None:
    """A name the server does not have is a typo or a stale line (judged nothing)."""
    registry = _server_registry(server)
    stale = sorted(set(registry.functions) - _function_names(server))
    assert not stale, f"registry names pg_catalog does not have: {', '.join(stale)}"


def test_every_catalog_relation_is_judged(server: psycopg.Connection[Any]) -> None:
    registry = _server_registry(server)
    relations = _catalog_relations(server)
    missing = sorted(f"{s}.{n}" for s, n in relations - set(registry.relations))
    assert not missing, f"catalog relations the registry does not judge: {', '.join(missing)}"
    stale = sorted(f"{s}.{n}" for s, n in set(registry.relations) - relations)
    assert not stale, f"registry relations the server does not have: {', '.join(stale)}"
    assert registry.catalog_names == {n for s, n in relations if s == "pg_catalog"}


def test_no_volatile_function_is_callable_without_a_reason(
    server: psycopg.Connection[Any],
) -> None:
    """Catches a bulk mis-classification: VOLATILE means side effects unless a reason says not."""
    registry = _server_registry(server)
    volatile = _function_names(server, "provolatile = 'v'")
    loose = sorted(n for n in volatile
                   if registry.functions[n] in AGENT_CALLABLE and n not in VOLATILE_YET_CALLABLE)
    assert not loose, f"VOLATILE yet agent-callable without a stated reason: {', '.join(loose)}"
    pure_volatile = {n for n in volatile if registry.functions[n] is F.PURE}
    assert pure_volatile == {"random", "gen_random_uuid", "clock_timestamp", "timeofday"}
    # the exception list itself stays honest: each is volatile and still callable
    for name in VOLATILE_YET_CALLABLE:
        assert name in volatile, f"{name} is no longer VOLATILE: drop the exception"
        assert registry.functions[name] in AGENT_CALLABLE


def test_uncallable_types_are_internal(server: psycopg.Connection[Any]) -> None:
    """Type I/O, handlers and triggers: no agent SQL calls them, whatever their volatility."""
    registry = _server_registry(server)
    names = _function_names(server, """(
        prorettype IN ('internal'::regtype, 'trigger'::regtype, 'event_trigger'::regtype,
                       'language_handler'::regtype, 'fdw_handler'::regtype,
                       'index_am_handler'::regtype, 'table_am_handler'::regtype,
                       'tsm_handler'::regtype, 'cstring'::regtype)
        OR 'internal'::regtype = ANY (proargtypes::oid[])
        OR 'cstring'::regtype = ANY (proargtypes::oid[])
        OR oid IN (SELECT typsend FROM pg_type UNION SELECT typreceive FROM pg_type))""")
    wrong = sorted(n for n in names if registry.functions[n] is not F.INTERNAL)
    assert not wrong, f"type I/O, handler or trigger functions not internal: {', '.join(wrong)}"


def _called_functions(node: Any) -> Iterator[list[str]]:
    """The name parts of every function call in a pglast JSON tree."""
    if isinstance(node, dict):
        call = node.get("FuncCall")
        if isinstance(call, dict):
            yield [part["String"]["sval"] for part in call.get("funcname", [])]
        for value in node.values():
            yield from _called_functions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _called_functions(item)


def test_allowed_catalog_views_call_only_callable_functions(
    server: psycopg.Connection[Any],
) -> None:
    """An allowed view wrapping an activity function (as pg_stat_activity wraps
    pg_stat_get_activity) would hand agents what the function list refuses."""
    registry = _server_registry(server)
    server.execute("SET search_path = pg_catalog")
    views = server.execute(
        "SELECT n.nspname, c.relname, pg_get_viewdef(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.relkind = 'v'"
    ).fetchall()
    assert len(views) > 100
    offenders = []
    seen: set[str] = set()
    for schema, name, definition in views:
        if not registry.relation_allowed(schema, name):
            continue
        tree = json.loads(parse_sql_json(f"SELECT * FROM ({definition.rstrip(';')}) AS v"))
        for parts in _called_functions(tree):
            seen.add(parts[-1])
            if len(parts) == 2 and parts[0] == "information_schema":
                continue  # information_schema's own SQL helpers over the catalog
            cls = registry.function_class(parts[-1])
            if cls is None or cls not in AGENT_CALLABLE:
                offenders.append(f"{schema}.{name} calls {'.'.join(parts)} ({cls})")
    assert not offenders, "\n".join(sorted(set(offenders)))
    # the walk sees calls (pg_indexes, pg_settings, information_schema.columns make some)
    assert {"pg_get_indexdef", "pg_show_all_settings", "format_type"} <= seen


def test_allowed_relations_are_readable_by_a_plain_role(db: Database) -> None:
    """What the registry allows must work for a group-like role (no privileges of its own);
    what it refuses for secrets really is secret on the server side too."""
    with db.connect() as admin:
        admin.execute("CREATE ROLE registry_agent LOGIN NOINHERIT")
    registry = load_registry(15)
    unreadable = []
    with db.connect("registry_agent") as conn:
        for (schema, name), allowed in sorted(registry.relations.items()):
            if not allowed:
                continue
            query = psycopg.sql.SQL("SELECT * FROM {}.{} LIMIT 1").format(
                psycopg.sql.Identifier(schema), psycopg.sql.Identifier(name))
            try:
                conn.execute(query).fetchall()
            except psycopg.errors.InsufficientPrivilege:
                unreadable.append(f"{schema}.{name}")
        assert not unreadable, f"allowed, yet not readable by a plain role: {unreadable}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pg_catalog.pg_authid")


def test_sql_text_functions_do_run_their_text(db: Database, registry: Registry) -> None:
    """Why ts_stat and query_to_xml are sql_text: the server runs the text as a query — the
    issue's attack (a function name no deny-list knew, running SQL given as text)."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE secret (v text); INSERT INTO secret VALUES ('alpha beta')")
        words = {row[0] for row in conn.execute(
            "SELECT word FROM ts_stat('SELECT to_tsvector(''simple'', v) FROM secret')")}
        assert words == {"alpha", "beta"}
        (xml,) = conn.execute("SELECT query_to_xml('SELECT v FROM secret', true, false, '')"
                              ).fetchone() or ("",)
        assert "alpha beta" in xml
        (rewritten,) = conn.execute(
            "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery "
            "FROM secret')").fetchone() or ("",)
        assert rewritten == "'b'"
    for name in ("ts_stat", "query_to_xml", "ts_rewrite"):
        assert registry.function_class(name) is F.SQL_TEXT


# ----------------------------------------------------------------------------- spot checks


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("ts_stat", "ts_rewrite", "query_to_xml", "query_to_xmlschema", "cursor_to_xml",
          "table_to_xml", "schema_to_xml", "database_to_xml", "database_to_xml_and_xmlschema",
          "currtid2"), F.SQL_TEXT),
        (("pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
          "pg_promote", "pg_switch_wal", "pg_log_backend_memory_contexts",
          "pg_create_logical_replication_slot", "pg_drop_replication_slot",
          "pg_replication_origin_create", "pg_logical_emit_message",
          "pg_import_system_collations", "pg_backup_start"), F.ADMIN),
        (("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
          "lo_export", "pg_current_logfile", "pg_hba_file_rules"), F.FILE_NETWORK),
        (("pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_lock_status",
          "pg_blocking_pids", "pg_relation_size", "pg_total_relation_size", "pg_table_size",
          "pg_database_size", "pg_current_snapshot", "txid_current_snapshot", "pg_snapshot_xip",
          "pg_get_backend_memory_contexts", "pg_sequence_last_value"), F.ACTIVITY),
        (("set_config", "nextval", "setval", "pg_advisory_lock", "pg_try_advisory_lock",
          "pg_advisory_xact_lock", "pg_notify", "pg_sleep", "pg_sleep_for", "pg_export_snapshot",
          "lo_creat", "loread", "lowrite", "pg_stat_reset"), F.SIDE_EFFECT),
        (("lower", "now", "count", "sum", "string_agg", "jsonb_agg", "jsonb_build_object",
          "random", "clock_timestamp", "xpath", "to_char", "row_number", "age"), F.PURE),
        (("current_setting", "pg_backend_pid", "current_schemas", "txid_current",
          "pg_my_temp_schema", "inet_client_addr", "version", "current_user"), F.SESSION),
        (("has_table_privilege", "pg_get_viewdef", "format_type", "pg_table_is_visible",
          "obj_description", "pg_get_constraintdef", "pg_get_expr", "col_description",
          "pg_get_keywords", "to_regclass", "pg_get_serial_sequence", "pg_get_indexdef"),
         F.CATALOG),
        (("int4in", "textout", "int4recv", "int4send", "RI_FKey_cascade_del", "bthandler",
          "plpgsql_call_handler", "plpython3_call_handler", "tsvector_update_trigger",
          "pg_event_trigger_ddl_commands", "array_agg_transfn"), F.INTERNAL),
    ],
)
def test_spot_checks(registry: Registry, names: tuple[str, ...], expected: FunctionClass) -> None:
    wrong = {n: registry.function_class(n) for n in names if registry.function_class(n) != expected}
    assert not wrong, f"expected {expected}: {wrong}"


def test_agent_callable(registry: Registry) -> None:
    assert frozenset({F.PURE, F.SESSION, F.CATALOG}) == AGENT_CALLABLE
    assert registry.agent_callable("lower")
    assert not registry.agent_callable("ts_stat")
    assert not registry.agent_callable("no_such_function")


def test_names_are_exact(registry: Registry) -> None:
    """No case folding: the server would resolve a quoted "LOWER" elsewhere, if anywhere."""
    assert registry.function_class("LOWER") is None
    assert registry.function_class("ri_fkey_cascade_del") is None
    assert registry.function_class("RI_FKey_cascade_del") is F.INTERNAL
    assert registry.function_class("no_such_function") is None


@pytest.mark.parametrize(
    ("schema", "name", "expected"),
    [
        ("pg_catalog", "pg_stat_activity", False),
        ("pg_catalog", "pg_locks", False),
        ("pg_catalog", "pg_stats", False),
        ("pg_catalog", "pg_stats_ext", False),
        ("pg_catalog", "pg_statistic", False),
        ("pg_catalog", "pg_policy", False),
        ("pg_catalog", "pg_policies", False),
        ("pg_catalog", "pg_authid", False),
        ("pg_catalog", "pg_prepared_xacts", False),
        ("pg_catalog", "pg_statio_user_tables", False),
        ("pg_catalog", "pg_user_mappings", False),
        ("pg_catalog", "pg_largeobject", False),
        ("pg_catalog", "pg_sequences", False),
        ("pg_catalog", "pg_class", True),
        ("pg_catalog", "pg_attribute", True),
        ("pg_catalog", "pg_namespace", True),
        ("pg_catalog", "pg_type", True),
        ("pg_catalog", "pg_range", True),
        ("pg_catalog", "pg_settings", True),
        ("pg_catalog", "pg_cursors", True),
        ("pg_catalog", "pg_prepared_statements", True),
        ("pg_catalog", "pg_timezone_names", True),
        ("information_schema", "columns", True),
        ("information_schema", "tables", True),
        ("information_schema", "user_mappings", False),
        ("public", "pg_class", None),
        ("pg_catalog", "no_such_relation", None),
    ],
)
def test_relation_spot_checks(registry: Registry, schema: str, name: str,
                              expected: bool | None) -> None:
    assert registry.relation_allowed(schema, name) is expected


# ----------------------------------------------------------------------------- loading


def test_unsupported_major_raises() -> None:
    assert SUPPORTED_MAJORS == (15,)
    with pytest.raises(RegistryError, match="PostgreSQL 14 is not supported"):
        load_registry(14)
    with pytest.raises(RegistryError):
        registry_for_server_version(160002)
    with pytest.raises(RegistryError):
        registry_for_server_version(90624)
    assert registry_for_server_version(150004) is load_registry(15)
    assert issubclass(RegistryError, PolicycError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lower\tpure\n\nupper\tbogus\tx\n", "f.tsv:3: unknown class 'bogus'"),
        ("# header\nlower pure\n", "f.tsv:2: expected name<TAB>class<TAB>why"),
        ("lower\tpure\nlower\tpure\n", "f.tsv:2: lower is listed twice"),
        (f"lower\tpure\tnew  {PROPOSED_MARK}\n", "f.tsv:1: unreviewed proposal"),
        ("lower\tpure\ta\tb\n", "f.tsv:1: expected"),
    ],
)
def test_malformed_function_lines_raise_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_functions(text, "f.tsv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pg_catalog\tpg_class\tyes\n", "r.tsv:1: expected allowed or refused"),
        ("pg_catalog\tpg_class\n", "r.tsv:1: expected schema"),
        ("pg_catalog\tpg_class\tallowed\nx\ny\n", "r.tsv:2: expected schema"),
        ("pg_catalog\tpg_class\tallowed\npg_catalog\tpg_class\trefused\n", "listed twice"),
    ],
)
def test_malformed_relation_lines_raise(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_relations(text, "r.tsv")


def test_data_files_are_sorted_and_documented() -> None:
    folder = ROOT / "engine" / "policyc" / "proxy" / "judge" / "registry"
    for major in SUPPORTED_MAJORS:
        for kind in ("functions", "relations"):
            lines = (folder / f"pg{major}_{kind}.tsv").read_text().splitlines()
            assert lines[0].startswith(f"# PostgreSQL {major}:")
            entries = [ln.split("\t")[:2] for ln in lines if ln and not ln.startswith("#")]
            assert entries == sorted(entries), f"pg{major}_{kind}.tsv is not sorted"


def test_strictness_order() -> None:
    assert STRICTNESS[0] is F.PURE
    assert set(STRICTNESS) == set(FunctionClass)
    assert stricter(F.PURE, F.ADMIN) is F.ADMIN
    assert stricter(F.SQL_TEXT, F.CATALOG) is F.SQL_TEXT
    assert all(STRICTNESS.index(c) < STRICTNESS.index(F.ACTIVITY) for c in AGENT_CALLABLE)


def test_maintenance_script_check_passes(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/function_registry.py --check agrees with the tests (exit 0 on this server)."""
    spec = importlib.util.spec_from_file_location(
        "function_registry", ROOT / "scripts" / "function_registry.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "function_registry", script)  # dataclasses look it up
    spec.loader.exec_module(script)
    with db.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    assert script.main(["--dsn", db.dsn, "--check"]) == 0
    # and proposes by rules the way the reviewed file decided for the dangerous names
    overloads = [script.Overload("ts_stat", "v", "f", "record", ("text",), None),
                 script.Overload("int4in", "i", "f", "integer", ("cstring",), None),
                 script.Overload("brand_new_stable", "s", "f", "text", ("text",), None),
                 script.Overload("brand_new_volatile", "v", "f", "void", (), None)]
    proposed = script.propose_functions(overloads)
    assert proposed["ts_stat"][0] is F.SQL_TEXT
    assert proposed["int4in"][0] is F.INTERNAL
    assert proposed["brand_new_stable"][0] not in AGENT_CALLABLE
    assert proposed["brand_new_volatile"][0] is F.SIDE_EFFECT


# ----------------------------------------------------------------------------- shapes and rules


def test_every_shape_has_one_line_and_approvable_ones_are_never_blocked() -> None:
    assert set(SHAPE_TEXTS) == set(Shape)
    blocked = [shape for shape, _ in ALWAYS_BLOCKED]
    assert len(blocked) == len(set(blocked))
    assert not set(blocked) & set(APPROVABLE_SHAPES)
    assert Shape.SLEEP not in blocked  # pg_sleep is recorded, not refused
    assert all(reason.endswith(("not allowed", "own text")) for _, reason in ALWAYS_BLOCKED)


def test_transaction_safe_functions_are_pure_in_every_registry() -> None:
    for major in SUPPORTED_MAJORS:
        functions = load_registry(major).functions
        wrong = sorted(n for n in TRANSACTION_SAFE if functions.get(n) is not F.PURE)
        assert not wrong, f"transaction_safe but not pure in PostgreSQL {major}: {wrong}"


def test_functions_with_a_risky_shape_are_never_agent_callable() -> None:
    for major in SUPPORTED_MAJORS:
        registry = load_registry(major)
        risky = [name for name in registry.functions if function_risks(name)]
        assert risky and not [n for n in risky if registry.agent_callable(n)]
        # an exact line may name a function of an older major (pg_start_backup)
        assert set(FUNCTION_RULES.exact) - set(registry.functions) <= {
            "pg_logdir_ls", "pg_start_backup", "pg_stop_backup"}


def test_function_rules_exact_names_first_then_patterns_in_order() -> None:
    rules = parse_function_rules(
        "lo_import\tfile_access,large_object\nlo_*\tlarge_object\n"
        "pg_create_*_slot\tsystem_admin\nnow\ttransaction_safe\n", "r.tsv")
    assert rules.risks("lo_import") == {Shape.FILE_ACCESS, Shape.LARGE_OBJECT}
    assert rules.risks("lo_creat") == {Shape.LARGE_OBJECT}
    assert rules.risks("pg_create_logical_replication_slot") == {Shape.SYSTEM_ADMIN}
    assert rules.risks("pg_create_other") == frozenset()
    assert rules.risks("now") == frozenset() and rules.transaction_safe == {"now"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x\tbogus_shape\n", "r.tsv:1: unknown shape"),
        ("x\tlock\nx\tlock\n", "r.tsv:2: x is listed twice"),
        ("x*\ttransaction_safe\n", "r.tsv:1: only exact names"),
        ("a*b*\tlock\n", "r.tsv:1: expected"),
        ("x\tlock\tmore\n", "r.tsv:1: expected"),
    ],
)
def test_malformed_function_rules_raise(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_function_rules(text, "r.tsv")


def test_shapes_file_must_list_every_shape_once_and_block_no_approvable_one() -> None:
    every = "".join(f"{shape}\tjudged\tx\n" for shape in Shape)
    assert parse_shapes(every, "s.tsv")[0] == ()
    with pytest.raises(RegistryError, match="shapes not listed: sleep"):
        parse_shapes(every.replace("sleep\tjudged\tx\n", ""), "s.tsv")
    with pytest.raises(RegistryError, match=r"s\.tsv:1: ddl is approvable, never blocked"):
        parse_shapes("ddl\tblocked\tno\n" + every, "s.tsv")
    with pytest.raises(RegistryError, match="is listed twice"):
        parse_shapes(every + "ddl\tjudged\tx\n", "s.tsv")
    with pytest.raises(RegistryError, match="unknown shape"):
        parse_shapes("nope\tjudged\tx\n", "s.tsv")
