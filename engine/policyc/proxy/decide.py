"""Statement decisions for a group, cached: the classification (pglast) and the verdict per
(group, exact text), so a repeated statement costs one dictionary lookup."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from policyc.policy.model import Group, Policy
from policyc.proxy.classify import Classification, ClassifierCache, fingerprint
from policyc.proxy.verdict import Verdict, decide_all


@dataclass(frozen=True)
class Decision:
    """Everything the session needs about one SQL string."""

    classification: Classification
    verdicts: tuple[Verdict, ...]
    fingerprint: str
    # per statement, what its audit record says: (kind, tables, PHI columns), computed once
    audit_fields: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...]], ...] = ()

    @property
    def blocked_index(self) -> int | None:
        """Index of the first statement that must not run (blocked or needing approval)."""
        for index, verdict in enumerate(self.verdicts):
            if verdict.decision in ("blocked", "needs_approval"):
                return index
        return None


class Decider:
    """Shared by every session of a proxy; bounded."""

    def __init__(self, policy: Policy, max_statement_bytes: int, maxsize: int = 20_000) -> None:
        self.policy = policy
        self.classifier = ClassifierCache(maxsize, max_length=max_statement_bytes)
        self._cache: OrderedDict[tuple[str, str], Decision] = OrderedDict()
        self._maxsize = maxsize

    def decide(self, group: Group, sql: str) -> Decision:
        key = (group.name, sql)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        classification = self.classifier.classify(sql)
        verdicts = decide_all(classification, group, self.policy)
        if classification.error is None:
            print_ = fingerprint(sql)
        else:  # do not parse refused text again
            print_ = "text:" + hashlib.sha256(sql.encode("utf-8", "replace")).hexdigest()[:32]
        statements = classification.statements
        fields = tuple(
            (statements[i].kind if i < len(statements) else None,
             tuple(sorted(str(t) for t in verdict.tables)),
             tuple(sorted(str(c) for c in verdict.phi_columns)))
            for i, verdict in enumerate(verdicts)
        )
        decision = Decision(classification, verdicts, print_, fields)
        if len(sql) <= 16_384:
            self._cache[key] = decision
            if len(self._cache) > self._maxsize:
                self._cache.popitem(last=False)
        return decision
