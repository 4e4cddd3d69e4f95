"""The typed policy model (format version 1).

Frozen dataclasses, built once by :mod:`policyc.policy.loader` after validation; everything
downstream (compiler, proxy) reads only this model, never raw YAML.  ``"*"`` column lists are
kept as :data:`ALL_COLUMNS` and resolved against the live catalog by the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from policyc.errors import Location
from policyc.vocab import APPROVABLE_SHAPES


class Mask(StrEnum):
    """How a PHI column is shown to a group that does not unmask it."""

    REDACT = "redact"
    HASH = "hash"
    PARTIAL = "partial"
    YEAR = "year"
    MONTH = "month"
    ZIP3 = "zip3"
    AGE90 = "age90"
    NULL = "null"


class ResultRecording(StrEnum):
    """What the proxy keeps of each result: nothing, a digest, or the masked rows."""

    NONE = "none"
    DIGEST = "digest"
    FULL = "full"


#: Risky statement shapes a group's approval rules may list (policyc.vocab.APPROVABLE_SHAPES).
RISKY_STATEMENTS = APPROVABLE_SHAPES


@dataclass(frozen=True, order=True)
class TableName:
    """A schema-qualified table name as written in the policy (``public.patients``)."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        schema, _, name = text.partition(".")
        if not name:
            return cls("public", schema)
        return cls(schema, name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, order=True)
class ColumnRef:
    """``schema.table.column``."""

    table: TableName
    column: str

    @classmethod
    def parse(cls, text: str) -> ColumnRef:
        head, _, column = text.rpartition(".")
        return cls(TableName.parse(head), column)

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


class AllColumns:
    """Marker for ``"*"``: every column of the table, resolved against the catalog."""

    _instance: AllColumns | None = None

    def __new__(cls) -> AllColumns:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ALL_COLUMNS"


ALL_COLUMNS = AllColumns()
Columns = tuple[str, ...] | AllColumns


@dataclass(frozen=True)
class WriteGrant:
    """What a group may write to one table; column lists are for INSERT and UPDATE."""

    insert: Columns = ()
    update: Columns = ()
    delete: bool = False


@dataclass(frozen=True)
class ApprovalRules:
    """When a group's statements need a human: row threshold and risky statement shapes."""

    rows_over: int | None = None
    statements: tuple[str, ...] = ()
    in_transaction: str = "hold"  # "hold" or "refuse"
    budget: RowBudget | None = None
    # "wait": the client waits for the decision; "ticket": it is refused at once with the
    # request's id and runs the identical statement again once approved
    mode: str = "wait"


@dataclass(frozen=True)
class RowBudget:
    """A cumulative ceiling on rows of the group's tables that may leave without an approval:
    per session, and per agent over a sliding window (``per_seconds``)."""

    rows: int
    per_seconds: int


@dataclass(frozen=True)
class GroupLimits:
    """The DBA's ceilings for a group's sessions.  Agents may tighten a timeout, never loosen
    it; ``None`` leaves the server's (or the role's) own setting in force.  Timeouts are in
    seconds."""

    connections: int | None = None  # database sessions of the group at once (all agents)
    connections_per_agent: int | None = None  # sessions of one agent at once
    statement_timeout: int | None = None
    lock_timeout: int | None = None
    idle_in_transaction_session_timeout: int | None = None
    work_mem: int | None = None  # kB an agent may SET work_mem to (the proxy's default if None)

    def timeouts(self) -> dict[str, int]:
        """The timeouts set, by setting name."""
        found = {
            "statement_timeout": self.statement_timeout,
            "lock_timeout": self.lock_timeout,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_session_timeout,
        }
        return {name: value for name, value in found.items() if value is not None}


@dataclass(frozen=True)
class Group:
    """One agent group: the database role the proxy opens sessions as."""

    name: str
    oidc_groups: tuple[str, ...]
    read: Mapping[TableName, Columns]
    write: Mapping[TableName, WriteGrant]
    rows: Mapping[TableName, str]
    unmask: tuple[ColumnRef, ...]
    approval: ApprovalRules
    allow_do: bool = False
    # functions beyond the vetted pg_catalog ones that agents of the group may call, as
    # "schema.name" (lower case); see policyc.proxy.judge.registry
    functions: tuple[str, ...] = ()
    limits: GroupLimits = field(default_factory=GroupLimits)
    # catalog relations beyond the registry's readable ones that agents of the group may read,
    # as "pg_catalog.name" (pg_dump needs pg_policy); see policyc.proxy.judge.registry
    catalog: tuple[str, ...] = ()

    def tables(self) -> tuple[TableName, ...]:
        """Every table this group reaches, read or write, sorted."""
        return tuple(sorted(set(self.read) | set(self.write)))


@dataclass(frozen=True)
class Identity:
    """How the proxy verifies an agent's OIDC token."""

    issuer: str
    audience: str
    jwks: str
    algorithms: tuple[str, ...]
    subject_claim: str = "sub"
    groups_claim: str = "groups"
    leeway_seconds: int = 30


class WebhookFormat(StrEnum):
    """The body of a webhook POST: the request as JSON, or a Slack-compatible ``{"text": ...}``."""

    JSON = "json"
    SLACK = "slack"


@dataclass(frozen=True)
class Webhook:
    """Where approvers hear of new requests. The secret itself is never in the policy: it is
    read from an environment variable or a file (resolved against the policy's directory)."""

    url: str
    format: WebhookFormat = WebhookFormat.JSON
    secret_env: str | None = None
    secret_file: str | None = None
    timeout_seconds: int = 5
    retries: int = 5


@dataclass(frozen=True)
class Approvals:
    """Who decides held statements and how long holds and approvals last (seconds)."""

    approvers: tuple[str, ...] = ()
    hold_seconds: int = 120
    valid_for_seconds: int = 3600
    webhook: Webhook | None = None


@dataclass(frozen=True)
class AuditSettings:
    """Retention and result recording."""

    retention_seconds: int = 6 * 365 * 86400 + 2 * 86400
    results: ResultRecording = ResultRecording.DIGEST
    results_limit_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ProxySettings:
    """Database-side names the proxy relies on."""

    service_role: str = "policyc_proxy"


@dataclass(frozen=True)
class Policy:
    """A validated policy.  ``locations`` maps dotted key paths to where they were written."""

    version: int
    database: str | None
    identity: Identity | None
    phi: Mapping[TableName, Mapping[str, Mask]]
    groups: tuple[Group, ...]
    approvals: Approvals
    audit: AuditSettings
    proxy: ProxySettings
    source: str = "<memory>"
    locations: Mapping[str, Location] = field(default_factory=dict)
    # hex sha256 of the bytes the policy was read from (the file's, as loaded: what the
    # proxy records as the policy version of each session); None for a policy built in memory
    sha256: str | None = field(default=None, compare=False)

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def mask_of(self, column: ColumnRef) -> Mask | None:
        """The default mask of a PHI column, or None when the column is not PHI."""
        return self.phi.get(column.table, {}).get(column.column)

    def where(self, key: str) -> Location:
        """Best location for a dotted key path: itself, else its nearest written parent."""
        probe = key
        while probe:
            if probe in self.locations:
                loc = self.locations[probe]
                return Location(loc.file, loc.line, key)
            probe = probe.rpartition(".")[0]
        return Location(self.source, 1, key)
