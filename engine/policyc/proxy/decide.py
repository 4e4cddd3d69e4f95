"""Statement decisions for a group, cached: the classification (pglast) and the verdict per
(group, exact text), so a repeated statement costs one dictionary lookup.

A provably side-effect-free single statement is also cached by *shape*: its text with every
constant replaced by ``$n`` (pglast's ``normalize``, a C call of a few microseconds).  What
the proxy decides about such a read — kind, tables, columns, masked or allowed, fingerprint —
depends on its structure only, never on a constant's value (no function, no locking clause,
no writable CTE: see :func:`policyc.proxy.classify.side_effect_free`), so the same point
lookup with another id costs a normalisation instead of a parse, a JSON walk and a verdict.
Only the statement text of the record is the query's own.

The decider also remembers the planner's row estimates of such reads (``rows_over``): see
:meth:`Decider.known_estimate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from pglast import parser as pg_parser

from policyc.policy.model import Group, Policy
from policyc.proxy.classify import Classification, ClassifierCache, Scope, fingerprint
from policyc.proxy.registry import Registry
from policyc.proxy.verdict import Verdict, decide_all

#: Longest text kept in a cache (exact text or shape).
MAX_CACHED_TEXT: Final = 16_384
#: How long a planner estimate stands for its statement shape, and how far under the row
#: limit it must be to stand at all.
ESTIMATE_SECONDS: Final = 60.0
ESTIMATE_MARGIN: Final = 100


@dataclass(frozen=True)
class Decision:
    """Everything the session needs about one SQL string."""

    classification: Classification
    verdicts: tuple[Verdict, ...]
    fingerprint: str
    # per statement, what its audit record says: (kind, tables, PHI columns), computed once
    audit_fields: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...]], ...] = ()
    # every statement is a provably side-effect-free read the group may run as it is: the
    # proxy may send it upstream while its record is being made durable (the answer waits)
    side_effect_free: bool = False
    # how far the effects of the whole string can reach, for a string the group may run as
    # it is (else "any"): see policyc.proxy.classify.effect_scope and combined_scope
    scope: Scope = "any"

    @property
    def blocked_index(self) -> int | None:
        """Index of the first statement that must not run (blocked or needing approval)."""
        for index, verdict in enumerate(self.verdicts):
            if verdict.decision in ("blocked", "needs_approval"):
                return index
        return None


def single_statement_text(sql: str) -> str | None:
    """The text the classifier records for ``sql`` when that is plainly one statement (no
    semicolon but a final one, no comment); None when it cannot tell without parsing."""
    body = sql.strip()
    if body.endswith(";"):
        body = body[:-1].rstrip()
    if not body or ";" in body or "--" in body or "/*" in body:
        return None
    return body


_SCOPE_ORDER: Final[dict[str, int]] = {
    "none": 0, "rollback": 1, "transaction": 2, "commit": 3, "any": 4}


def combined_scope(scopes: list[Scope]) -> Scope:
    """The scope of statements run one after another: the widest of them, except that a
    ROLLBACK or a COMMIT mixed with anything that changes something (before it, or after it
    where it would run in autocommit) makes the whole ``any``: one string is one unit of
    overlap, and a COMMIT may only overlap when every record before it is durable."""
    widest: Scope = "none"
    for scope in scopes:
        if _SCOPE_ORDER[scope] > _SCOPE_ORDER[widest]:
            widest = scope
    ends = {"rollback", "commit"} & set(scopes)
    if ends and (len(ends) > 1 or set(scopes) - ends - {"none"}):
        return "any"
    return widest


class Decider:
    """Shared by every session of a proxy; bounded."""

    def __init__(self, policy: Policy, max_statement_bytes: int, maxsize: int = 20_000,
                 registry: Registry | None = None) -> None:
        self.policy = policy
        self.registry = registry
        self.classifier = ClassifierCache(maxsize, max_length=max_statement_bytes)
        self._cache: OrderedDict[tuple[str, str], Decision] = OrderedDict()
        self._shapes: OrderedDict[tuple[str, str], Decision] = OrderedDict()
        self._estimates: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._maxsize = maxsize
        self.shape_hits = 0

    def decide(self, group: Group, sql: str) -> Decision:
        key = (group.name, sql)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        shaped = self._by_shape(group, sql)
        if shaped is not None:
            return shaped
        classification = self.classifier.classify(sql)
        verdicts = decide_all(classification, group, self.policy, self.registry)
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
        runs_as_is = bool(statements) and classification.error is None and all(
            verdict.decision in ("allowed", "masked") for verdict in verdicts)
        pure = runs_as_is and all(info.side_effect_free for info in statements)
        scope = combined_scope([info.scope for info in statements]) if runs_as_is else "any"
        decision = Decision(classification, verdicts, print_, fields, pure, scope)
        if len(sql) <= MAX_CACHED_TEXT:
            self._remember(self._cache, key, decision)
            if pure and len(statements) == 1 and \
                    single_statement_text(sql) == statements[0].text:
                try:
                    shape = str(pg_parser.normalize(sql))
                except pg_parser.ParseError:
                    pass
                else:
                    self._remember(self._shapes, (group.name, shape), decision)
        return decision

    def _by_shape(self, group: Group, sql: str) -> Decision | None:
        """The decision of an earlier read of the same shape, with this query's text."""
        if not self._shapes or len(sql) > MAX_CACHED_TEXT or "\x00" in sql:
            return None
        text = single_statement_text(sql)
        if text is None:
            return None
        try:
            shape = str(pg_parser.normalize(sql))
        except pg_parser.ParseError:
            return None
        key = (group.name, shape)
        found = self._shapes.get(key)
        if found is None:
            return None
        self._shapes.move_to_end(key)
        self.shape_hits += 1
        info = found.classification.statements[0]
        if info.text == text:
            return found
        own = Classification(statements=(dataclasses.replace(info, text=text),))
        return dataclasses.replace(found, classification=own)

    def _remember(self, cache: OrderedDict[tuple[str, str], Decision], key: tuple[str, str],
                  decision: Decision) -> None:
        cache[key] = decision
        if len(cache) > self._maxsize:
            cache.popitem(last=False)

    # ---- planner estimates (rows_over) ------------------------------------------------

    def known_estimate(self, group: Group, decision: Decision, limit: int,
                       now: float) -> int | None:
        """A recent planner estimate for this statement shape (fingerprint) and group, if it
        was far under ``limit`` (by :data:`ESTIMATE_MARGIN`); None means "ask the planner".

        The estimate only decides whether a statement is held *before* it runs; the rows
        actually streamed are counted for every statement whatever it said.
        """
        found = self._estimates.get((group.name, decision.fingerprint))
        if found is None:
            return None
        at, estimate = found
        if now - at > ESTIMATE_SECONDS or estimate * ESTIMATE_MARGIN > limit:
            return None
        return estimate

    def note_estimate(self, group: Group, decision: Decision, estimate: int,
                      now: float) -> None:
        key = (group.name, decision.fingerprint)
        self._estimates[key] = (now, estimate)
        self._estimates.move_to_end(key)
        if len(self._estimates) > self._maxsize:
            self._estimates.popitem(last=False)
