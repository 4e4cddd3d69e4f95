"""The unit of plan and apply: one managed database object and the SQL that makes it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from policyc.compiler.render import Template

FAMILIES = ("roles", "runtime", "grants", "views", "row-security", "triggers")

# execution order of object kinds when creating or updating; drops run in reverse
KIND_ORDER = {
    "runtime-role": 0,
    "runtime": 1,
    "role": 2,
    "schema": 3,
    "base-grants": 4,
    "view": 5,
    "rls": 6,
    "trigger": 7,
    "privileges": 8,
    "approvers": 9,
}

Sql = tuple[str, ...] | Template
"""Statements as such, or a template rendered only when they are needed."""


def _statements(sql: Sql) -> tuple[str, ...]:
    return sql.statements if isinstance(sql, Template) else sql


def _digest(sql: Sql) -> str:
    if isinstance(sql, Template):
        return sql.digest
    return hashlib.sha256(json.dumps(list(sql)).encode()).hexdigest()


@dataclass(frozen=True)
class DesiredObject:
    """What the policy wants one object to be.

    ``create`` builds it from nothing, ``update`` brings an existing (possibly hand-edited) one
    in line, ``drop`` removes it and is stored in the ledger so an object that leaves the
    policy can still be dropped. ``semantic`` describes the access it grants, for hazard
    analysis.

    The ledger records :meth:`ledger_hash`: :attr:`desired_hash` (of the SQL and semantic) and
    :attr:`input_hash` (of what the SQL is rendered from).  An unchanged object is recognised
    by its input hash, without rendering; ledgers written before input hashes existed, or after
    templates changed, fall back to comparing the SQL.
    """

    key: str
    family: str
    create: Sql
    drop: Sql
    semantic: Mapping[str, Any]
    update: Sql | None = None
    adopt_existing: bool = False  # shared objects (runtime roles) are taken over when present
    hash_extra: str = ""

    @property
    def create_sql(self) -> tuple[str, ...]:
        return _statements(self.create)

    @property
    def drop_sql(self) -> tuple[str, ...]:
        return _statements(self.drop)

    @property
    def update_sql(self) -> tuple[str, ...] | None:
        return None if self.update is None else _statements(self.update)

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def order(self) -> int:
        return KIND_ORDER[self.kind]

    @cached_property
    def _semantic_text(self) -> str:
        return json.dumps(self.semantic, sort_keys=True)

    @cached_property
    def desired_hash(self) -> str:
        """Of the SQL that creates the object, its semantic and ``hash_extra`` (renders)."""
        digest = hashlib.sha256()
        for statement in self.create_sql:
            digest.update(statement.encode())
            digest.update(b"\x00")
        digest.update(self._semantic_text.encode())
        digest.update(self.hash_extra.encode())
        return digest.hexdigest()[:32]

    @cached_property
    def input_hash(self) -> str:
        """Of what the creating SQL is rendered from, the semantic and ``hash_extra``; equal
        input hashes mean equal desired hashes (never renders)."""
        digest = hashlib.sha256(_digest(self.create).encode())
        digest.update(b"\x00" + self._semantic_text.encode())
        digest.update(b"\x00" + self.hash_extra.encode())
        return digest.hexdigest()[:32]

    def matches(self, recorded: str) -> bool:
        """Whether ``recorded`` (a ledger hash) is of this very object: same SQL, semantic."""
        sql_hash, _, input_hash = recorded.partition(":")
        if input_hash and input_hash == self.input_hash:
            return True
        return sql_hash == self.desired_hash

    def ledger_hash(self, previous: str | None = None) -> str:
        """What the ledger records for this object, ``desired:input``; reuses the desired
        hash of ``previous`` (the recorded one) when the inputs are the same."""
        if previous is not None and previous.partition(":")[2] == self.input_hash:
            return previous
        return f"{self.desired_hash}:{self.input_hash}"

    def statements_to_update(self, old_drop: tuple[str, ...]) -> tuple[str, ...]:
        if self.update is not None:
            return _statements(self.update)
        return (*old_drop, *self.create_sql)


@dataclass(frozen=True)
class Compiled:
    """Everything a policy compiles to, in execution order."""

    objects: tuple[DesiredObject, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def by_key(self) -> dict[str, DesiredObject]:
        return {o.key: o for o in self.objects}
