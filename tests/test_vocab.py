"""The vocabulary agrees with what the runtime's SQL stores and notifies.

Pure: reads the extension's SQL templates, no database.  The SQL keeps its own literals (a
CHECK constraint, pg_notify calls); these tests keep the two homes from drifting apart.
"""

from __future__ import annotations

import re

from conftest import ROOT
from policyc.policy.model import RISKY_STATEMENTS
from policyc.vocab import (
    APPROVABLE_SHAPES,
    ApprovalStatus,
    Channel,
    IdentityFunction,
    Outcome,
    RecordDecision,
    Shape,
)

EXTENSION = ROOT / "sql" / "extension"


def _latest_check(column: str) -> set[str]:
    """The values of the last ``CHECK (column IN (...))`` the upgrade scripts define."""
    found: list[set[str]] = []
    for path in sorted(EXTENSION.glob("*.sql.j2"), key=lambda p: p.name.count("--")):
        text = path.read_text()
        for match in re.finditer(rf"CHECK \({column} IN\s*\(([^)]*)\)\)", text):
            found.append(set(re.findall(r"'(\w+)'", match.group(1))))
    assert found, f"no CHECK on {column}"
    return found[-1]


def test_record_decisions_are_what_audit_statements_accepts() -> None:
    assert set(RecordDecision) == _latest_check("decision")


def test_approval_statuses_are_what_audit_approvals_accepts() -> None:
    assert set(ApprovalStatus) == _latest_check("status")
    assert [s for s in ApprovalStatus if not s.final] == [ApprovalStatus.PENDING]


def test_the_runtime_notifies_on_the_vocabulary_s_channels() -> None:
    notified = set()
    for path in EXTENSION.glob("*.sql.j2"):
        notified |= set(re.findall(r"pg_notify\('(\w+)'", path.read_text()))
    assert notified == set(Channel)


def test_members_are_their_strings() -> None:
    assert Outcome.MASKED == "masked" and f"{Outcome.MASKED}" == "masked"
    assert [o for o in Outcome if o.runs_as_is] == [Outcome.ALLOWED, Outcome.MASKED]
    assert {str(f) for f in IdentityFunction} == {"claim", "agent", "session_id"}
    # what a record may say of a statement the judge let run is one of its outcomes
    assert {str(o) for o in Outcome if o.runs_as_is} <= set(RecordDecision)


def test_approvable_shapes_are_the_policy_s_and_shapes() -> None:
    assert RISKY_STATEMENTS == APPROVABLE_SHAPES
    assert set(APPROVABLE_SHAPES) < set(Shape)
