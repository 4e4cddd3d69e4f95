"""Statements that name prepared statements and cursors: SQL PREPARE/EXECUTE/DEALLOCATE,
DECLARE/FETCH/MOVE/CLOSE and DISCARD ALL, and waiting for the server's answers about names.

A run by name gets the judgement of what the name holds (a statement that needs approval, or
is refused, runs only by itself, never by name), and its record that statement's tables and
PHI columns; a name that is unknown, or whose state the proxy cannot vouch for, is refused.
Creations and closes are noted for the server's answers (see :mod:`policyc.proxy.names`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from policyc.proxy.audit.records import StatementRecord
from policyc.proxy.judge.cache import Judge, Judgement
from policyc.proxy.names import Found, NameBook, Refuse, Slot, Wait, WaitAnswers, name_refusal
from policyc.proxy.session.gate import RecordGate
from policyc.proxy.session.refusals import BLOCKED_SQLSTATE, ceiling_refusal, sets
from policyc.proxy.session.state import Portal, Prepared, SessionState

_V = TypeVar("_V")
#: Statement kinds that create, run or close something by name.
NAMED_KINDS: Final = frozenset({"prepare", "execute", "deallocate", "declare_cursor", "fetch",
                                "close_cursor", "discard"})


@dataclass
class NamedRuns:
    """What :meth:`Names.named_statements` found in one query."""

    stop: int | None = None
    refusal: tuple[str, str] | None = None
    effects: dict[int, Callable[[bool], None]] = field(default_factory=dict)
    touches: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    carries: dict[int, Portal] = field(default_factory=dict)  # FETCH: the cursor's run

    def abandon(self) -> None:
        """The query will not be sent: what it would have created or closed did not happen."""
        effects, self.effects = self.effects, {}
        for effect in effects.values():
            effect(False)

    def enrich(self, index: int, record: StatementRecord) -> StatementRecord:
        """The record of a run by name carries what it runs touches."""
        found = self.touches.get(index)
        if found is None or not (found[0] or found[1]):
            return record
        return dataclasses.replace(record, tables=tuple(sorted({*record.tables, *found[0]})),
                                   phi_columns=tuple(sorted({*record.phi_columns, *found[1]})))


NO_NAMES: Final = NamedRuns()  # a query that names nothing (never changed)


def _both(closes: tuple[Callable[[bool], None], ...], ok: bool) -> None:
    for close in closes:
        close(ok)


class Names:
    """Judges runs by name and waits, when it must, for the server's answers about names."""

    def __init__(self, state: SessionState, gate: RecordGate, judge: Judge) -> None:
        self.state = state
        self.gate = gate
        self.judge = judge

    async def named_statements(self, decision: Judgement, out: list[bytes],
                               upto: int) -> NamedRuns:
        """The named statements among the first ``upto`` of ``decision`` (see the module
        docstring), and a SET over the role's timeout ceilings."""
        state = self.state
        named = NamedRuns()
        for index, info in enumerate(decision.classification.statements[:upto]):
            kind = info.kind
            refusal = ceiling_refusal(info, state.timeout_ceilings, state.group) \
                if sets(info) else None
            if refusal is not None:
                named.stop, named.refusal = index, refusal
                break
            if kind not in NAMED_KINDS or (kind == "discard" and info.name != "all"):
                continue
            name = info.name
            batch = state.batch
            if kind in ("prepare", "declare_cursor"):
                assert name is not None
                book: NameBook[Any] = state.statements if kind == "prepare" else state.portals
                refusal = await self.may_create(book, name, out)
                if refusal is None:
                    own = self.judge.judge(state.group, info.text)
                    prepared = Prepared(info.text, own)
                    value: Prepared | Portal = prepared if kind == "prepare" \
                        else Portal(prepared, [], cursor=True)
                    _slot, answered = book.create(name, value, state.batch,
                                                  holdable=info.holdable)
                    named.effects[index] = answered
            elif kind in ("execute", "fetch"):
                assert name is not None
                target: Found[Any] | Refuse = await self.find(
                    state.statements if kind == "execute" else state.portals, name, out)
                if isinstance(target, Refuse):
                    refusal = (target.sqlstate, target.message)
                else:
                    found = target.slot.value
                    prepared = found if isinstance(found, Prepared) else found.prepared
                    if not prepared.runs_as_is:
                        refusal = (BLOCKED_SQLSTATE, (
                            "policyc: statement blocked: what this name holds was refused or "
                            "needs approval; such a statement runs only by itself (its own "
                            "text, or the protocol's Execute), never through EXECUTE, FETCH "
                            "or MOVE"))
                    else:
                        named.touches[index] = prepared.touches()
                        if isinstance(found, Portal) and info.kind == "fetch":
                            named.carries[index] = found
            elif name is not None and kind in ("deallocate", "close_cursor") and \
                    (too_long := name_refusal(name, "statement" if kind == "deallocate"
                                              else "portal")) is not None:
                refusal = (too_long.sqlstate, too_long.message)
            elif kind == "deallocate":
                named.effects[index] = state.statements.close_all(batch) if name is None \
                    else state.statements.close(name, batch)
            elif kind == "close_cursor":
                named.effects[index] = state.portals.close_all(batch) if name is None \
                    else state.portals.close(name, batch)
            elif kind == "discard":
                closes = (state.statements.close_all(batch), state.portals.close_all(batch))
                named.effects[index] = functools.partial(_both, closes)
            if refusal is not None:
                named.stop, named.refusal = index, refusal
                # what this query created before the refused statement still runs
                break
        return named

    async def may_create(self, book: NameBook[Any], name: str,
                         out: list[bytes]) -> tuple[str, str] | None:
        """None when a creation of ``name`` may be sent now; else the refusal (a name the
        server holds already).  Waits while an earlier batch's answer about it is due."""
        state = self.state
        check = book.check_create(name, state.batch, state.answered)
        while True:
            if isinstance(check, Wait):
                await self._settle(check.slot, out)
                check = book.check_create(name, state.batch, state.answered)
                continue
            if isinstance(check, WaitAnswers):
                await self._settle_batches(out)
                check = book.check_create(name, state.batch, state.answered)
                continue
            return None if check is None else (check.sqlstate, check.message)

    async def find(self, book: NameBook[_V], name: str, out: list[bytes]) -> Found[_V] | Refuse:
        """What a run of ``name`` sent now runs (waiting while an earlier batch's answer
        about it is due), or why it may not run."""
        found = book.lookup(name, self.state.batch)
        while isinstance(found, Wait):
            await self._settle(found.slot, out)
            found = book.lookup(name, self.state.batch)
        return found

    async def _settle_batches(self, out: list[bytes]) -> None:
        """Send what is queued and wait until the server has answered every earlier batch."""
        await self.gate.flush(out)
        state = self.state
        wanted = state.batch - 1
        while state.answered < wanted:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.answer_waiters.append(functools.partial(_wake, waiter))
            await waiter

    async def _settle(self, slot: Slot[Any], out: list[bytes]) -> None:
        """Send what is queued (the earlier batch's Sync is in it or already sent, so the
        server will answer) and wait for the server's answer about ``slot``."""
        await self.gate.flush(out)
        if not slot.unsettled:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.waiters.append(functools.partial(_wake, waiter))
        await waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
