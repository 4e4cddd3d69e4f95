"""What the server holds under each prepared-statement and portal name, as the proxy knows it.

An agent names server-side objects (Parse, Bind, SQL PREPARE, DECLARE) and later runs them by
name (Execute, SQL EXECUTE, FETCH, MOVE).  The proxy judges a run by what it believes the name
holds, so that belief must never differ from the server's: an agent that makes a creation
fail on the server (a duplicate name, a wrong parameter count) while the proxy believes it
succeeded would run something other than what was judged.  The rules, sans I/O:

* a creation is *pending* until the server answers it; it becomes ``ok`` on success and
  ``unknown`` on failure or when the server skipped it (after a failed Bind the old unnamed
  portal may survive; after a failed Parse the old statement may): nothing runs an
  ``unknown`` name until it is created again successfully or closed;
* a named creation over a name the proxy knows exists is refused as the server would refuse it;
* a run of a name that is still pending from an *earlier* batch (a Sync or Query in between)
  must wait until the server has answered (:meth:`NameBook.lookup` says ``wait``): inside its
  own batch a failed creation makes the server skip the rest, so it is safe at once;
* a close takes effect when the server confirms it; ``DEALLOCATE ALL`` / ``CLOSE ALL`` /
  ``DISCARD ALL`` close every name known when they were sent;
* portals end with their transaction: when the server says it is idle, every portal but a
  ``WITH HOLD`` cursor is gone (:meth:`NameBook.transaction_ended`).

A name the proxy never saw created (a cursor a function opened, say) is unknown to it, and a
run of it is refused: the proxy never forwards a run it cannot attribute to a judgement.

The server keys both namespaces by the first 63 bytes of a name (``NAMEDATALEN`` - 1), so two
names that differ only past that are one name to it: the proxy refuses any name longer than
that (42622) rather than keep a second notion of sameness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from policyc.errors import (
    DuplicateCursor,
    DuplicatePreparedStatement,
    InvalidCursorName,
    InvalidSqlStatementName,
    NameTooLong,
)

T = TypeVar("T")

State = Literal["pending", "ok", "unknown"]


@dataclass(eq=False)
class Slot(Generic[T]):
    """One name's belief: the value it was created with and how sure the proxy is."""

    value: T
    batch: int  # the batch that created it
    state: State = "pending"
    closing: int = 0  # closes sent and not answered yet
    op_batch: int = 0  # the batch of the latest creation or close sent
    holdable: bool = False
    waiters: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.op_batch = self.batch

    @property
    def unsettled(self) -> bool:
        return self.state == "pending" or self.closing > 0

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for wake in waiters:
            wake()

    def settle(self, state: State) -> None:
        self.state = state
        self.wake()


@dataclass(frozen=True)
class Found(Generic[T]):
    slot: Slot[T]


@dataclass(frozen=True)
class Wait(Generic[T]):
    """Ask again once the server has answered this slot's creation."""

    slot: Slot[T]


@dataclass(frozen=True)
class WaitAnswers:
    """Ask again once the server has answered every earlier batch (a transaction end may be
    on its way that drops the portal this name still holds in the proxy's belief)."""


@dataclass(frozen=True)
class Refuse:
    sqlstate: str
    message: str


Lookup = Found[T] | Wait[T] | Refuse


#: Longest name the server keeps whole (NAMEDATALEN - 1 bytes).
MAX_NAME_BYTES = 63


def name_refusal(name: str, kind: str) -> Refuse | None:
    """A name the server would truncate (so it could stand for another name) is refused."""
    if len(name) * 4 <= MAX_NAME_BYTES or len(name.encode("utf-8", "surrogatepass")) <= \
            MAX_NAME_BYTES:
        return None
    return Refuse(NameTooLong.sqlstate,
                  f"policyc: a {kind} name may be at most {MAX_NAME_BYTES} bytes long")


class NameBook(Generic[T]):
    """Names of one kind (``statement`` or ``portal``) and what the server holds under them."""

    def __init__(self, kind: Literal["statement", "portal"]) -> None:
        self.kind = kind
        self.slots: dict[str, Slot[T]] = {}

    def __len__(self) -> int:
        return len(self.slots)

    def peek(self, name: str) -> T | None:
        """The value last created under ``name``, whatever its state (for Describe)."""
        slot = self.slots.get(name)
        return None if slot is None else slot.value

    # ---- creating ------------------------------------------------------------------------

    def check_create(self, name: str, batch: int,
                     answered: int) -> Refuse | Wait[T] | WaitAnswers | None:
        """May a creation of ``name`` be sent now (``answered``: the last batch the server
        has answered)?  None: yes."""
        too_long = name_refusal(name, self.kind)
        if too_long is not None:
            return too_long
        slot = self.slots.get(name)
        if slot is None:
            return None
        if slot.unsettled and slot.op_batch != batch:
            return Wait(slot)
        if name == "":
            return None  # the unnamed statement and portal are replaced silently
        if slot.state == "ok" and not slot.closing:
            if self.kind == "portal" and not slot.holdable and answered < batch - 1:
                return WaitAnswers()
            return Refuse(*self._duplicate(name))
        # pending or closing in this very batch, or unknown: the server decides, and its
        # answer (success or failure) says what the name holds
        return None

    def create(self, name: str, value: T, batch: int, *,
               holdable: bool = False) -> tuple[Slot[T], Callable[[bool], None]]:
        """Record a creation being sent; returns the slot and the callback for its answer."""
        slot: Slot[T] = Slot(value, batch, holdable=holdable)
        self.slots[name] = slot

        def answered(ok: bool) -> None:
            slot.settle("ok" if ok else "unknown")

        return slot, answered

    # ---- running ---------------------------------------------------------------------------

    def lookup(self, name: str, batch: int) -> Lookup[T]:
        """What a run of ``name`` sent now would run."""
        too_long = name_refusal(name, self.kind)
        if too_long is not None:
            return too_long
        slot = self.slots.get(name)
        if slot is None:
            return Refuse(*self._missing(name))
        if slot.state == "unknown":
            return Refuse(InvalidSqlStatementName.sqlstate if self.kind == "statement"
                          else InvalidCursorName.sqlstate,
                          f"policyc: the {self._what(name)} is in a state the proxy cannot vouch "
                          "for (its last creation failed); close it and create it again")
        if slot.state == "pending" and slot.batch != batch:
            return Wait(slot)
        return Found(slot)

    # ---- closing ---------------------------------------------------------------------------

    def close(self, name: str, batch: int) -> Callable[[bool], None]:
        """Record a close of ``name`` being sent; returns the callback for its answer."""
        slot = self.slots.get(name)
        if slot is None:
            return _ignore
        return self._closing([(name, slot)], batch)

    def close_all(self, batch: int) -> Callable[[bool], None]:
        """``DEALLOCATE ALL`` / ``CLOSE ALL`` / ``DISCARD ALL`` being sent."""
        return self._closing(list(self.slots.items()), batch)

    def _closing(self, targets: list[tuple[str, Slot[T]]], batch: int) -> Callable[[bool], None]:
        for _name, slot in targets:
            slot.closing += 1
            slot.op_batch = max(slot.op_batch, batch)

        def answered(ok: bool) -> None:
            for name, slot in targets:
                slot.closing -= 1
                if ok and self.slots.get(name) is slot:
                    del self.slots[name]
                slot.wake()  # whoever waits asks again

        return answered

    def transaction_ended(self, through_batch: int) -> None:
        """The server is idle after ``through_batch``: its portals (not WITH HOLD cursors)
        created up to that batch are gone."""
        for name in [n for n, s in self.slots.items()
                     if not s.holdable and s.op_batch <= through_batch and not s.unsettled]:
            del self.slots[name]

    # ---- messages --------------------------------------------------------------------------

    def _what(self, name: str) -> str:
        label = "unnamed " if name == "" else ""
        shown = "" if name == "" else f' "{_printable(name)}"'
        return f"{label}{'prepared statement' if self.kind == 'statement' else 'portal'}{shown}"

    def _missing(self, name: str) -> tuple[str, str]:
        if self.kind == "statement":
            return InvalidSqlStatementName.sqlstate, f"policyc: {self._what(name)} does not exist"
        return InvalidCursorName.sqlstate, (f"policyc: {self._what(name)} does not exist (or "
                                            "was not opened through the proxy)")

    def _duplicate(self, name: str) -> tuple[str, str]:
        if self.kind == "statement":
            return (DuplicatePreparedStatement.sqlstate,
                    f"policyc: {self._what(name)} already exists")
        return DuplicateCursor.sqlstate, f"policyc: {self._what(name)} already exists"


def _ignore(ok: bool) -> None:
    return None


def _printable(name: str) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in name[:63])
    return shown.replace('"', "'")
