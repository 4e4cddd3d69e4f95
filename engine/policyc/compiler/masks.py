"""Mask expressions, typed: a masked column keeps its type family (a date stays a date or is
NULL, never text), so agent code and drivers see the same column types as before.

Every mask is written out inline as plain SQL (no call of a runtime function per row): the
planner evaluates it as part of the scan, and values that only depend on the statement (the
HMAC key, today's 90-year cut-off) are scalar subqueries, computed once per statement as
InitPlans.  Each expression returns exactly what the runtime's reference function of the same
mask returns (``policyc.hmac_hex``, ``mask_partial``, ``mask_zip3``, ``mask_age90``), NULLs
included; where the reference needs a regular expression, a cheaper exact test picks out the
common shapes first and everything else goes through the reference's own expression.
"""

from __future__ import annotations

from policyc.catalog import Column
from policyc.policy.model import Mask

_KEY_IPAD = "(SELECT k.ipad FROM policyc.hmac_key k)"
_KEY_OPAD = "(SELECT k.opad FROM policyc.hmac_key k)"
_INTEGERS = {"int2", "int4", "int8"}
_DATETIMES = {"timestamp", "timestamptz"}

# HIPAA Safe Harbor: three-digit ZIP prefixes covering fewer than 20,000 people (Census 2000),
# the same list as policyc.mask_zip3 in the runtime.
RESTRICTED_ZIP3 = (
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
)


def _text_array(values: tuple[str, ...]) -> str:
    """A constant text[] of digit strings (nothing to quote).  PostgreSQL matches ``= ANY``
    of a constant array of nine or more elements through a hash table."""
    assert all(v.isascii() and v.isdigit() for v in values)
    return "'{" + ",".join(values) + "}'::text[]"


_RESTRICTED = _text_array(RESTRICTED_ZIP3)
# every three-digit prefix that is kept as it is (1000 less the restricted ones)
_KEPT_ZIP3 = _text_array(tuple(
    p for p in (f"{d:03d}" for d in range(1000)) if p not in RESTRICTED_ZIP3))


class MaskTypeError(ValueError):
    """A mask cannot apply to a column of this type; the message suggests what can."""


def _hmac(ref: str) -> str:
    """policyc.hmac_hex(ipad, opad, ref::text) written out: HMAC-SHA256 from the stored pads."""
    inner = (
        f"pg_catalog.sha256({_KEY_IPAD} || pg_catalog.convert_to(({ref})::text, 'UTF8'))"
    )
    return f"pg_catalog.encode(pg_catalog.sha256({_KEY_OPAD} || {inner}), 'hex')"


def _partial(ref: str) -> str:
    """policyc.mask_partial: every run of word characters becomes its first one and ``***``.
    Two words of ASCII letters (most names) are done without the regular expression."""
    text = f"({ref})::text"
    return (
        f"CASE WHEN {text} ~ '^[A-Za-z]+ [A-Za-z]+$' "
        f"THEN pg_catalog.left({text}, 1) || '*** ' || "
        f"pg_catalog.left(pg_catalog.split_part({text}, ' ', 2), 1) || '***' "
        f"ELSE pg_catalog.regexp_replace({text}, E'(\\\\w)\\\\w*', E'\\\\1***', 'g') END"
    )


def _zip3(ref: str) -> str:
    """policyc.mask_zip3: the first three digits, ``000`` for restricted prefixes.  A value
    whose first three characters are ASCII digits needs no digit stripping: one lookup of
    that prefix among the 983 kept ones (a constant array of nine or more elements is a hash
    table built once per statement) returns it as it is, one among the 17 restricted ones
    returns ``000``; anything else (NULL, shorter, other characters) gets the reference
    expression.  Two hash probes at most, no regular expression for the common shapes."""
    text = f"({ref})::text"
    head = f"pg_catalog.left({text}, 3)"
    digits = f"pg_catalog.left(pg_catalog.regexp_replace({text}, E'\\\\D', '', 'g'), 3)"
    return (
        f"CASE WHEN {head} = ANY ({_KEPT_ZIP3}) THEN {head} "
        f"WHEN {head} = ANY ({_RESTRICTED}) THEN '000' "
        f"ELSE CASE WHEN {digits} = ANY ({_RESTRICTED}) THEN '000' ELSE {digits} END END"
    )


def _truncate_date(unit: str, ref: str) -> str:
    """date_trunc of a date, through timestamp (no time zone): the same date as through the
    session's time zone, without the conversions."""
    return f"CAST(pg_catalog.date_trunc('{unit}', CAST({ref} AS timestamp)) AS date)"


def _age90_date(ref: str) -> str:
    """policyc.mask_age90(date): the birth year; 90 years ago or earlier collapses to one year.
    The cut-off and that year are computed once per statement."""
    cutoff = "(SELECT CAST(CURRENT_DATE - interval '90 years' AS date))"
    collapsed = (
        "(SELECT pg_catalog.make_date("
        "CAST(pg_catalog.date_part('year', CURRENT_DATE) AS integer) - 90, 1, 1))"
    )
    return (
        f"CASE WHEN {ref} <= {cutoff} THEN {collapsed} "
        f"ELSE {_truncate_date('year', ref)} END"
    )


def _typed_null(column: Column) -> str:
    return f"CAST(NULL AS {column.type_sql})"


def mask_expression(mask: Mask, column: Column, ref: str) -> str:
    """SQL for ``column`` (referenced as ``ref``) under ``mask``; raises MaskTypeError."""
    is_text = column.category == "S"
    kind = column.type_name
    if mask is Mask.NULL:
        return _typed_null(column)
    if mask is Mask.REDACT:
        if is_text:
            return f"CAST(CASE WHEN {ref} IS NULL THEN NULL ELSE '[REDACTED]' END AS text)"
        return _typed_null(column)
    if mask is Mask.HASH:
        if is_text:
            return _hmac(ref)
        if kind in _INTEGERS:
            return f"CAST(CAST(('x' || pg_catalog.left({_hmac(ref)}, 16)) AS bit(64)) AS bigint)"
        if kind == "uuid":
            return f"CAST(pg_catalog.left({_hmac(ref)}, 32) AS uuid)"
        raise MaskTypeError(
            f"mask hash needs a text, integer or uuid column, not {column.type_sql}"
            " (use year, month, redact or null)"
        )
    if mask is Mask.PARTIAL:
        if is_text:
            return _partial(ref)
        raise MaskTypeError(f"mask partial needs a text column, not {column.type_sql}")
    if mask is Mask.ZIP3:
        if is_text:
            return _zip3(ref)
        raise MaskTypeError(f"mask zip3 needs a text column, not {column.type_sql}")
    if mask in (Mask.YEAR, Mask.MONTH):
        unit = mask.value
        if kind == "date":
            return _truncate_date(unit, ref)
        if kind in _DATETIMES:
            return f"date_trunc('{unit}', {ref})"
        raise MaskTypeError(
            f"mask {unit} needs a date or timestamp column, not {column.type_sql}"
        )
    if mask is Mask.AGE90:
        if kind in _INTEGERS or kind == "numeric":
            # least(x, 90) without the NULL-ignoring of least(): NULL stays NULL
            return f"CAST(CASE WHEN {ref} > 90 THEN 90 ELSE {ref} END AS {column.type_sql})"
        if kind == "date":
            return _age90_date(ref)
        raise MaskTypeError(
            f"mask age90 needs an integer age or a date of birth, not {column.type_sql}"
        )
    raise MaskTypeError(f"unknown mask {mask!r}")
