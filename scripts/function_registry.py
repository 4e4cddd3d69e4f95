#!/usr/bin/env python3
"""Maintain the vetted registry of pg_catalog functions and catalog relations.

    function_registry.py [--dsn DSN] [--check | --write | --propose]

Connects to a PostgreSQL server (``--dsn``, else the libpq ``PG*`` variables), lists every
function name in ``pg_catalog`` (pg_proc, every prokind) and every relation of ``pg_catalog``
and ``information_schema`` (pg_class relkind r, v, m, p, f), and compares them with
``engine/policyc/proxy/judge/registry/pg<major>_{functions,relations}.tsv``.

--check    exit 1 listing every name the registry lacks (0 when it judges them all)
--propose  print a proposed line for every missing name (the default)
--write    add the proposed lines to the files (creating them for a new major), each marked
           ``# proposed``: the registry refuses to load until a human reviewed every one and
           removed the mark (docs/function-registry.md, "Adding a PostgreSQL major")

Proposals come from rules: the return and argument types (type I/O, handlers, triggers,
``internal``), references from pg_type, pg_language, pg_foreign_data_wrapper and pg_am, name
patterns, a reviewed name table, and the volatility (IMMUTABLE proposes ``pure``, STABLE
``activity`` unless a pattern says otherwise, VOLATILE ``side_effect``). For a new major, a
name already judged in the newest older major's file is proposed with that class, unless the
rules find something stricter among the new server's overloads.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from policyc.proxy.judge.registry import (  # noqa: E402
    PROPOSED_MARK,
    FunctionClass,
    functions_file,
    parse_functions,
    parse_relations,
    relations_file,
    stricter,
)

REGISTRY_DIR = ROOT / "engine" / "policyc" / "proxy" / "judge" / "registry"

F = FunctionClass

FUNCTIONS_HEADER = """\
# PostgreSQL {major}: every function name in pg_catalog (pg_proc, every prokind), one per line:
# name<TAB>class<TAB>why. A name's class is the strictest among its overloads (the proxy sees
# names, not argument types). Classes: pure session catalog activity side_effect sql_text
# file_network admin internal (docs/function-registry.md). Agents may call pure, session and
# catalog functions; a group's `functions:` list adds more. Sorted by name. Maintained with
# scripts/function_registry.py; a line marked "{mark}" is unreviewed and does not load.
"""

RELATIONS_HEADER = """\
# PostgreSQL {major}: every relation (relkind r, v, m, p, f) of pg_catalog and information_schema:
# schema<TAB>name<TAB>allowed|refused<TAB>why. Agents read their group's views and the allowed
# catalog relations (what psql's \\d commands, JDBC metadata, SQLAlchemy reflection, pgcli and
# asyncpg's type introspection read); never other sessions' activity, locks, statistics or
# query text (docs/function-registry.md). Sorted. Maintained with scripts/function_registry.py;
# a line marked "{mark}" is unreviewed and does not load.
"""

# ----------------------------------------------------------------------------- function rules

#: Return types (and argument types) that make a function uncallable from ordinary agent SQL.
INTERNAL_TYPES = {
    "internal": "takes or returns internal",
    "cstring": "takes or returns cstring (type I/O, encoding conversion)",
    "cstring[]": "type modifier input (cstring[])",
    "trigger": "trigger function",
    "event_trigger": "event trigger function",
    "language_handler": "procedural language handler",
    "fdw_handler": "foreign-data wrapper handler",
    "index_am_handler": "index access method handler",
    "table_am_handler": "table access method handler",
    "tsm_handler": "table sampling method handler",
}

#: Reviewed names (PostgreSQL 15), where volatility alone would judge wrongly or too loosely.
NAMES: dict[str, tuple[FunctionClass, str]] = {
    # volatile, yet pure for our purpose: no state beyond the clock or a random source
    "random": (F.PURE, "volatile only because random"),
    "gen_random_uuid": (F.PURE, "volatile only because random"),
    "clock_timestamp": (F.PURE, "volatile only because of the clock"),
    "timeofday": (F.PURE, "volatile only because of the clock"),
    # the caller's own session or transaction
    "current_setting": (F.SESSION, "the session's own settings"),
    "current_database": (F.SESSION, "the session's database"),
    "current_schema": (F.SESSION, "the session's search_path"),
    "current_schemas": (F.SESSION, "the session's search_path"),
    "current_user": (F.SESSION, "the session's role"),
    "session_user": (F.SESSION, "the session's role"),
    "getpgusername": (F.SESSION, "the session's role"),
    "current_query": (F.SESSION, "the session's own statement"),
    "pg_backend_pid": (F.SESSION, "the session's own pid"),
    "pg_my_temp_schema": (F.SESSION, "the session's temporary schema"),
    "pg_trigger_depth": (F.SESSION, "the session's trigger nesting"),
    "pg_listening_channels": (F.SESSION, "the session's own LISTENs"),
    "pg_cursor": (F.SESSION, "the session's own cursors"),
    "pg_prepared_statement": (F.SESSION, "the session's own prepared statements"),
    "pg_show_all_settings": (F.SESSION, "the session's settings (pg_settings)"),
    "pg_settings_get_flags": (F.SESSION, "flags of a setting"),
    "inet_client_addr": (F.SESSION, "the session's client address"),
    "inet_client_port": (F.SESSION, "the session's client port"),
    "inet_server_addr": (F.SESSION, "the address the session connected to"),
    "inet_server_port": (F.SESSION, "the port the session connected to"),
    "txid_current": (F.SESSION, "the transaction's own id (assigns one)"),
    "txid_current_if_assigned": (F.SESSION, "the transaction's own id"),
    "pg_current_xact_id": (F.SESSION, "the transaction's own id (assigns one)"),
    "pg_current_xact_id_if_assigned": (F.SESSION, "the transaction's own id"),
    "currval": (F.SESSION, "the session's last nextval of a sequence"),
    "lastval": (F.SESSION, "the session's last nextval"),
    "version": (F.SESSION, "server version string; drivers ask for it"),
    "pg_is_in_recovery": (F.SESSION, "primary or standby; drivers ask (target_session_attrs)"),
    "pg_jit_available": (F.SESSION, "whether JIT is available to the session"),
    "get_current_ts_config": (F.SESSION, "the session's default_text_search_config"),
    "getdatabaseencoding": (F.SESSION, "the database encoding"),
    "pg_client_encoding": (F.SESSION, "the session's client_encoding"),
    "pg_advisory_unlock_all": (F.SESSION, "releases only the session's own advisory locks; "
                               "asyncpg pools send it on release"),
    # catalog metadata
    "col_description": (F.CATALOG, "reads pg_description"),
    "obj_description": (F.CATALOG, "reads pg_description"),
    "shobj_description": (F.CATALOG, "reads pg_shdescription"),
    "format_type": (F.CATALOG, "type name from pg_type"),
    "oidvectortypes": (F.CATALOG, "type names from pg_type"),
    "aclexplode": (F.CATALOG, "expands an ACL"),
    "regclass": (F.CATALOG, "relation name lookup"),
    "row_security_active": (F.CATALOG, "whether row security applies to the caller"),
    "pg_get_expr": (F.CATALOG, "deparses a catalog expression"),
    "pg_get_keywords": (F.CATALOG, "the SQL keyword list"),
    "pg_get_userbyid": (F.CATALOG, "role name from pg_authid"),
    "pg_get_serial_sequence": (F.CATALOG, "sequence of a column, from pg_depend"),
    "pg_get_catalog_foreign_keys": (F.CATALOG, "catalog foreign keys (static)"),
    "pg_get_object_address": (F.CATALOG, "catalog object address"),
    "pg_get_publication_tables": (F.CATALOG, "tables of a publication"),
    "pg_get_replica_identity_index": (F.CATALOG, "index name from pg_index"),
    "pg_describe_object": (F.CATALOG, "catalog object description"),
    "pg_identify_object": (F.CATALOG, "catalog object identity"),
    "pg_identify_object_as_address": (F.CATALOG, "catalog object identity"),
    "pg_has_role": (F.CATALOG, "role membership check"),
    "pg_index_column_has_property": (F.CATALOG, "index property"),
    "pg_index_has_property": (F.CATALOG, "index property"),
    "pg_indexam_has_property": (F.CATALOG, "index access method property"),
    "pg_is_other_temp_schema": (F.CATALOG, "namespace property"),
    "pg_relation_is_publishable": (F.CATALOG, "relation property"),
    "pg_relation_is_updatable": (F.CATALOG, "relation property (information_schema)"),
    "pg_column_is_updatable": (F.CATALOG, "column property (information_schema)"),
    "pg_sequence_parameters": (F.CATALOG, "sequence definition, not its value"),
    "pg_tablespace_databases": (F.CATALOG, "databases of a tablespace"),
    "pg_partition_ancestors": (F.CATALOG, "reads pg_inherits"),
    "pg_partition_tree": (F.CATALOG, "reads pg_inherits"),
    "pg_partition_root": (F.CATALOG, "reads pg_inherits"),
    "pg_collation_actual_version": (F.CATALOG, "collation version from the OS library"),
    "pg_database_collation_actual_version": (F.CATALOG, "collation version from the OS library"),
    "pg_timezone_abbrevs": (F.CATALOG, "time zone abbreviations (static)"),
    "pg_timezone_names": (F.CATALOG, "time zone names (static)"),
    "ts_debug": (F.CATALOG, "text search parse of its argument, reads ts catalogs"),
    "ts_parse": (F.CATALOG, "text search parse of its argument"),
    "ts_token_type": (F.CATALOG, "text search parser token types"),
    # other sessions' activity, locks, statistics; physical sizes and storage
    "pg_lock_status": (F.ACTIVITY, "every session's locks (pg_locks)"),
    "pg_blocking_pids": (F.ACTIVITY, "other sessions' pids"),
    "pg_safe_snapshot_blocking_pids": (F.ACTIVITY, "other sessions' pids"),
    "pg_isolation_test_session_is_blocked": (F.ACTIVITY, "other sessions' locks"),
    "pg_current_snapshot": (F.ACTIVITY, "other sessions' running transactions"),
    "txid_current_snapshot": (F.ACTIVITY, "other sessions' running transactions"),
    "pg_snapshot_xip": (F.ACTIVITY, "running transactions of a snapshot"),
    "txid_snapshot_xip": (F.ACTIVITY, "running transactions of a snapshot"),
    "pg_get_backend_memory_contexts": (F.ACTIVITY, "server memory"),
    "pg_get_shmem_allocations": (F.ACTIVITY, "server memory"),
    "pg_prepared_xact": (F.ACTIVITY, "other sessions' prepared transactions"),
    "pg_get_multixact_members": (F.ACTIVITY, "other sessions' transactions"),
    "pg_notification_queue_usage": (F.ACTIVITY, "other sessions' notifications"),
    "pg_xact_status": (F.ACTIVITY, "status of any transaction"),
    "txid_status": (F.ACTIVITY, "status of any transaction"),
    "pg_xact_commit_timestamp": (F.ACTIVITY, "commit time of any transaction"),
    "pg_xact_commit_timestamp_origin": (F.ACTIVITY, "commit time of any transaction"),
    "pg_last_committed_xact": (F.ACTIVITY, "the server's last commit"),
    "pg_sequence_last_value": (F.ACTIVITY, "a sequence's value reveals row counts"),
    "pg_get_replication_slots": (F.ACTIVITY, "replication slots"),
    "pg_relation_filenode": (F.ACTIVITY, "physical storage"),
    "pg_relation_filepath": (F.ACTIVITY, "physical storage path"),
    "pg_filenode_relation": (F.ACTIVITY, "physical storage"),
    "pg_mcv_list_items": (F.ACTIVITY, "decodes statistics samples (column values)"),
    "pg_conf_load_time": (F.ACTIVITY, "server state"),
    "pg_postmaster_start_time": (F.ACTIVITY, "server state"),
    "pg_get_wal_resource_managers": (F.ACTIVITY, "server internals"),
    "pg_is_wal_replay_paused": (F.ACTIVITY, "server replication state"),
    "pg_get_wal_replay_pause_state": (F.ACTIVITY, "server replication state"),
    "pg_last_xact_replay_timestamp": (F.ACTIVITY, "server replication state"),
    "pg_walfile_name": (F.ACTIVITY, "WAL position"),
    "pg_walfile_name_offset": (F.ACTIVITY, "WAL position"),
    "pg_relation_size": (F.ACTIVITY, "size of a relation reveals row counts"),
    "pg_total_relation_size": (F.ACTIVITY, "size of a relation reveals row counts"),
    "pg_table_size": (F.ACTIVITY, "size of a relation reveals row counts"),
    "pg_indexes_size": (F.ACTIVITY, "size of a relation reveals row counts"),
    "pg_database_size": (F.ACTIVITY, "size of a database"),
    "pg_tablespace_size": (F.ACTIVITY, "size of a tablespace"),
    # changes state or holds resources
    "set_config": (F.SIDE_EFFECT, "changes a setting"),
    "setseed": (F.SIDE_EFFECT, "changes the session's random state"),
    "nextval": (F.SIDE_EFFECT, "advances a sequence"),
    "setval": (F.SIDE_EFFECT, "sets a sequence"),
    "pg_notify": (F.SIDE_EFFECT, "sends a notification"),
    "pg_export_snapshot": (F.SIDE_EFFECT, "exports a snapshot to other sessions"),
    "brin_summarize_new_values": (F.SIDE_EFFECT, "writes an index"),
    "brin_summarize_range": (F.SIDE_EFFECT, "writes an index"),
    "brin_desummarize_range": (F.SIDE_EFFECT, "writes an index"),
    "gin_clean_pending_list": (F.SIDE_EFFECT, "writes an index"),
    "pg_stat_clear_snapshot": (F.SIDE_EFFECT, "changes statistics state"),
    "pg_stat_force_next_flush": (F.SIDE_EFFECT, "changes statistics state"),
    "loread": (F.SIDE_EFFECT, "large objects: data outside the policy"),
    "lowrite": (F.SIDE_EFFECT, "large objects: data outside the policy"),
    # runs SQL given as text, or reads whole tables named by text (C code calls SPI)
    "ts_stat": (F.SQL_TEXT, "runs its text argument as a query (SPI)"),
    "ts_rewrite": (F.SQL_TEXT, "ts_rewrite(tsquery, text) runs the text as a query (SPI)"),
    "currtid2": (F.SQL_TEXT, "reads a heap tuple of a table named by text"),
    # server files, network
    "pg_current_logfile": (F.FILE_NETWORK, "server log file"),
    "pg_hba_file_rules": (F.FILE_NETWORK, "reads pg_hba.conf"),
    "pg_ident_file_mappings": (F.FILE_NETWORK, "reads pg_ident.conf"),
    "pg_show_all_file_settings": (F.FILE_NETWORK, "reads the configuration files"),
    "pg_config": (F.FILE_NETWORK, "server build and file paths"),
    "pg_available_extensions": (F.FILE_NETWORK, "reads extension control files"),
    "pg_available_extension_versions": (F.FILE_NETWORK, "reads extension control files"),
    "pg_extension_update_paths": (F.FILE_NETWORK, "reads extension scripts"),
    "pg_tablespace_location": (F.FILE_NETWORK, "server file path"),
    "lo_import": (F.FILE_NETWORK, "reads a server file into a large object"),
    "lo_export": (F.FILE_NETWORK, "writes a large object to a server file"),
    # administration
    "pg_terminate_backend": (F.ADMIN, "ends another session"),
    "pg_cancel_backend": (F.ADMIN, "cancels another session's statement"),
    "pg_reload_conf": (F.ADMIN, "reloads the configuration"),
    "pg_rotate_logfile": (F.ADMIN, "rotates the server log"),
    "pg_rotate_logfile_old": (F.ADMIN, "rotates the server log"),
    "pg_promote": (F.ADMIN, "promotes a standby"),
    "pg_switch_wal": (F.ADMIN, "forces a WAL switch"),
    "pg_create_restore_point": (F.ADMIN, "writes WAL"),
    "pg_backup_start": (F.ADMIN, "backup control"),
    "pg_backup_stop": (F.ADMIN, "backup control"),
    "pg_start_backup": (F.ADMIN, "backup control"),
    "pg_stop_backup": (F.ADMIN, "backup control"),
    "pg_log_backend_memory_contexts": (F.ADMIN, "signals another session"),
    "pg_import_system_collations": (F.ADMIN, "creates collations"),
    "pg_nextoid": (F.ADMIN, "bootstrap and upgrade support"),
    "pg_stop_making_pinned_objects": (F.ADMIN, "bootstrap support"),
    "pg_extension_config_dump": (F.ADMIN, "only in extension scripts"),
    "pg_show_replication_origin_status": (F.ADMIN, "replication origins"),
    # not for direct calls
    "amvalidate": (F.INTERNAL, "access method validation"),
}

#: Name patterns, tried in order after NAMES and before volatility.
PATTERNS: list[tuple[re.Pattern[str], FunctionClass, str]] = [
    (re.compile(p), cls, why)
    for p, cls, why in (
        (r"^(query|cursor|table|schema|database)_to_xml", F.SQL_TEXT,
         "runs a query or reads whole tables (SPI)"),
        (r"^dblink", F.FILE_NETWORK, "connects to other servers"),
        (r"^pg_(ls_|stat_file|read_file|read_binary_file|file_)", F.FILE_NETWORK,
         "server files"),
        (r"^pg_control_", F.FILE_NETWORK, "reads the server's control file"),
        (r"^lo_", F.SIDE_EFFECT, "large objects: data outside the policy"),
        (r"^pg_(try_)?advisory_", F.SIDE_EFFECT, "advisory locks hold resources"),
        (r"^pg_sleep", F.SIDE_EFFECT, "holds a session"),
        (r"^pg_stat_reset", F.SIDE_EFFECT, "resets statistics"),
        (r"^pg_stat_", F.ACTIVITY, "statistics of other sessions or relations"),
        (r"^binary_upgrade_", F.ADMIN, "pg_upgrade support"),
        (r"^pg_replication_origin_", F.ADMIN, "replication origins"),
        (r"replication_slot", F.ADMIN, "replication slots"),
        (r"^pg_logical_", F.ADMIN, "logical decoding"),
        (r"^pg_wal_replay_", F.ADMIN, "WAL replay control"),
        (r"^pg_(current|last)_wal_", F.ACTIVITY, "WAL position"),
        (r"^pg_event_trigger_", F.INTERNAL, "only inside event triggers"),
        (r"(?i)^ri_fkey_", F.INTERNAL, "foreign key trigger"),
        (r"_validator$", F.INTERNAL, "validator"),
        (r"_handler$", F.INTERNAL, "handler"),
        (r"_support$", F.INTERNAL, "planner support"),
        (r"_send$", F.INTERNAL, "type I/O (send)"),
        (r"^has_\w+_privilege$", F.CATALOG, "privilege check"),
        (r"^pg_\w+_is_visible$", F.CATALOG, "search_path visibility"),
        (r"^pg_get_\w*def", F.CATALOG, "deparses a catalog definition"),
        (r"^pg_get_function_", F.CATALOG, "deparses a function signature"),
        (r"^pg_get_statisticsobjdef", F.CATALOG, "statistics object definition (no data)"),
        (r"^to_reg", F.CATALOG, "catalog name lookup"),
    )
]


@dataclass(frozen=True)
class Overload:
    name: str
    volatile: str  # i, s, v
    kind: str  # f, a, w, p
    rettype: str
    argtypes: tuple[str, ...]
    reference: str | None  # why another catalog refers to it (type I/O, handler, ...)


FUNCTIONS_SQL = """
WITH refs(oid, why) AS (
    SELECT typsend::oid, 'type I/O (send)' FROM pg_type
    UNION ALL SELECT typreceive::oid, 'type I/O (receive)' FROM pg_type
    UNION ALL SELECT typanalyze::oid, 'type analyze support' FROM pg_type
    UNION ALL SELECT typsubscript::oid, 'type subscript support' FROM pg_type
    UNION ALL SELECT lanplcallfoid, 'procedural language handler' FROM pg_language
    UNION ALL SELECT laninline, 'procedural language handler' FROM pg_language
    UNION ALL SELECT lanvalidator, 'procedural language validator' FROM pg_language
    UNION ALL SELECT fdwhandler, 'foreign-data wrapper handler' FROM pg_foreign_data_wrapper
    UNION ALL SELECT fdwvalidator, 'foreign-data wrapper validator' FROM pg_foreign_data_wrapper
    UNION ALL SELECT amhandler::oid, 'access method handler' FROM pg_am
    UNION ALL SELECT prosupport::oid, 'planner support' FROM pg_proc
    UNION ALL SELECT oprrest::oid, 'selectivity estimator' FROM pg_operator
    UNION ALL SELECT oprjoin::oid, 'selectivity estimator' FROM pg_operator
)
SELECT p.proname, p.provolatile, p.prokind, format_type(p.prorettype, NULL),
       ARRAY(SELECT format_type(t, NULL)
             FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) AS t),
       (SELECT min(r.why) FROM refs r WHERE r.oid = p.oid AND r.oid <> 0)
FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace
ORDER BY p.proname
"""

RELATIONS_SQL = """
SELECT n.nspname, c.relname,
       EXISTS (SELECT FROM aclexplode(c.relacl) a
               WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
ORDER BY 1, 2
"""


def classify_overload(o: Overload) -> tuple[FunctionClass, str]:
    """The rules' class for one overload, with the reason."""
    for typ in (o.rettype, *o.argtypes):
        if typ in INTERNAL_TYPES:
            return F.INTERNAL, INTERNAL_TYPES[typ]
    if o.reference is not None:
        return F.INTERNAL, o.reference
    if o.name in NAMES:
        return NAMES[o.name]
    for pattern, cls, why in PATTERNS:
        if pattern.search(o.name):
            return cls, why
    if o.volatile == "i":
        return F.PURE, "immutable"
    if o.volatile == "s":
        return F.ACTIVITY, "stable: review"
    return F.SIDE_EFFECT, "volatile: review"


def propose_functions(
    overloads: Iterable[Overload], carried: dict[str, FunctionClass] | None = None
) -> dict[str, tuple[FunctionClass, str]]:
    """The strictest class per name; ``carried`` holds an older major's reviewed classes."""
    found: dict[str, tuple[FunctionClass, str]] = {}
    for o in overloads:
        cls, why = classify_overload(o)
        if o.name in found:
            old_cls, old_why = found[o.name]
            if stricter(old_cls, cls) == old_cls:
                cls, why = old_cls, old_why
        found[o.name] = (cls, why)
    for name, (cls, why) in list(found.items()):
        if carried and name in carried and stricter(carried[name], cls) == carried[name]:
            found[name] = (carried[name], f"as in the previous major (rules: {cls}: {why})")
    return found


#: Reviewed catalog relations agents may read (PostgreSQL 15); see docs/function-registry.md.
ALLOWED_RELATIONS: dict[str, str] = {
    "pg_aggregate": "psql \\da", "pg_am": "psql \\d, SQLAlchemy, JDBC",
    "pg_amop": "psql \\dAo", "pg_amproc": "psql \\dAp",
    "pg_attrdef": "column defaults: psql, SQLAlchemy, JDBC, pgcli",
    "pg_attribute": "columns: everyone", "pg_auth_members": "psql \\du",
    "pg_cast": "psql \\dC", "pg_class": "relations: everyone",
    "pg_collation": "psql \\dO, SQLAlchemy", "pg_constraint": "constraints: everyone",
    "pg_conversion": "psql \\dc", "pg_cursors": "the session's own cursors",
    "pg_database": "psql \\l, JDBC, pgcli", "pg_default_acl": "psql \\ddp",
    "pg_depend": "JDBC, pgcli (serial columns)", "pg_description": "comments: psql, JDBC",
    "pg_enum": "enum labels: SQLAlchemy, psql \\dT+", "pg_event_trigger": "psql \\dy",
    "pg_extension": "psql \\dx", "pg_foreign_data_wrapper": "psql \\dew",
    "pg_foreign_server": "psql \\des", "pg_foreign_table": "psql \\det",
    "pg_group": "role names, like pg_roles", "pg_index": "indexes: everyone",
    "pg_indexes": "index definitions", "pg_inherits": "psql \\d, SQLAlchemy",
    "pg_init_privs": "initial privileges (psql)", "pg_language": "psql \\dL, pgcli",
    "pg_matviews": "materialized view definitions", "pg_namespace": "schemas: everyone",
    "pg_opclass": "SQLAlchemy (index opclasses), psql \\dAc",
    "pg_operator": "psql \\do", "pg_opfamily": "psql \\dAf",
    "pg_parameter_acl": "psql \\dconfig+", "pg_partitioned_table": "psql \\d",
    "pg_prepared_statements": "the session's own prepared statements",
    "pg_proc": "functions: psql \\df, JDBC, pgcli", "pg_publication": "psql \\d, \\dRp",
    "pg_publication_namespace": "psql \\dRp", "pg_publication_rel": "psql \\d",
    "pg_publication_tables": "publication membership", "pg_range": "asyncpg type introspection",
    "pg_rewrite": "rules (psql \\d of a view)", "pg_roles": "role names (password hidden)",
    "pg_rules": "rule definitions", "pg_seclabel": "security labels",
    "pg_seclabels": "security labels", "pg_sequence": "sequence definitions: SQLAlchemy",
    "pg_settings": "the session's own settings: JDBC, pgcli",
    "pg_shdepend": "shared dependencies", "pg_shdescription": "comments on shared objects",
    "pg_shseclabel": "security labels", "pg_statistic_ext": "statistics object definitions "
    "(no data): psql \\d, \\dX", "pg_tables": "table names",
    "pg_tablespace": "psql \\db, SQLAlchemy", "pg_timezone_abbrevs": "static",
    "pg_timezone_names": "static", "pg_transform": "psql \\dT",
    "pg_trigger": "psql \\d", "pg_ts_config": "psql \\dF", "pg_ts_config_map": "psql \\dF+",
    "pg_ts_dict": "psql \\dFd", "pg_ts_parser": "psql \\dFp", "pg_ts_template": "psql \\dFt",
    "pg_type": "types: everyone, asyncpg introspection", "pg_user": "role names (password hidden)",
    "pg_views": "view definitions",
}

#: Reviewed refusals with their reasons (anything not allowed is refused).
REFUSED_RELATIONS: dict[str, str] = {
    "pg_authid": "password verifiers",
    "pg_shadow": "password verifiers",
    "pg_available_extensions": "reads server files (extension control files)",
    "pg_available_extension_versions": "reads server files (extension control files)",
    "pg_backend_memory_contexts": "server memory",
    "pg_config": "server build and file paths",
    "pg_db_role_setting": "other roles' settings",
    "pg_file_settings": "configuration files",
    "pg_hba_file_rules": "pg_hba.conf",
    "pg_ident_file_mappings": "pg_ident.conf",
    "pg_largeobject": "large object data outside the policy",
    "pg_largeobject_metadata": "large objects outside the policy",
    "pg_locks": "other sessions' locks and pids",
    "pg_policy": "other groups' row filters",
    "pg_policies": "other groups' row filters",
    "pg_prepared_xacts": "other sessions' prepared transactions",
    "pg_replication_origin": "replication",
    "pg_replication_origin_status": "replication",
    "pg_replication_slots": "replication",
    "pg_sequences": "last_value reveals row counts",
    "pg_shmem_allocations": "server memory",
    "pg_statistic": "column samples (values: PHI)",
    "pg_statistic_ext_data": "column samples (values: PHI)",
    "pg_stats": "column samples (values: PHI)",
    "pg_stats_ext": "column samples (values: PHI)",
    "pg_stats_ext_exprs": "column samples (values: PHI)",
    "pg_subscription": "replication (connection strings)",
    "pg_subscription_rel": "replication",
    "pg_user_mapping": "other servers' credentials",
    "pg_user_mappings": "other servers' credentials",
}

REFUSED_INFORMATION_SCHEMA: dict[str, str] = {
    "_pg_user_mappings": "other servers' credentials",
    "user_mappings": "other servers' credentials",
    "user_mapping_options": "other servers' credentials",
}


def propose_relation(schema: str, name: str, public: bool = True) -> tuple[bool, str]:
    """Allowed or refused, with the reason, for one catalog relation (``public``: whether
    PUBLIC may SELECT it; what the server refuses anyway is refused here too)."""
    if not public and name not in REFUSED_RELATIONS:
        return False, "not granted to PUBLIC by PostgreSQL"
    if schema == "information_schema":
        if name in REFUSED_INFORMATION_SCHEMA:
            return False, REFUSED_INFORMATION_SCHEMA[name]
        return True, "information_schema: filtered by privilege"
    if name in ALLOWED_RELATIONS:
        return True, ALLOWED_RELATIONS[name]
    if name in REFUSED_RELATIONS:
        return False, REFUSED_RELATIONS[name]
    if name.startswith(("pg_stat_", "pg_statio_")):
        return False, "other sessions' activity or statistics"
    return False, "not reviewed: refused until it is"


# ----------------------------------------------------------------------------- files


def _registry_files(major: int) -> tuple[Path, Path]:
    return REGISTRY_DIR / functions_file(major), REGISTRY_DIR / relations_file(major)


def _read_entries(path: Path) -> list[str]:
    """The content lines of a registry file (reviewed or proposed), without the header."""
    if not path.exists():
        return []
    return [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.startswith("#")]


def _previous_functions(major: int) -> dict[str, FunctionClass]:
    """The reviewed classes of the newest older major that has a file."""
    older = sorted(
        (int(m.group(1)), p)
        for p in REGISTRY_DIR.glob("pg*_functions.tsv")
        if (m := re.fullmatch(r"pg(\d+)_functions\.tsv", p.name)) and int(m.group(1)) < major
    )
    if not older:
        return {}
    _, path = older[-1]
    reviewed = "\n".join(ln for ln in _read_entries(path) if PROPOSED_MARK not in ln)
    return parse_functions(reviewed, path.name)


def _write(path: Path, header: str, lines: list[str]) -> None:
    path.write_text(header + "".join(f"{ln}\n" for ln in sorted(set(lines))), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG*)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 listing unjudged names")
    mode.add_argument("--write", action="store_true", help="add proposals to the files")
    mode.add_argument("--propose", action="store_true", help="print proposals (default)")
    args = parser.parse_args(argv)

    with psycopg.connect(args.dsn, autocommit=True) as conn:
        major = conn.info.server_version // 10000
        overloads = [
            Overload(name, vol, kind, ret, tuple(argtypes), ref)
            for name, vol, kind, ret, argtypes, ref in conn.execute(FUNCTIONS_SQL)
        ]
        public = {(str(s), str(n)): bool(p) for s, n, p in conn.execute(RELATIONS_SQL)}
        relations = sorted(public)

    ffile, rfile = _registry_files(major)
    fentries, rentries = _read_entries(ffile), _read_entries(rfile)
    known_functions = {ln.split("\t", 1)[0] for ln in fentries}
    known_relations = {tuple(ln.split("\t")[:2]) for ln in rentries}
    missing_functions = sorted({o.name for o in overloads} - known_functions)
    missing_relations = sorted(set(relations) - known_relations)

    if args.check:
        for name in missing_functions:
            print(f"{ffile.name}: function {name} is not classified")
        for schema, name in missing_relations:
            print(f"{rfile.name}: relation {schema}.{name} is not judged")
        if not missing_functions and not missing_relations:
            # the loader raises on malformed or unreviewed lines: check that too
            parse_functions(ffile.read_text(encoding="utf-8"), ffile.name)
            parse_relations(rfile.read_text(encoding="utf-8"), rfile.name)
            print(f"PostgreSQL {major}: every pg_catalog function and catalog relation is judged")
            return 0
        return 1

    proposals = propose_functions(
        (o for o in overloads if o.name in set(missing_functions)), _previous_functions(major)
    )
    fnew = [f"{name}\t{cls}\t{why}  {PROPOSED_MARK}" for name, (cls, why) in proposals.items()]
    rnew = []
    for schema, name in missing_relations:
        allowed, why = propose_relation(schema, name, public[(schema, name)])
        rnew.append(f"{schema}\t{name}\t{'allowed' if allowed else 'refused'}\t{why}  "
                    f"{PROPOSED_MARK}")
    if args.write:
        _write(ffile, FUNCTIONS_HEADER.format(major=major, mark=PROPOSED_MARK), fentries + fnew)
        _write(rfile, RELATIONS_HEADER.format(major=major, mark=PROPOSED_MARK), rentries + rnew)
        print(f"{ffile}: {len(fnew)} proposed; {rfile}: {len(rnew)} proposed; review them")
        return 0
    for line in fnew + rnew:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
