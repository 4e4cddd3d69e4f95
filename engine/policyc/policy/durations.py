"""Durations ("2m", "6y", "1h30m") and sizes ("16MiB", "1GB") as written in a policy file.

Policies state time and space the way people say them; everything downstream works in plain
seconds and bytes.  The grammar is deliberately small (no fractions, no signs, no spaces inside
a duration) so that a typo is an error, never a silently different number.

A year is counted as 365 days plus the most leap days that many consecutive calendar years can
hold (``ceil(n / 4)``): ``6y`` is therefore never shorter than six calendar years, which is what a
retention rule ("keep for six years") requires.
"""

from __future__ import annotations

import re

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "UnitError",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

DURATION_UNITS: dict[str, int] = {"s": 1, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
"""Fixed-length duration units in seconds; ``y`` is handled apart (see module docstring)."""

SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
"""Size units in bytes: SI units are powers of 1000, IEC units (``KiB``...) powers of 1024."""

_UNIT_ORDER = "ywdhms"
_DURATION_PART = re.compile(r"([0-9]+)([ywdhms])")
_DURATION = re.compile(r"(?:[0-9]+[ywdhms])+")
_SIZE = re.compile(r"([0-9]+) ?([A-Za-z]+)")
_MAX_DIGITS = 18

_DURATION_HINT = (
    "use a whole number and a unit s, m, h, d, w or y, e.g. 90s, 2m, 1h, 30d, 6y, 1h30m"
)
_SIZE_HINT = "use a whole number and a unit " + ", ".join(SIZE_UNITS) + ", e.g. 512KiB, 16MiB, 1GB"


class UnitError(ValueError):
    """A duration or size is not written in the accepted grammar."""


def years_to_seconds(years: int) -> int:
    """Seconds in ``years`` calendar years, counting the most leap days they can contain."""
    return years * 365 * DAY + -(-years // 4) * DAY


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``"2m"``, ``"6y"`` or ``"1h30m"``.

    Units must appear from the largest to the smallest and at most once each, so ``"30m1h"``
    and ``"1m1m"`` are errors rather than surprises.
    """
    if not isinstance(text, str):
        raise UnitError(f"a duration must be a string such as '2m', not {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise UnitError(f"empty duration: {_DURATION_HINT}")
    if not _DURATION.fullmatch(stripped):
        raise UnitError(f"'{stripped}' is not a duration: {_DURATION_HINT}")
    total = 0
    last = -1
    for number, unit in _DURATION_PART.findall(stripped):
        rank = _UNIT_ORDER.index(unit)
        if rank <= last:
            raise UnitError(
                f"'{stripped}' is not a duration: write each unit once, largest first (e.g. 1h30m)"
            )
        last = rank
        if len(number) > _MAX_DIGITS:
            raise UnitError(f"'{stripped}' is too large a duration")
        value = int(number)
        total += years_to_seconds(value) if unit == "y" else value * DURATION_UNITS[unit]
    return total


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"16MiB"``, ``"512KiB"`` or ``"1GB"``."""
    if not isinstance(text, str):
        raise UnitError(f"a size must be a string such as '16MiB', not {type(text).__name__}")
    stripped = text.strip()
    match = _SIZE.fullmatch(stripped)
    if match is None:
        raise UnitError(f"'{stripped}' is not a size: {_SIZE_HINT}")
    number, unit = match.groups()
    if unit not in SIZE_UNITS:
        folded = {name.lower(): name for name in SIZE_UNITS if name != "kB"}
        hint = folded.get(unit.lower())
        suggestion = f" (did you mean {hint}?)" if hint else ""
        raise UnitError(f"'{stripped}' has an unknown size unit '{unit}'{suggestion}: {_SIZE_HINT}")
    if len(number) > _MAX_DIGITS:
        raise UnitError(f"'{stripped}' is too large a size")
    return int(number) * SIZE_UNITS[unit]


def format_duration(seconds: int) -> str:
    """A compact, exact rendering of seconds (``7260`` -> ``"2h1m"``), for plans and messages."""
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds == 0:
        return "0s"
    parts: list[str] = []
    rest = seconds
    for unit in "wdhms":
        size = WEEK if unit == "w" else DURATION_UNITS[unit]
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """The largest IEC unit that divides ``size`` exactly (``16777216`` -> ``"16MiB"``)."""
    if size < 0:
        raise ValueError("a size cannot be negative")
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
