"""One error hierarchy for the CLI and the proxy.

Every error carries a stable ``code`` (used in CLI output and exit paths) and the SQLSTATE a
wire client receives, so callers branch on meaning and never parse messages.  Messages must
never contain PHI: they name objects (tables, columns, keys), never values.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicycError(Exception):
    """Base of all policyc errors."""

    code = "policyc"
    sqlstate = "XX000"


@dataclass(frozen=True, order=True)
class Location:
    """Where in a policy file a problem is: file, 1-based line, dotted key path."""

    file: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in a policy; ``check`` reports all of them at once."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PolicyError(PolicycError):
    """A policy file is invalid; carries every problem found, sorted by location."""

    code = "policy"
    sqlstate = "F0000"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CatalogError(PolicycError):
    """The live database does not match what the policy refers to (missing table, column...)."""

    code = "catalog"
    sqlstate = "42P01"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ApplyError(PolicycError):
    """Apply refused or failed; the transaction was rolled back."""

    code = "apply"
    sqlstate = "55000"
