"""What the classifier says of a statement: its kind, what it touches, its risky shapes.

Holds no policy decision (that is :mod:`policyc.proxy.judge.verdict`).  Tables are kept as
written: an unqualified name is a :class:`TableName` whose schema is :data:`UNQUALIFIED`
(``""``), because the agent's ``search_path`` is its group's view schema and only the verdict
knows which base table that name stands for.  Column references whose qualifier cannot be
tied to a table of the statement use :data:`ANY_TABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from policyc.policy.model import TableName
from policyc.vocab import Shape

StatementKind = Literal[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy_in",
    "copy_out",
    "ddl",
    "truncate",
    "set",
    "show",
    "reset",
    "transaction",
    "prepare",
    "execute",
    "deallocate",
    "declare_cursor",
    "fetch",
    "close_cursor",
    "explain",
    "do",
    "call",
    "listen",
    "notify",
    "lock",
    "vacuum",
    "discard",
    "role",
    "other",
]

#: How far a statement's effects can reach (see
#: :func:`~policyc.proxy.judge.effects.effect_scope`): ``none`` (a side-effect-free read,
#: BEGIN, SAVEPOINT ...), ``rollback`` (ROLLBACK/ABORT: undoes, and ends the transaction
#: block), ``transaction`` (changes data only inside the open transaction: nothing of it
#: outlives a rollback), ``commit`` (COMMIT/END: makes what the transaction did last, and
#: does nothing else) and ``any``.
Scope = Literal["none", "rollback", "transaction", "commit", "any"]

#: Risky shapes a classification may carry (a superset of the policy's approvable shapes).
RISKY: Final[frozenset[Shape]] = frozenset(Shape)

#: Schema of a table name written without one (resolved later through the group's views).
UNQUALIFIED: Final = ""
WrittenTableName = TableName
"""A table name as the agent wrote it: ``schema`` is :data:`UNQUALIFIED` when none was written.

Not yet a policy table: :func:`policyc.proxy.judge.verdict.resolve_tables` maps it to base tables.
"""
#: Stand-in table for a column whose qualifier is absent or names no table of the statement.
ANY_TABLE: Final = TableName("", "")
#: A SET value that is not a literal (``SET x FROM CURRENT``, an expression).
NOT_CONSTANT: Final = "\x00not a constant"
#: Default ceiling on statement text, in UTF-8 bytes.
MAX_LENGTH: Final = 1_000_000

ColumnUse = tuple[WrittenTableName, str]
"""``(table, column)``; table may be :data:`ANY_TABLE`, column may be ``"*"``."""


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What one statement is and touches.  Holds no policy decision.

    ``setting`` is the lower-cased GUC of SET/RESET/SHOW (``"transaction"``,
    ``"session characteristics"``, ``"constraints"`` for the multi-forms, ``"all"`` for
    RESET ALL / SHOW ALL); ``name`` is the prepared statement or cursor name of
    PREPARE/EXECUTE/DEALLOCATE/DECLARE/FETCH/CLOSE.  ``side_effect_free`` is proven, never
    guessed: see :func:`~policyc.proxy.judge.effects.side_effect_free`.
    """

    kind: StatementKind
    text: str
    tables: frozenset[WrittenTableName] = frozenset()
    columns: frozenset[ColumnUse] = frozenset()
    risky: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    ctes: frozenset[str] = frozenset()
    setting: str | None = None
    name: str | None = None
    side_effect_free: bool = False
    scope: Scope = "any"
    # what SET/RESET gives the setting: the constant value as text (several for a list),
    # None for RESET / DEFAULT, or NOT_CONSTANT; empty for anything but SET/RESET
    values: tuple[str | None, ...] = ()
    holdable: bool = False  # DECLARE ... WITH HOLD: the cursor outlives its transaction
    # every function the statement calls, as written: (schema or "", name as the parser
    # gives it: unquoted names folded to lower case, quoted ones exact)
    calls: frozenset[tuple[str, str]] = frozenset()
    # schemas of operators written qualified (``OPERATOR(s.op)``)
    operator_schemas: frozenset[str] = frozenset()
    # every set_config(name, value, ...) call: (lower-cased setting, the value's text; None
    # for NULL, which resets; NOT_CONSTANT when not a literal), judged like SET
    config_calls: tuple[tuple[str, str | None], ...] = ()
    # relations the statement writes, as written (INSERT, UPDATE, DELETE, MERGE, COPY FROM;
    # data-modifying CTEs included)
    targets: frozenset[WrittenTableName] = frozenset()

    @property
    def tables_without_ctes(self) -> frozenset[TableName]:
        """Tables excluding unqualified references that name a CTE of the statement."""
        return frozenset(
            t for t in self.tables if not (t.schema == UNQUALIFIED and t.name in self.ctes)
        )


@dataclass(frozen=True)
class Classification:
    """The statements of one SQL string, or why it could not be classified.

    ``error_sqlstate`` is what a client should receive when ``error`` is set: 42601 (syntax),
    54000 (too long / NUL byte), 54001 (too complex), XX000 (classifier fault).
    """

    statements: tuple[StatementInfo, ...] = ()
    error: str | None = None
    error_sqlstate: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def risky(self) -> frozenset[str]:
        """Union of every statement's risky shapes."""
        out: frozenset[str] = frozenset()
        for info in self.statements:
            out |= info.risky
        return out

