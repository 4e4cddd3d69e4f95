"""Check what the JSON Schema cannot, and build the typed model from plain policy data.

The schema judges shapes one value at a time; the rules here relate values to each other
(an ``unmask`` entry against ``phi`` and ``read``, OIDC groups across policy groups, writes
against masked reads) or need real parsing (durations, sizes, row-filter SQL).  The builder
runs even when the schema already found problems, reading the data defensively and skipping
what is malformed (the schema has reported it), so one ``check`` lists every problem at once.

Problem keys: mapping keys are dotted with tables schema-qualified; items of free-text lists
(OIDC groups, algorithms, approvers, statement kinds) are ``[index]``; items of column lists
and ``unmask`` are named, e.g. ``groups.billing.read.public.patients.ssn``.
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.parse
from collections.abc import Mapping

from policyc.errors import Location, Problem
from policyc.policy import durations
from policyc.policy._keypath import dotted, qualify_table
from policyc.policy._schema import load_schema
from policyc.policy._yamltree import Document, Path
from policyc.policy.model import (
    ALL_COLUMNS,
    RISKY_STATEMENTS,
    ApprovalRules,
    Approvals,
    AuditSettings,
    ColumnRef,
    Columns,
    Group,
    GroupLimits,
    Identity,
    Mask,
    Policy,
    ProxySettings,
    ResultRecording,
    RowBudget,
    TableName,
    Webhook,
    WebhookFormat,
    WriteGrant,
)
from policyc.policy.rowfilter import check_row_filter

__all__ = ["ALGORITHMS", "ROOT_KEY", "Builder"]

ALGORITHMS = (
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA",
)  # fmt: skip
"""Signature algorithms a policy may pin: asymmetric only."""

ROOT_KEY = "(root)"
"""Key reported for problems about the document as a whole (syntax errors, wrong top type)."""

MAX_LEEWAY_SECONDS = 300
_RESERVED_GROUPS = frozenset({"public", "audit", "policyc"})
_RESERVED_PREFIXES = ("pg_", "policyc_")
_CATALOG_NAME = re.compile(r"^(pg_catalog|information_schema)\.[a-z_][a-z0-9_]{0,62}$")
_FUNCTION_NAME = re.compile(r"^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_MASKS = ", ".join(m.value for m in Mask)
_ASYMMETRIC_HINT = "use an asymmetric algorithm such as RS256, ES256 or EdDSA"
# Names the schema refuses are skipped here, so one bad name is one problem, not a cascade.
_TABLE_NAME = re.compile(load_schema()["$defs"]["tableName"]["pattern"])
_COLUMN_REF = re.compile(load_schema()["$defs"]["columnRef"]["pattern"])


def _as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Builder:
    """Collects problems while turning :class:`Document` data into a :class:`Policy`."""

    def __init__(self, doc: Document, source: str, base_dir: str) -> None:
        self.doc = doc
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.supersedes: set[str] = set()
        """Keys where a message here replaces the schema's (pattern/enum) one."""
        self._phi_columns: dict[TableName, set[str]] = {}
        self._oidc_owners: dict[str, list[tuple[str, Path]]] = {}
        self._approver_items: list[tuple[int, str]] = []

    # --- reporting ------------------------------------------------------------------------

    def line(self, path: Path) -> int:
        """Line of ``path``, else of its nearest written ancestor, else 1."""
        probe = path
        while probe:
            if probe in self.doc.lines:
                return self.doc.lines[probe]
            probe = probe[:-1]
        return 1

    def report(
        self, path: Path, message: str, *, key: str | None = None, supersede: bool = False
    ) -> None:
        shown = key if key is not None else (dotted(path) or ROOT_KEY)
        self.problems.append(Problem(Location(self.source, self.line(path), shown), message))
        if supersede:
            self.supersedes.add(shown)

    def _first(self, first: Path, again: Path) -> str:
        """Where the first of two equal items is, in words, for "listed twice" messages."""
        line = self.line(first)
        if line != self.line(again):
            return f" (first on line {line})"
        if isinstance(first[-1], int):
            return f" (first as item {first[-1] + 1})"
        return ""

    # --- top level ------------------------------------------------------------------------

    def build(self) -> Policy:
        """The policy as far as it is valid; meaningful only when :attr:`problems` is empty."""
        data = _as_dict(self.doc.data)
        version = _as_int(data.get("version"))
        database = data.get("database")
        self._collect_phi_columns(data.get("phi"))
        approvals = self._approvals(("approvals",), data.get("approvals"))
        proxy = self._proxy(data.get("proxy"))
        phi = self._phi(("phi",), data.get("phi"))
        groups = self._groups(
            data, approvals_configured="approvers" in _as_dict(data.get("approvals"))
        )
        self._cross_checks(proxy, approvals, groups)
        return Policy(
            version=version if version is not None else 1,
            database=database if isinstance(database, str) else None,
            identity=self._identity(("identity",), data.get("identity")),
            phi=phi,
            groups=groups,
            approvals=approvals,
            audit=self._audit(("audit",), data.get("audit")),
            proxy=proxy,
            source=self.source,
        )

    def _cross_checks(
        self, proxy: ProxySettings, approvals: Approvals, groups: tuple[Group, ...]
    ) -> None:
        names = {g.name for g in groups}
        if proxy.service_role in names:
            self.report(
                ("proxy", "service_role"),
                f"service role '{proxy.service_role}' is also a group name: the proxy's own "
                "role must not be an agent group role",
            )
        for index, role in self._approver_items:
            if role in names:
                self.report(
                    ("approvals", "approvers", index),
                    f"approver role '{role}' is an agent group: agents must never approve held "
                    "statements",
                )
        for oidc, owners in self._oidc_owners.items():
            if len(owners) < 2:
                continue
            groups_named = ", ".join(sorted({owner for owner, _ in owners}))
            for _, path in owners:
                self.report(
                    path,
                    f"OIDC group '{oidc}' is mapped by more than one group ({groups_named}): "
                    "each OIDC group must map to exactly one policy group",
                )

    # --- small value parsers --------------------------------------------------------------

    def _duration(self, path: Path, value: object, default: int, *, positive: bool) -> int:
        if value is None or not isinstance(value, str):
            return default  # absent, or a type error the schema reports
        try:
            seconds = durations.parse_duration(value)
        except durations.UnitError as exc:
            self.report(path, str(exc), supersede=True)
            return default
        if positive and seconds <= 0:
            self.report(path, "must be longer than 0s", supersede=True)
        return seconds

    def _size(self, path: Path, value: object, default: int) -> int:
        if not isinstance(value, str):
            return default
        try:
            size = durations.parse_size(value)
        except durations.UnitError as exc:
            self.report(path, str(exc), supersede=True)
            return default
        if size <= 0:
            self.report(path, "must be larger than 0B", supersede=True)
        return size

    def _unique_strings(self, path: Path, value: object, noun: str) -> list[tuple[int, str]]:
        """String items of a list with their indices; repeats are reported and dropped."""
        seen: dict[str, int] = {}
        out: list[tuple[int, str]] = []
        for index, item in enumerate(_as_list(value)):
            if not isinstance(item, str):
                continue
            if item in seen:
                where = self._first((*path, seen[item]), (*path, index))
                self.report((*path, index), f"{noun} '{item}' is listed twice{where}")
                continue
            seen[item] = index
            out.append((index, item))
        return out

    def _tables(self, path: Path, value: object) -> list[tuple[TableName, str, object]]:
        """Entries of a table-keyed mapping; a table written twice (``t`` and ``public.t``)
        is reported at the second spelling."""
        seen: dict[str, str] = {}
        out: list[tuple[TableName, str, object]] = []
        for raw, item in _as_dict(value).items():
            if not _TABLE_NAME.match(raw):
                continue
            qualified = qualify_table(raw)
            if qualified in seen:
                first = seen[qualified]
                self.report(
                    (*path, raw),
                    f"table {qualified} is listed twice (as '{first}' on line "
                    f"{self.line((*path, first))} and as '{raw}')",
                )
                continue
            seen[qualified] = raw
            out.append((TableName.parse(raw), raw, item))
        return out

    def _columns(self, path: Path, value: object) -> Columns | None:
        """``"*"`` or the column names of a list; repeats reported; None when malformed."""
        if value == "*":
            return ALL_COLUMNS
        if not isinstance(value, list):
            return None
        indices: dict[str, int] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                continue
            if item in indices:
                self.report(
                    (*path, index),
                    f"column '{item}' is listed twice"
                    f"{self._first((*path, indices[item]), (*path, index))}",
                    key=f"{dotted(path)}.{item}",
                )
                continue
            indices[item] = index
        return tuple(indices)

    # --- sections -------------------------------------------------------------------------

    def _identity(self, path: Path, value: object) -> Identity | None:
        if not isinstance(value, dict):
            return None
        algorithms: list[str] = []
        for index, alg in self._unique_strings(
            (*path, "algorithms"), value.get("algorithms"), "algorithm"
        ):
            message = _algorithm_problem(alg)
            if message:
                self.report((*path, "algorithms", index), message, supersede=True)
            else:
                algorithms.append(alg)
        leeway = self._duration((*path, "leeway"), value.get("leeway"), 30, positive=False)
        if leeway > MAX_LEEWAY_SECONDS:
            self.report(
                (*path, "leeway"),
                f"a leeway over {durations.format_duration(MAX_LEEWAY_SECONDS)} accepts expired "
                "tokens for too long",
            )

        def text(name: str, default: str = "") -> str:
            item = value.get(name)
            return item if isinstance(item, str) else default

        return Identity(
            issuer=text("issuer"),
            audience=text("audience"),
            jwks=self._jwks((*path, "jwks"), value.get("jwks")),
            algorithms=tuple(algorithms),
            subject_claim=text("subject_claim", "sub"),
            groups_claim=text("groups_claim", "groups"),
            leeway_seconds=leeway,
        )

    def _jwks(self, path: Path, value: object) -> str:
        if not isinstance(value, str) or not value:
            return ""
        if _URL.match(value):
            scheme = value.split("://", 1)[0].lower()
            if scheme == "https":
                return value
            if scheme == "http":
                self.report(
                    path,
                    "http:// is refused for signing keys: anyone on the path could swap them; "
                    "use https:// or a local file",
                )
            else:
                self.report(path, f"unsupported URL scheme '{scheme}': use https:// or a file path")
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))

    def _collect_phi_columns(self, value: object) -> None:
        """PHI column names regardless of mask validity, so unmask checks do not cascade."""
        for table, _raw, columns in _plain_tables(value):
            self._phi_columns.setdefault(table, set()).update(_as_dict(columns))

    def _phi(self, path: Path, value: object) -> dict[TableName, Mapping[str, Mask]]:
        phi: dict[TableName, Mapping[str, Mask]] = {}
        for table, raw, columns in self._tables(path, value):
            masks: dict[str, Mask] = {}
            for column, mask in _as_dict(columns).items():
                if mask is None:
                    self.report(
                        (*path, raw, column),
                        "no mask given (YAML reads a bare null as empty): to use the null mask "
                        'write "null"',
                        supersede=True,
                    )
                if not isinstance(mask, str):
                    continue
                try:
                    masks[column] = Mask(mask)
                except ValueError:
                    self.report(
                        (*path, raw, column),
                        f"unknown mask '{mask}'; valid masks: {_MASKS}",
                        supersede=True,
                    )
            phi[table] = masks
        return phi

    def _approvals(self, path: Path, value: object) -> Approvals:
        section = _as_dict(value)
        approvers = section.get("approvers")
        if isinstance(approvers, list) and not approvers:
            self.report(
                (*path, "approvers"),
                "approvers is empty: list the database roles whose members may approve, or "
                "remove the key",
                supersede=True,
            )
        defaults = Approvals()
        self._approver_items = self._unique_strings((*path, "approvers"), approvers, "approver")
        return Approvals(
            approvers=tuple(role for _, role in self._approver_items),
            hold_seconds=self._duration(
                (*path, "hold"), section.get("hold"), defaults.hold_seconds, positive=True
            ),
            valid_for_seconds=self._duration(
                (*path, "valid_for"),
                section.get("valid_for"),
                defaults.valid_for_seconds,
                positive=True,
            ),
            webhook=self._webhook((*path, "webhook"), section.get("webhook")),
        )

    def _webhook(self, path: Path, value: object) -> Webhook | None:
        """``approvals.webhook``: https only (http to loopback for tests); json needs a secret,
        for slack the URL is the secret."""
        if not isinstance(value, dict):
            return None
        url = value.get("url")
        if not isinstance(url, str):
            return None  # the schema reports it
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            self.report(
                (*path, "url"),
                "http:// is refused: requests carry statements and the secret; use https:// "
                "(http:// is allowed to 127.0.0.1 and localhost only, for tests)",
            )
        elif scheme in ("http", "https") and not parts.hostname:
            self.report((*path, "url"), "the URL has no host", supersede=True)
        raw_format = value.get("format", WebhookFormat.JSON.value)
        fmt = (
            WebhookFormat(raw_format)
            if raw_format in {f.value for f in WebhookFormat}
            else WebhookFormat.JSON
        )
        secret_env = value.get("secret_env")
        secret_file = value.get("secret_file")
        env = secret_env if isinstance(secret_env, str) else None
        file = secret_file if isinstance(secret_file, str) and secret_file else None
        if env is not None and file is not None:
            self.report(path, "give secret_env or secret_file, not both")
        if fmt is WebhookFormat.JSON and env is None and file is None:
            self.report(
                path,
                "a json webhook needs a secret (secret_env or secret_file): the endpoint must be "
                "able to tell policyc's requests from anyone else's",
            )
        retries = _as_int(value.get("retries"))
        return Webhook(
            url=url,
            format=fmt,
            secret_env=env,
            secret_file=(
                os.path.normpath(os.path.join(self.base_dir, file)) if file is not None else None
            ),
            timeout_seconds=self._duration(
                (*path, "timeout"), value.get("timeout"), 5, positive=True
            ),
            retries=retries if retries is not None and 0 <= retries <= 20 else 5,
        )

    def _audit(self, path: Path, value: object) -> AuditSettings:
        section = _as_dict(value)
        defaults = AuditSettings()
        results = section.get("results")
        recording = defaults.results
        if isinstance(results, str) and results in {r.value for r in ResultRecording}:
            recording = ResultRecording(results)
        return AuditSettings(
            retention_seconds=self._duration(
                (*path, "retention"),
                section.get("retention"),
                defaults.retention_seconds,
                positive=True,
            ),
            results=recording,
            results_limit_bytes=self._size(
                (*path, "results_limit"),
                section.get("results_limit"),
                defaults.results_limit_bytes,
            ),
        )

    def _proxy(self, value: object) -> ProxySettings:
        role = _as_dict(value).get("service_role")
        return ProxySettings(service_role=role) if isinstance(role, str) else ProxySettings()

    # --- groups ---------------------------------------------------------------------------

    def _groups(self, data: dict[str, object], *, approvals_configured: bool) -> tuple[Group, ...]:
        groups: list[Group] = []
        for name, value in _as_dict(data.get("groups")).items():
            groups.append(
                self._group(("groups", name), name, _as_dict(value), approvals_configured)
            )
        return tuple(groups)

    def _group(
        self, path: Path, name: str, value: dict[str, object], approvals_configured: bool
    ) -> Group:
        if name in _RESERVED_GROUPS or name.startswith(_RESERVED_PREFIXES):
            self.report(
                path,
                f"group name '{name}' is reserved: public, audit and policyc, and names starting "
                "with pg_ or policyc_, belong to PostgreSQL and policyc",
            )
        oidc = self._unique_strings((*path, "oidc_groups"), value.get("oidc_groups"), "OIDC group")
        for index, item in oidc:
            self._oidc_owners.setdefault(item, []).append((name, (*path, "oidc_groups", index)))

        read: dict[TableName, Columns] = {}
        for table, raw, columns in self._tables((*path, "read"), value.get("read")):
            parsed = self._columns((*path, "read", raw), columns)
            if parsed is not None:
                read[table] = parsed

        write = self._writes(path, value.get("write"))
        rows = self._rows(path, name, value.get("rows"), read, write)
        unmask = self._unmask(path, name, value.get("unmask"), read)
        self._check_masked_writes(path, name, value.get("write"), read, set(unmask))
        approval = self._approval((*path, "approval"), value.get("approval"))
        if (approval.rows_over is not None or approval.statements) and not approvals_configured:
            self.report(
                (*path, "approval"),
                f"group {name} holds statements for approval but no one can approve them: "
                "add approvals.approvers",
            )
        allow_do = value.get("allow_do")
        functions = self._functions((*path, "functions"), value.get("functions"))
        catalog = self._catalog((*path, "catalog"), value.get("catalog"))
        limits = self._limits((*path, "limits"), value.get("limits"))
        return Group(
            name=name,
            oidc_groups=tuple(item for _, item in oidc),
            read=read,
            write=write,
            rows=rows,
            unmask=unmask,
            approval=approval,
            allow_do=allow_do if isinstance(allow_do, bool) else False,
            functions=functions,
            limits=limits,
            catalog=catalog,
        )

    def _catalog(self, path: Path, value: object) -> tuple[str, ...]:
        """``catalog``: catalog relations the registry refuses that this group may read."""
        out: list[str] = []
        for index, item in self._unique_strings(path, value, "catalog relation"):
            if not _CATALOG_NAME.match(item):
                self.report(
                    (*path, index),
                    f"'{item}' is not a catalog relation name (pg_catalog.name or "
                    "information_schema.name, lower case)",
                )
                continue
            out.append(item)
        return tuple(out)

    def _functions(self, path: Path, value: object) -> tuple[str, ...]:
        """``functions``: extra functions the group's agents may call, schema-qualified."""
        out: list[str] = []
        for index, item in self._unique_strings(path, value, "function"):
            if not _FUNCTION_NAME.match(item):
                self.report(
                    (*path, index),
                    f"'{item}' is not a schema-qualified function name (schema.name, lower "
                    "case, no arguments)",
                )
                continue
            out.append(item)
        return tuple(out)

    def _limits(self, path: Path, value: object) -> GroupLimits:
        section = _as_dict(value)

        def timeout(key: str) -> int | None:
            if key not in section:
                return None
            return self._duration((*path, key), section.get(key), 0, positive=True)

        def count(key: str) -> int | None:
            number = _as_int(section.get(key))
            return number if number is not None and number > 0 else None

        return GroupLimits(
            connections=count("connections"),
            connections_per_agent=count("connections_per_agent"),
            statement_timeout=timeout("statement_timeout"),
            lock_timeout=timeout("lock_timeout"),
            idle_in_transaction_session_timeout=timeout("idle_in_transaction_session_timeout"),
            work_mem=self._size((*path, "work_mem"), section["work_mem"], 0) // 1024 or None
            if "work_mem" in section else None,
        )

    def _writes(self, path: Path, value: object) -> dict[TableName, WriteGrant]:
        writes: dict[TableName, WriteGrant] = {}
        for table, raw, entry in self._tables((*path, "write"), value):
            if not isinstance(entry, dict):
                continue
            entry_path = (*path, "write", raw)
            insert = self._columns((*entry_path, "insert"), entry.get("insert"))
            update = self._columns((*entry_path, "update"), entry.get("update"))
            delete = entry.get("delete") is True
            if "insert" not in entry and "update" not in entry and entry.get("delete") is False:
                self.report(
                    entry_path,
                    f"write entry for {table} grants nothing: give insert, update or delete: true",
                )
            writes[table] = WriteGrant(
                insert=insert if insert is not None else (),
                update=update if update is not None else (),
                delete=delete,
            )
        return writes

    def _rows(
        self,
        path: Path,
        name: str,
        value: object,
        read: Mapping[TableName, Columns],
        write: Mapping[TableName, WriteGrant],
    ) -> dict[TableName, str]:
        rows: dict[TableName, str] = {}
        for table, raw, expression in self._tables((*path, "rows"), value):
            entry_path = (*path, "rows", raw)
            if table not in read and table not in write:
                self.report(
                    entry_path,
                    f"row filter for {table}, which group {name} neither reads nor writes",
                )
            if not isinstance(expression, str) or not expression.strip():
                continue  # the schema reports the type or emptiness
            for message in check_row_filter(expression, table):
                said = message if "row filter" in message else f"row filter {message}"
                self.report(entry_path, said)
            rows[table] = expression.strip()
        return rows

    def _unmask(
        self, path: Path, name: str, value: object, read: Mapping[TableName, Columns]
    ) -> tuple[ColumnRef, ...]:
        unmask: list[ColumnRef] = []
        seen: dict[ColumnRef, int] = {}
        list_path = (*path, "unmask")
        for index, item in enumerate(_as_list(value)):
            if not isinstance(item, str) or not _COLUMN_REF.match(item):
                continue  # the schema reports it
            ref = ColumnRef.parse(item)
            item_path = (*list_path, index)
            key = f"{dotted(list_path)}.{ref}"
            if ref in seen:
                self.report(
                    item_path,
                    f"{ref} is listed twice{self._first((*list_path, seen[ref]), item_path)}",
                    key=key,
                )
                continue
            seen[ref] = index
            unmask.append(ref)
            if ref.column not in self._phi_columns.get(ref.table, set()):
                self.report(
                    item_path,
                    f"{ref} is not a PHI column (not listed under phi.{ref.table}): unmask only "
                    "applies to PHI columns",
                    key=key,
                )
            columns = read.get(ref.table)
            if columns is None:
                self.report(
                    item_path,
                    f"group {name} does not read {ref.table}: add it to read, or remove {ref} "
                    "from unmask",
                    key=key,
                )
            elif (
                columns is not ALL_COLUMNS
                and isinstance(columns, tuple)
                and ref.column not in columns
            ):
                self.report(
                    item_path,
                    f"group {name} does not read column {ref} (not in read.{ref.table}): add "
                    f"{ref.column} to read, or remove {ref} from unmask",
                    key=key,
                )
        return tuple(unmask)

    def _check_masked_writes(
        self,
        path: Path,
        name: str,
        value: object,
        read: Mapping[TableName, Columns],
        unmasked: set[ColumnRef],
    ) -> None:
        """A group may not write a PHI column it reads only masked: it would overwrite data it
        cannot see, and masked view columns are not updatable."""
        for table, raw, entry in _plain_tables(value):
            phi_columns = self._phi_columns.get(table)
            readable = read.get(table)
            if not phi_columns or readable is None or not isinstance(entry, dict):
                continue
            for op in ("insert", "update"):
                op_path = (*path, "write", raw, op)
                written = entry.get(op)
                for column in sorted(phi_columns):
                    ref = ColumnRef(table, column)
                    if ref in unmasked:
                        continue
                    if readable is not ALL_COLUMNS and column not in _names(readable):
                        continue
                    if written == "*":
                        self.report(
                            op_path,
                            f'{op} "*" includes PHI column {ref}, which group {name} reads masked: '
                            f"add {ref} to unmask, or list the {op} columns without it",
                        )
                    elif isinstance(written, list) and column in written:
                        self.report(
                            (*op_path, written.index(column)),
                            f"group {name} writes PHI column {ref} ({op}) but reads it masked: "
                            f"add {ref} to unmask, or stop writing it",
                            key=f"{dotted(op_path)}.{column}",
                        )

    def _approval(self, path: Path, value: object) -> ApprovalRules:
        section = _as_dict(value)
        rows_over = _as_int(section.get("rows_over"))
        statements = tuple(
            item
            for _, item in self._unique_strings(
                (*path, "statements"), section.get("statements"), "statement kind"
            )
            if item in RISKY_STATEMENTS
        )
        in_transaction = section.get("in_transaction")
        mode = section.get("mode")
        budget: RowBudget | None = None
        raw_budget = section.get("budget")
        if isinstance(raw_budget, dict):
            rows = _as_int(raw_budget.get("rows"))
            per = self._duration((*path, "budget", "per"), raw_budget.get("per"), 3600,
                                 positive=True)
            if rows is not None and rows >= 0:
                budget = RowBudget(rows=rows, per_seconds=per)
        return ApprovalRules(
            rows_over=rows_over if rows_over is not None and rows_over >= 0 else None,
            statements=statements,
            in_transaction=in_transaction if in_transaction in ("hold", "refuse") else "hold",
            budget=budget,
            mode=mode if mode in ("wait", "ticket") else "wait",
        )


def _plain_tables(value: object) -> list[tuple[TableName, str, object]]:
    """Entries of a table-keyed mapping without reporting (the reporting pass does that)."""
    return [
        (TableName.parse(raw), raw, item)
        for raw, item in _as_dict(value).items()
        if _TABLE_NAME.match(raw)
    ]


def _names(columns: Columns) -> tuple[str, ...]:
    return columns if isinstance(columns, tuple) else ()


def _algorithm_problem(alg: str) -> str | None:
    if alg in ALGORITHMS:
        return None
    if alg.lower() == "none":
        return "'none' is refused: it accepts unsigned tokens, so anyone could claim any identity"
    if alg.upper().startswith("HS"):
        return (
            f"'{alg}' is refused: HMAC algorithms use a shared secret, and with published (JWKS) "
            f"keys anyone could forge tokens; {_ASYMMETRIC_HINT}"
        )
    folded = {a.lower(): a for a in ALGORITHMS}
    close = folded.get(alg.lower()) or next(
        iter(difflib.get_close_matches(alg, ALGORITHMS, n=1)), None
    )
    hint = f" (did you mean {close}?)" if close else ""
    return f"unknown algorithm '{alg}'{hint}: use one of {', '.join(ALGORITHMS)}"
