"""The judge's ready answer for a SQL string: run it, refuse it at a statement, or hold it.

The verdicts say what the policy thinks of each statement; the session needs one thing to do.
:func:`action_for` turns the verdicts into that once, when the string is judged (and cached
with it), so every route (simple query, Parse, EXECUTE) reads the same answer instead of
interpreting a list of verdicts each in its own way.  Pure data; no I/O.

Rules, in order:

1. a string that could not be classified is refused at its first statement with the
   classifier's SQLSTATE (42601 syntax, 54000 too long, 54001 too complex, XX000 fault);
2. a string whose statements all run as they are (allowed or masked) runs, and so does an
   empty string;
3. otherwise the first statement that is blocked or needs approval stops the string: when
   nothing in it is blocked outright, it is *held* for a human there; else it is refused
   there (42501), and the statements before it run while those after it never do.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from policyc.errors import SqlStateError, lookup
from policyc.proxy.judge.statement import Classification, StatementKind
from policyc.proxy.judge.verdict import BLOCKED_SQLSTATE, Verdict
from policyc.vocab import Outcome

#: Statement kinds whose result rows count against the group's ``rows_over``: reads, writes
#: (their RETURNING rows are a read), EXECUTE (runs a prepared statement that may be any of
#: them); None: the extended protocol's unparsed text.
ROW_LIMITED_KINDS: Final[frozenset[StatementKind | None]] = frozenset(
    {"select", "copy_out", "fetch", "execute", "insert", "update", "delete", "merge",
     "declare_cursor", None})


def counts_rows(kind: StatementKind | None, tables: Collection[str],
                policy_tables: Collection[str]) -> bool:
    """Whether a statement's result rows count against ``rows_over``: a kind that returns
    rows, touching a table of the policy (``str`` of the table names; catalog rows never
    count).  A statement that runs another by name (EXECUTE) is limited by what the name
    holds, which only the session knows: it passes the tables of that statement."""
    return kind in ROW_LIMITED_KINDS and not frozenset(policy_tables).isdisjoint(tables)


@dataclass(frozen=True, slots=True)
class Run:
    """Every statement of the string runs as it is."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The statement at ``index`` is refused: the client gets ``sqlstate`` and ``message``,
    its record says ``reason``; the statements before it run, those after it do not."""

    index: int
    sqlstate: str
    message: str
    reason: str | None

    def error(self) -> SqlStateError:
        """The refusal as the error class of its SQLSTATE."""
        return lookup(self.sqlstate)(self.message)


@dataclass(frozen=True, slots=True)
class Hold:
    """The statement at ``index`` needs a human's approval for ``shapes`` (nothing in the
    string is blocked outright); the statements before it run first."""

    index: int
    shapes: frozenset[str]
    reason: str | None

    @property
    def shapes_text(self) -> str:
        """The shapes as the agent and the approver read them."""
        return ", ".join(sorted(self.shapes)) or "policy"

    def without_approvers(self) -> Refuse:
        """What the client gets when the policy names nobody who could approve."""
        return Refuse(self.index, BLOCKED_SQLSTATE, (
            f"policyc: this statement needs approval ({self.shapes_text}) but the policy "
            "names no approvers, so it was not run"), self.reason)


Action = Run | Refuse | Hold
RUN: Final = Run()


def stop_index(verdicts: Sequence[Verdict]) -> int | None:
    """Index of the first statement that must not run as it is (blocked or needing
    approval); None when every one may."""
    for index, verdict in enumerate(verdicts):
        if not verdict.outcome.runs_as_is:
            return index
    return None


def action_for(classification: Classification, verdicts: Sequence[Verdict]) -> Action:
    """The action for a string with these verdicts (see the module's rules)."""
    if classification.error is not None:
        verdict = verdicts[0]
        return Refuse(0, verdict.sqlstate or BLOCKED_SQLSTATE,
                      f"policyc: statement refused: {verdict.reason}", verdict.reason)
    stop = stop_index(verdicts)
    if stop is None:
        return RUN
    verdict = verdicts[stop]
    outcomes = {v.outcome for v in verdicts}
    if Outcome.BLOCKED not in outcomes:
        return Hold(stop, verdict.approval_shapes, verdict.reason)
    if verdict.outcome == Outcome.NEEDS_APPROVAL:
        # a held statement before a blocked one: the string as a whole cannot run
        shapes = ", ".join(sorted(verdict.approval_shapes)) or "policy"
        return Refuse(stop, BLOCKED_SQLSTATE, (
            f"policyc: this statement needs approval ({shapes}); approvals are not "
            "available on this proxy yet, so it was not run"), verdict.reason)
    return Refuse(stop, verdict.sqlstate or BLOCKED_SQLSTATE,
                  f"policyc: statement blocked: {verdict.reason or 'not allowed by policy'}",
                  verdict.reason)
