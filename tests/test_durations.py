"""Durations and sizes as written in policies: exact values, refusals, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyc.policy.durations import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    years_to_seconds,
)
from policyc.policy.model import AuditSettings

DAY = 86400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("2m", 120),
        ("1h", 3600),
        ("30d", 30 * DAY),
        ("1w", 7 * DAY),
        ("1y", 366 * DAY),
        ("4y", (4 * 365 + 1) * DAY),
        ("6y", (6 * 365 + 2) * DAY),
        ("1h30m", 5400),
        ("1d12h", 36 * 3600),
        ("0s", 0),
        ("  2m  ", 120),
        ("007s", 7),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_six_years_is_the_model_default_retention() -> None:
    """The model's default retention and "6y" in a file must mean the same thing."""
    assert parse_duration("6y") == AuditSettings().retention_seconds


def test_years_never_undercount_calendar_years() -> None:
    # any n consecutive calendar years have at most ceil(n/4) leap days
    for years in range(1, 41):
        assert years_to_seconds(years) >= (years * 365 + years // 4) * DAY


@pytest.mark.parametrize(
    "text",
    ["", "2", "m", "2 m", "2min", "1.5h", "-1s", "30m1h", "1m1m", "1H", "2m ago", "1h 30m", "1e3s"],
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(UnitError):
        parse_duration(text)


def test_duration_error_explains_the_grammar() -> None:
    with pytest.raises(UnitError, match=r"'2x' is not a duration: .*s, m, h, d, w or y"):
        parse_duration("2x")
    with pytest.raises(UnitError, match="largest first"):
        parse_duration("30m1h")


def test_duration_must_be_a_string() -> None:
    with pytest.raises(UnitError, match="must be a string"):
        parse_duration(120)  # type: ignore[arg-type]


def test_absurdly_long_numbers_are_refused() -> None:
    with pytest.raises(UnitError, match="too large"):
        parse_duration("9" * 40 + "s")
    with pytest.raises(UnitError, match="too large"):
        parse_size("9" * 40 + "B")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1GB", 1000**3),
        ("1kB", 1000),
        ("1KB", 1000),
        ("3TiB", 3 * 1024**4),
        ("10B", 10),
        ("10 MiB", 10 * 1024**2),
        ("0B", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "16", "MiB", "1.5MiB", "-1B", "16 mebibytes", "16MIB"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(UnitError):
        parse_size(text)


def test_size_error_suggests_the_unit() -> None:
    with pytest.raises(UnitError, match=r"unknown size unit 'mb' \(did you mean MB\?\)"):
        parse_size("16mb")
    with pytest.raises(UnitError, match=r"did you mean MiB\?"):
        parse_size("16mib")


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(90) == "1m30s"
    assert format_duration(7260) == "2h1m"
    assert format_duration(8 * DAY) == "1w1d"
    with pytest.raises(ValueError):
        format_duration(-1)


def test_format_size() -> None:
    assert format_size(16 * 1024 * 1024) == "16MiB"
    assert format_size(1000) == "1000B"
    assert format_size(0) == "0B"
    with pytest.raises(ValueError):
        format_size(-1)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size
