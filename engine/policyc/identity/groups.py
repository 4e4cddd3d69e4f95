"""Map a verified agent's OIDC groups to exactly one policy group.

A session runs as one group's role, never a union: when a token maps to several groups the
client must choose one (startup ``options``: ``-c policyc.group=billing``) and may only choose
among those its token maps to.  Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from policyc.errors import InvalidParameterValue, PolicycError
from policyc.identity.verify import AuthenticationFailed
from policyc.policy.model import Group, Policy

GROUP_OPTION = "policyc.group"


class StartupOptionsError(PolicycError):
    """The startup packet's ``options`` string cannot be parsed as Postgres would."""

    code = "options"
    sqlstate = InvalidParameterValue.sqlstate


def resolve_group(policy: Policy, oidc_groups: Sequence[str], requested: str | None) -> Group:
    """The one policy group this session runs as; AuthenticationFailed when none or unclear."""
    held = set(oidc_groups)
    matches = [group for group in policy.groups if held.intersection(group.oidc_groups)]
    if not matches:
        raise AuthenticationFailed("no_matching_group")
    if requested is not None:
        for group in matches:
            if group.name == requested:
                return group
        raise AuthenticationFailed("group_not_allowed")
    if len(matches) > 1:
        raise AuthenticationFailed("ambiguous_group")
    return matches[0]


def split_options(options: str) -> list[str]:
    """Split libpq ``options`` like the server: whitespace separates, backslash escapes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    chars = iter(options)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise StartupOptionsError("options end with a lone backslash")
            current.append(escaped)
            in_word = True
        elif char.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(char)
            in_word = True
    if in_word:
        words.append("".join(current))
    return words


def parse_startup_options(options: str) -> list[tuple[str, str]]:
    """``(name, value)`` settings from ``-c name=value``, ``-cname=value``, ``--name=value``.

    Names are lower-cased and, for ``--`` options, dashes become underscores, as the server
    does.  Other switches are skipped.
    """
    settings: list[tuple[str, str]] = []
    words = split_options(options)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "-c":
            if index >= len(words):
                raise StartupOptionsError("-c in options has no setting")
            assignment = words[index]
            index += 1
        elif word.startswith("-c"):
            assignment = word[2:]
        elif word.startswith("--"):
            assignment = word[2:]
            name, eq, value = assignment.partition("=")
            assignment = name.replace("-", "_") + eq + value
        else:
            continue
        name, eq, value = assignment.partition("=")
        if not eq or not name:
            raise StartupOptionsError("a setting in options has no name=value form")
        settings.append((name.lower(), value))
    return settings


def requested_group_from_options(options: str) -> str | None:
    """The group asked for with ``policyc.group`` (last one wins), or None; empty is None."""
    requested: str | None = None
    for name, value in parse_startup_options(options):
        if name == GROUP_OPTION:
            requested = value or None
    return requested
