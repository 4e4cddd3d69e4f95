"""The one judgement cache: the classification (pglast), the verdicts and the ready action
per (group, exact text), so a repeated statement costs one dictionary lookup.

A provably side-effect-free single statement is also cached by *shape*: its text with every
constant replaced by ``$n`` (pglast's ``normalize``, a C call of a few microseconds).  What
the proxy decides about such a read — kind, tables, columns, masked or allowed, fingerprint —
depends on its structure only, never on a constant's value (no function, no locking clause,
no writable CTE: see :func:`policyc.proxy.judge.effects.side_effect_free`), so the same point
lookup with another id costs a normalisation instead of a parse, a JSON walk and a verdict.
Only the statement text of the record is the query's own.

The judge also remembers the planner's row estimates of such reads (``rows_over``): see
:meth:`Judge.known_estimate`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from pglast import parser as pg_parser

from policyc.policy.model import Group, Policy
from policyc.proxy.judge.action import RUN, Action, action_for, counts_rows, stop_index
from policyc.proxy.judge.classify import classify
from policyc.proxy.judge.effects import combined_scope
from policyc.proxy.judge.fingerprint import fingerprint, text_fingerprint
from policyc.proxy.judge.registry import Registry
from policyc.proxy.judge.statement import MAX_LENGTH, Classification, Scope, StatementInfo
from policyc.proxy.judge.verdict import Verdict, judge_all

#: Longest text kept in a cache (exact text or shape).
MAX_CACHED_TEXT: Final = 16_384
_INFO_FIELDS: Final = tuple(field.name for field in dataclasses.fields(StatementInfo))
#: How long a planner estimate stands for its statement shape, and how far under the row
#: limit it must be to stand at all.
ESTIMATE_SECONDS: Final = 60.0
ESTIMATE_MARGIN: Final = 100


@dataclass(frozen=True)
class Judgement:
    """Everything the session needs about one SQL string, judged for one group."""

    classification: Classification
    verdicts: tuple[Verdict, ...]
    fingerprint: str
    # per statement, what its audit record says: (kind, tables, PHI columns), computed once
    audit_fields: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...]], ...] = ()
    # every statement is a provably side-effect-free read the group may run as it is: the
    # proxy may send it upstream while its record is being made durable (the answer waits)
    side_effect_free: bool = False
    # how far the effects of the whole string can reach, for a string the group may run as
    # it is (else "any"): see policyc.proxy.judge.effects.effect_scope and combined_scope
    scope: Scope = "any"
    # what the session does with the string: run it, refuse it at a statement, or hold it
    action: Action = RUN
    # per statement, whether its result rows count against the group's rows_over, by the
    # tables the statement names itself (see policyc.proxy.judge.action.counts_rows)
    row_limited: tuple[bool, ...] = ()

    @property
    def blocked_index(self) -> int | None:
        """Index of the first statement that must not run (blocked or needing approval)."""
        return stop_index(self.verdicts)


def single_statement_text(sql: str) -> str | None:
    """The text the classifier records for ``sql`` when that is plainly one statement (no
    semicolon but a final one, no comment); None when it cannot tell without parsing."""
    body = sql.strip()
    if body.endswith(";"):
        body = body[:-1].rstrip()
    if not body or ";" in body or "--" in body or "/*" in body:
        return None
    return body


def _retexted(found: Judgement, text: str) -> Judgement:
    """``found`` (one statement) with the statement's text ``text``: what two
    ``dataclasses.replace`` calls give, without their introspection (it cost a few
    microseconds on every simple-protocol read served from the shape cache)."""
    info = found.classification.statements[0]
    own = object.__new__(StatementInfo)
    for name in _INFO_FIELDS:
        object.__setattr__(own, name, getattr(info, name))
    object.__setattr__(own, "text", text)
    judgement = object.__new__(Judgement)
    judgement.__dict__.update(found.__dict__)
    object.__setattr__(judgement, "classification", Classification(statements=(own,)))
    return judgement


class Judge:
    """Judges SQL strings for groups, and remembers: shared by every session of a proxy;
    bounded."""

    def __init__(self, policy: Policy, max_statement_bytes: int, maxsize: int = 20_000,
                 registry: Registry | None = None) -> None:
        self.policy = policy
        self.registry = registry
        self.classifier = ClassifierCache(maxsize, max_length=max_statement_bytes)
        self._cache: OrderedDict[tuple[str, str], Judgement] = OrderedDict()
        self._shapes: OrderedDict[tuple[str, str], Judgement] = OrderedDict()
        self._estimates: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._maxsize = maxsize
        self._tables: dict[str, tuple[Group, frozenset[str]]] = {}
        self.shape_hits = 0

    def judge(self, group: Group, sql: str) -> Judgement:
        """The judgement of ``sql`` run by an agent of ``group``."""
        key = (group.name, sql)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        shaped = self._by_shape(group, sql)
        if shaped is not None:
            return shaped
        classification = self.classifier.classify(sql)
        verdicts = judge_all(classification, group, self.policy, self.registry)
        # refused text is not parsed again: it has the fallback fingerprint
        print_ = fingerprint(sql) if classification.error is None else text_fingerprint(sql)
        statements = classification.statements
        fields = tuple(
            (statements[i].kind if i < len(statements) else None,
             tuple(sorted(str(t) for t in verdict.tables)),
             tuple(sorted(str(c) for c in verdict.phi_columns)))
            for i, verdict in enumerate(verdicts)
        )
        runs_as_is = bool(statements) and classification.error is None and all(
            verdict.outcome.runs_as_is for verdict in verdicts)
        pure = runs_as_is and all(info.side_effect_free for info in statements)
        scope = combined_scope([info.scope for info in statements]) if runs_as_is else "any"
        policy_tables = self._policy_tables(group)
        limited = tuple(counts_rows(kind, tables, policy_tables) for kind, tables, _ in fields)
        judgement = Judgement(classification, verdicts, print_, fields, pure, scope,
                             action_for(classification, verdicts), limited)
        if len(sql) <= MAX_CACHED_TEXT:
            self._remember(self._cache, key, judgement)
            if pure and len(statements) == 1 and \
                    single_statement_text(sql) == statements[0].text:
                try:
                    shape = str(pg_parser.normalize(sql))
                except pg_parser.ParseError:
                    pass
                else:
                    self._remember(self._shapes, (group.name, shape), judgement)
        return judgement

    def _policy_tables(self, group: Group) -> frozenset[str]:
        found = self._tables.get(group.name)
        if found is None or found[0] is not group:
            found = (group, frozenset(str(t) for t in group.tables()))
            self._tables[group.name] = found
        return found[1]

    def _by_shape(self, group: Group, sql: str) -> Judgement | None:
        """The judgement of an earlier read of the same shape, with this query's text."""
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
        if found.classification.statements[0].text == text:
            return found
        return _retexted(found, text)

    def _remember(self, cache: OrderedDict[tuple[str, str], Judgement], key: tuple[str, str],
                  judgement: Judgement) -> None:
        cache[key] = judgement
        if len(cache) > self._maxsize:
            cache.popitem(last=False)

    # ---- planner estimates (rows_over) ------------------------------------------------

    def known_estimate(self, group: Group, judgement: Judgement, limit: int,
                       now: float) -> int | None:
        """A recent planner estimate for this statement shape (fingerprint) and group, if it
        was far under ``limit`` (by :data:`ESTIMATE_MARGIN`); None means "ask the planner".

        The estimate only decides whether a statement is held *before* it runs; the rows
        actually streamed are counted for every statement whatever it said.
        """
        found = self._estimates.get((group.name, judgement.fingerprint))
        if found is None:
            return None
        at, estimate = found
        if now - at > ESTIMATE_SECONDS or estimate * ESTIMATE_MARGIN > limit:
            return None
        return estimate

    def note_estimate(self, group: Group, judgement: Judgement, estimate: int,
                      now: float) -> None:
        key = (group.name, judgement.fingerprint)
        self._estimates[key] = (now, estimate)
        self._estimates.move_to_end(key)
        if len(self._estimates) > self._maxsize:
            self._estimates.popitem(last=False)


class ClassifierCache:
    """Bounded LRU of classifications keyed by exact SQL text.

    Not thread-safe (one per asyncio loop).  Texts longer than ``max_key_length`` characters
    are classified every time rather than pinned in memory.
    """

    def __init__(
        self,
        maxsize: int = 10_000,
        *,
        max_length: int = MAX_LENGTH,
        max_key_length: int = 16_384,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.max_length = max_length
        self.max_key_length = max_key_length
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Classification] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def classify(self, sql: str) -> Classification:
        """Cached :func:`classify`."""
        entries = self._entries
        found = entries.get(sql)
        if found is not None:
            entries.move_to_end(sql)
            self.hits += 1
            return found
        self.misses += 1
        result = classify(sql, max_length=self.max_length)
        if len(sql) <= self.max_key_length:
            entries[sql] = result
            if len(entries) > self.maxsize:
                entries.popitem(last=False)
        return result

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0
