"""Golden files of the SQL the compiler generates, per case under tests/golden/<case>/.

Run with POLICYC_UPDATE_GOLDEN=1 to rewrite expected.sql after an intended change; review the
diff like code. Every generated statement must also parse with pglast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pglast

from conftest import Database, clinic_policy
from policyc.plan import make_plan

GOLDEN = Path(__file__).resolve().parent / "golden"


def _render(statements: list[tuple[str, str]]) -> str:
    lines = []
    previous = None
    for key, statement in statements:
        if key != previous:
            lines.append(f"\n-- {key}")
            previous = key
        lines.append(f"{statement};")
    return "\n".join(lines).lstrip("\n") + "\n"


def test_clinic_plan_sql_matches_golden(clinic_db: Database) -> None:
    with clinic_db.connect() as conn:
        plan = make_plan(conn, clinic_policy(clinic_db.name))
    # the test database's name appears in role comments; the golden file says "clinic"
    statements = [
        (change.key, statement.replace(f"database {clinic_db.name}'", "database clinic'"))
        for change in plan.changes
        for statement in change.statements
    ]
    for _, statement in statements:
        assert len(pglast.parser.parse_sql_json(statement)) > 0
    text = _render(statements)
    expected = GOLDEN / "clinic" / "expected.sql"
    if os.environ.get("POLICYC_UPDATE_GOLDEN"):
        expected.write_text(text)
    assert expected.exists(), "run with POLICYC_UPDATE_GOLDEN=1 to create it"
    assert text == expected.read_text(), (
        "generated SQL changed; review and update with POLICYC_UPDATE_GOLDEN=1"
    )
