"""What the proxy records: plain data handed from sessions to the audit log.

Times are UNIX epoch seconds (float) taken by the proxy; the audit log turns them into
timestamptz. Nothing here holds a credential or a token.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

#: ``str(uuid)`` of session ids, which every record of a session repeats.
uuid_text = functools.lru_cache(maxsize=4096)(str)


def _record_key(record: Any) -> str:
    """``str(record.record_id)``, kept in the (frozen) instance's ``__dict__``."""
    key: str | None = record.__dict__.get("_record_key")
    if key is None:
        key = str(record.record_id)
        object.__setattr__(record, "_record_key", key)
    return key


def new_id() -> uuid.UUID:
    return uuid.uuid4()


@dataclass(frozen=True)
class SessionRecord:
    """A session attempt: ``outcome`` is ``open`` (accepted) or ``refused`` (with ``reason``)."""

    session_id: uuid.UUID
    started_at: float
    outcome: str
    reason: str | None = None
    agent: str | None = None
    group: str | None = None
    oidc_groups: tuple[str, ...] = ()
    role: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    client_addr: str | None = None
    client_port: int | None = None
    tls: bool = False
    tls_version: str | None = None
    proxy: str | None = None
    # the hex sha256 of the policy the proxy judged the login by (runtime 0.7.0 records it)
    policy_hash: str | None = None


@dataclass(frozen=True)
class SessionEnd:
    """A session's close; ``end_seq`` is one past the last statement seq the session assigned
    (1 when it recorded no statement), so a verifier can tell a removed trailing record."""

    session_id: uuid.UUID
    ended_at: float
    reason: str
    end_seq: int


@dataclass(frozen=True)
class StatementRecord:
    """One statement as decided, written (durably) before anything is sent upstream.

    ``seq`` numbers the session's records 1, 2, 3, ... in the order the session creates them
    (the session row is 0 of its chain); a number is never skipped nor reused.
    """

    record_id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    at: float
    agent: str
    group: str
    text: str
    decision: str  # allowed | masked | blocked | held | approved | denied | expired | error
    parameters: list[str | None] | None = None
    fingerprint: str | None = None
    kind: str | None = None
    tables: tuple[str, ...] = ()
    phi_columns: tuple[str, ...] = ()
    reason: str | None = None
    approval_id: int | None = None

    @property
    def record_key(self) -> str:
        """``str(record_id)``, computed once (the spool line and the drainer's books use it;
        not ``functools.cached_property``, which takes a lock on every first access)."""
        return _record_key(self)


@dataclass(frozen=True)
class StatementOutcome:
    """How a recorded statement ended: rows sent or affected, time, error, result digest, and
    with ``results: full`` the result as sent (``result``: zlib-compressed wire frames, see
    :mod:`policyc.proxy.results`)."""

    record_id: uuid.UUID
    rows: int | None
    duration_ms: float | None
    sqlstate: str | None = None
    result_digest: str | None = None
    note: str | None = None
    result: bytes | None = None

    @property
    def record_key(self) -> str:
        """``str(record_id)``, computed once."""
        return _record_key(self)
