"""Mask expressions, typed: a masked column keeps its type family (a date stays a date or is
NULL, never text), so agent code and drivers see the same column types as before."""

from __future__ import annotations

from policyc.catalog import Column
from policyc.policy.model import Mask

_KEY_IPAD = "(SELECT k.ipad FROM policyc.hmac_key k)"
_KEY_OPAD = "(SELECT k.opad FROM policyc.hmac_key k)"
_INTEGERS = {"int2", "int4", "int8"}
_DATETIMES = {"timestamp", "timestamptz"}


class MaskTypeError(ValueError):
    """A mask cannot apply to a column of this type; the message suggests what can."""


def _hmac(ref: str) -> str:
    return f"policyc.hmac_hex({_KEY_IPAD}, {_KEY_OPAD}, ({ref})::text)"


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
            return f"CAST(CAST(('x' || left({_hmac(ref)}, 16)) AS bit(64)) AS bigint)"
        if kind == "uuid":
            return f"CAST(left({_hmac(ref)}, 32) AS uuid)"
        raise MaskTypeError(
            f"mask hash needs a text, integer or uuid column, not {column.type_sql}"
            " (use year, month, redact or null)"
        )
    if mask is Mask.PARTIAL:
        if is_text:
            return f"policyc.mask_partial(({ref})::text)"
        raise MaskTypeError(f"mask partial needs a text column, not {column.type_sql}")
    if mask is Mask.ZIP3:
        if is_text:
            return f"policyc.mask_zip3(({ref})::text)"
        raise MaskTypeError(f"mask zip3 needs a text column, not {column.type_sql}")
    if mask in (Mask.YEAR, Mask.MONTH):
        unit = mask.value
        if kind == "date":
            return f"CAST(date_trunc('{unit}', {ref}) AS date)"
        if kind in _DATETIMES:
            return f"date_trunc('{unit}', {ref})"
        raise MaskTypeError(
            f"mask {unit} needs a date or timestamp column, not {column.type_sql}"
        )
    if mask is Mask.AGE90:
        if kind in _INTEGERS or kind == "numeric":
            return f"CAST(policyc.mask_age90({ref}) AS {column.type_sql})"
        if kind == "date":
            return f"policyc.mask_age90({ref})"
        raise MaskTypeError(
            f"mask age90 needs an integer age or a date of birth, not {column.type_sql}"
        )
    raise MaskTypeError(f"unknown mask {mask!r}")
