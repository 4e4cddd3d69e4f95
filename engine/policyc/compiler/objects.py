"""The unit of plan and apply: one managed database object and the SQL that makes it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class DesiredObject:
    """What the policy wants one object to be.

    ``create_sql`` builds it from nothing, ``update_sql`` brings an existing (possibly hand-
    edited) one in line, ``drop_sql`` removes it and is stored in the ledger so an object that
    leaves the policy can still be dropped. ``semantic`` describes the access it grants, for
    hazard analysis.
    """

    key: str
    family: str
    create_sql: tuple[str, ...]
    drop_sql: tuple[str, ...]
    semantic: Mapping[str, Any]
    update_sql: tuple[str, ...] | None = None
    adopt_existing: bool = False  # shared objects (runtime roles) are taken over when present
    hash_extra: str = ""

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def order(self) -> int:
        return KIND_ORDER[self.kind]

    @property
    def desired_hash(self) -> str:
        digest = hashlib.sha256()
        for statement in self.create_sql:
            digest.update(statement.encode())
            digest.update(b"\x00")
        digest.update(json.dumps(self.semantic, sort_keys=True).encode())
        digest.update(self.hash_extra.encode())
        return digest.hexdigest()[:32]

    def statements_to_update(self, old_drop: tuple[str, ...]) -> tuple[str, ...]:
        if self.update_sql is not None:
            return self.update_sql
        return (*old_drop, *self.create_sql)


@dataclass(frozen=True)
class Compiled:
    """Everything a policy compiles to, in execution order."""

    objects: tuple[DesiredObject, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def by_key(self) -> dict[str, DesiredObject]:
        return {o.key: o for o in self.objects}
