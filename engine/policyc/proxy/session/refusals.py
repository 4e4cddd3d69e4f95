"""How the proxy refuses: words for a refusal, and the poisons that carry it.

The proxy never answers for the server mid-stream: a refused statement is replaced by a
"poison" the server fails on (``SELECT 1/0`` for simple queries, a syntax error for Parse),
and that error is rewritten into ours (see :mod:`policyc.proxy.session.router`). So the
server keeps its own transaction and pipeline semantics (an error aborts the transaction and
skips to Sync) and responses stay in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from policyc.errors import InsufficientPrivilege
from policyc.policy.model import Group
from policyc.proxy.codec import Parse, Query
from policyc.proxy.judge.cache import Judgement
from policyc.proxy.judge.settings import TIMEOUTS, setting_value_reason
from policyc.proxy.judge.statement import StatementInfo
from policyc.proxy.session.state import Expect

if TYPE_CHECKING:
    from policyc.proxy.session.gate import RecordGate

BLOCKED_SQLSTATE: Final = InsufficientPrivilege.sqlstate
POISON_QUERY: Final = "SELECT 1/0"
#: A refusal in the extended protocol is a Parse of this text: the server's raw parser fails
#: on it before it looks at any name, so no statement, portal or object an agent created can
#: change what the refusal does (the name given is never stored).
POISON_PARSE: Final = "policyc refused this statement"
POISON_NAME: Final = "policyc refused"
_POISON_QUERY_BYTES: Final = Query(POISON_QUERY).encode()
_POISON_PARSE_BYTES: Final = Parse(POISON_NAME, POISON_PARSE, ()).encode()


def verdict_for(decision: Judgement, index: int) -> str:
    """The record's decision for a statement that runs as it is."""
    verdict = decision.verdicts[index].outcome
    return "masked" if verdict == "masked" else "allowed"


def sets(info: StatementInfo) -> bool:
    """Does the statement change a setting (SET, set_config): judged again against the
    role's own timeout ceilings, which the policy-wide verdict does not know."""
    return info.kind == "set" or bool(info.config_calls)


def ceiling_refusal(info: StatementInfo, ceilings: dict[str, int],
                    group: Group) -> tuple[str, str] | None:
    """A SET of a timeout above the DBA's ceiling for the group role (the policy's own
    ceilings are judged with the statement, once)."""
    changes: list[tuple[str, tuple[str | None, ...]]] = [
        (setting, (value,)) for setting, value in info.config_calls]
    if info.kind == "set":
        changes.append((info.setting or "", info.values))
    for setting, values in changes:
        ceiling = ceilings.get(setting) if setting in TIMEOUTS else None
        if not ceiling:
            continue
        reason = setting_value_reason(setting, values, group, ceiling)
        if reason is not None:
            return BLOCKED_SQLSTATE, f"policyc: statement blocked: {reason}"
    return None


def poison(gate: RecordGate, out: list[bytes], kind: str, refused: tuple[str, str]) -> None:
    """Refuse an extended-protocol message: the server fails on the poison (an error
    aborts the transaction and skips to Sync, as the refused message's own error would)
    and the proxy rewrites that error into ``refused``."""
    out.append(_POISON_PARSE_BYTES)
    gate.expect(Expect(kind, rewrite=refused))


def poison_query(gate: RecordGate, out: list[bytes], refused: tuple[str, str],
                 batch: int) -> None:
    """Refuse a whole simple Query: its poison, answered with ``refused``, ends the batch."""
    out.append(_POISON_QUERY_BYTES)
    gate.expect(Expect("stmt", rewrite=refused))
    gate.expect(Expect("sync", batch=batch))
