"""Which session settings an agent may change, and to what: one rule for every route.

SET, SET LOCAL, RESET, ``set_config(name, value, is_local)`` and startup options all reach
the same settings, so they are judged here by the same function (:func:`setting_reason`).
An allow-list: a setting that is on no list is refused.  What changes identity (role,
session authorization, policyc's own settings) never reaches here: the classifier marks it
as an always-blocked shape.  The lexical settings are pinned so the proxy reads SQL as the
server does; timeouts and ``work_mem`` may only stay under the DBA's ceilings; ``search_path``
may only name schemas whose objects the judge already allows (see :data:`SEARCH_PATH_FIXED`).
Reasons name settings, never values from the SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from policyc.policy.model import Group
from policyc.proxy import ceilings
from policyc.proxy.judge.statement import NOT_CONSTANT

#: Settings an agent may change to any value: formatting, client behaviour, transaction
#: modes, and planner/executor knobs that reach nothing beyond its own session.
SETTABLE: Final = frozenset(
    {
        "application_name",
        "idle_session_timeout",
        "transaction_timeout",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "client_min_messages",
        "bytea_output",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
        "transaction_isolation",
        "transaction_read_only",
        "transaction_deferrable",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "xmlbinary",
        "xmloption",
        "array_nulls",
        "escape_string_warning",
        "default_text_search_config",
        "jit",
        "plan_cache_mode",
        "synchronize_seqscans",
        # can only narrow: with row_security off a query that row security would filter
        # fails instead (no group role, nor the views' owner, bypasses row security)
        "row_security",
        # can only narrow which relation kinds the session may read (pg_dump sets it)
        "restrict_nonsystem_relation_kind",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "work_mem",
        "search_path",
        # multi-forms: SET TRANSACTION, SET SESSION CHARACTERISTICS, SET CONSTRAINTS
        "transaction",
        "session characteristics",
        "constraints",
    }
)
#: Settings that change how the server lexes or decodes statement text, and the only values
#: they may have in an agent's session: the proxy reads SQL exactly as the server does only
#: while these hold.  The proxy sends them in the upstream startup packet (which outranks
#: role and database defaults, and is what RESET and DISCARD ALL return to), refuses any
#: other value by every route an agent has, and ends a session whose server reports another
#: value (ParameterStatus).  ``backslash_quote`` only decides whether ``\\'`` is accepted in
#: E'' strings (the server refuses, it never reads differently); it is pinned all the same.
PINNED: Final[Mapping[str, frozenset[str]]] = {
    "client_encoding": frozenset({"utf8", "utf-8", "unicode"}),
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
    "backslash_quote": frozenset({"safe_encoding"}),
}
#: What the proxy sends for them upstream.
PINNED_STARTUP: Final[Mapping[str, str]] = {
    "client_encoding": "UTF8",
    "standard_conforming_strings": "on",
    "backslash_quote": "safe_encoding",
}
#: Timeouts the policy may cap (``groups.G.limits``): agents may tighten, never loosen.
TIMEOUTS: Final = frozenset(
    {"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"})
#: ``work_mem`` ceiling in kB when the policy gives none (``groups.G.limits.work_mem``).
DEFAULT_WORK_MEM_KB: Final = 64 * 1024
#: Schemas a search_path may list besides the group's own (``$user`` is the group role,
#: whose schema is the group's): pg_catalog and pg_temp are searched anyway (first, unless
#: listed), and the empty string is pg_dump's "no schema at all".  With nothing else on the
#: path, an unqualified name can only resolve to what the judge already considers for it: a
#: catalog object, a group view or the session's own temporary table (see
#: policyc.proxy.judge.verdict.catalog_reason).
SEARCH_PATH_FIXED: Final = frozenset({"pg_catalog", "pg_temp", "$user", ""})

_PRINTABLE_SETTING = re.compile(r"^[a-z_][a-z0-9_.]{0,62}$")
_MEMORY_UNITS: Final = {"b": 1 / 1024, "kb": 1, "mb": 1024, "gb": 1024**2, "tb": 1024**3}
_MEMORY = re.compile(r"\s*(?P<number>[+-]?\d+(?:\.\d*)?)\s*(?P<unit>[a-zA-Z]*)\s*")
_NAMEDATALEN: Final = 64


def setting_reason(setting: str, values: Iterable[str | None], group: Group, *,
                   verb: str = "SET", listed: bool = False,
                   ceiling_ms: int | None = None) -> str | None:
    """Why an agent may not give ``setting`` these ``values`` (None: it may).

    ``None`` in ``values`` is RESET / DEFAULT (back to the startup or role value: always
    allowed); ``listed`` says each value is one list string (set_config, startup options)
    rather than one element per value (SET's own list); ``ceiling_ms`` is the role's own
    timeout ceiling when it is lower than the policy's."""
    if setting == "all":  # RESET ALL: back to the startup, role and database values
        return None
    if setting not in SETTABLE and setting not in PINNED:
        return f"{verb} {shown_setting(setting)} is not on the proxy's list of harmless settings"
    items = list(values)
    if setting in PINNED:
        allowed = PINNED[setting]
        for value in items:
            if value is not None and value.strip().lower() not in allowed:
                return (f"{setting} is pinned to {PINNED_STARTUP[setting]} for agent sessions: "
                        "the proxy must read SQL exactly as the server does")
        return None
    if setting in TIMEOUTS:
        return _timeout_reason(setting, items, group, ceiling_ms)
    if setting == "work_mem":
        return _work_mem_reason(items, group)
    if setting == "search_path":
        return _search_path_reason(items, group, listed)
    return None


def setting_value_reason(setting: str, values: Iterable[str | None], group: Group,
                         ceiling_ms: int | None = None) -> str | None:
    """The value rule alone (pinned settings, capped timeouts) of a SET the judge already
    allowed; kept for the session's role-ceiling check (see Session._ceiling_refusal)."""
    return setting_reason(setting, values, group, ceiling_ms=ceiling_ms)


def _timeout_reason(setting: str, items: list[str | None], group: Group,
                    ceiling_ms: int | None) -> str | None:
    limit_s = getattr(group.limits, setting, None)
    limits = [c for c in (ceiling_ms, None if limit_s is None else limit_s * 1000)
              if c is not None]
    if not limits:
        return None
    ceiling = min(limits)
    for value in items:
        if value is None:
            continue
        ms = timeout_ms(value)
        if ms is None or ms <= 0 or ms > ceiling:
            return (f"{setting} may only be lowered for group {group.name}: its ceiling "
                    f"is {ceiling} ms (0, meaning no limit, is not allowed)")
    return None


def _work_mem_reason(items: list[str | None], group: Group) -> str | None:
    ceiling = group.limits.work_mem or DEFAULT_WORK_MEM_KB
    for value in items:
        if value is None:
            continue
        kb = memory_kb(value)
        if kb is None or kb > ceiling:
            return (f"work_mem may be at most {ceiling} kB for group {group.name} "
                    "(groups.G.limits.work_mem)")
    return None


def _search_path_reason(items: list[str | None], group: Group, listed: bool) -> str | None:
    allowed = SEARCH_PATH_FIXED | {group.name}
    for value in items:
        if value is None:
            continue
        if value == NOT_CONSTANT:
            return "search_path must be given as constants"
        schemas = split_identifiers(value) if listed else [value]
        if schemas is None or any(schema not in allowed for schema in schemas):
            return (f"search_path may list only group {group.name}'s own schema, pg_catalog, "
                    "pg_temp and the empty string: the proxy judges names by what they can "
                    "resolve to")
    return None


def timeout_ms(value: str) -> float | None:
    """A timeout setting's value in milliseconds, read as PostgreSQL does (a bare number is
    milliseconds); None when it is not a duration."""
    try:
        return float(ceilings.timeout_ms(value))
    except ValueError:
        return None


def memory_kb(value: str) -> float | None:
    """A memory setting's value in kB, read as PostgreSQL does (a bare number is kB, units
    B/kB/MB/GB/TB, case-sensitive there but never ambiguous); None when it is not a size."""
    found = _MEMORY.fullmatch(value)
    if found is None:
        return None
    unit = found["unit"].lower() or "kb"
    if unit not in _MEMORY_UNITS:
        return None
    return float(found["number"]) * _MEMORY_UNITS[unit]


def split_identifiers(text: str) -> list[str] | None:
    """A list setting's value split as PostgreSQL's SplitIdentifierString does: comma
    separated, whitespace around elements ignored, double-quoted elements kept exactly
    (``""`` is a quote), others folded to lower case, each truncated to 63 bytes.  The
    empty string is the empty list; None when the text is not such a list."""
    out: list[str] = []
    pos, end = 0, len(text)
    while pos < end and text[pos].isspace():
        pos += 1
    if pos == end:
        return out
    while True:
        if pos < end and text[pos] == '"':
            element: list[str] = []
            pos += 1
            while True:
                close = text.find('"', pos)
                if close < 0:
                    return None  # unterminated quote
                element.append(text[pos:close])
                pos = close + 1
                if pos < end and text[pos] == '"':
                    element.append('"')
                    pos += 1
                    continue
                break
            name = "".join(element)  # "" is a zero-length name: accepted, as the server does
        else:
            start = pos
            while pos < end and text[pos] != "," and not text[pos].isspace():
                pos += 1
            if pos == start:
                return None  # empty element
            name = text[start:pos].translate(_ASCII_LOWER)
        out.append(_truncate(name))
        while pos < end and text[pos].isspace():
            pos += 1
        if pos == end:
            return out
        if text[pos] != ",":
            return None
        pos += 1
        while pos < end and text[pos].isspace():
            pos += 1


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _truncate(name: str) -> str:
    encoded = name.encode()
    if len(encoded) < _NAMEDATALEN:
        return name
    return encoded[: _NAMEDATALEN - 1].decode(errors="ignore")


def shown_setting(setting: str) -> str:
    """A setting's name for a message, or a placeholder when it is not a plain name."""
    return setting if _PRINTABLE_SETTING.match(setting) else "of this setting"
