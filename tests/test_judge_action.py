"""The judge's ready action: what the session does with a string, from its verdicts.

Pure: the clinic example policy, no database.  Each string is judged for a group and its action
is checked against its verdicts, so the session can act on one value instead of interpreting
the list.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import policyc
from conftest import clinic_policy
from policyc.errors import (
    InsufficientPrivilege,
    ProgramLimitExceeded,
    SqlStateError,
    SqlSyntaxError,
    lookup,
)
from policyc.proxy.judge.action import (
    ROW_LIMITED_KINDS,
    RUN,
    Hold,
    Refuse,
    Run,
    counts_rows,
)
from policyc.proxy.judge.cache import Judge, Judgement
from policyc.proxy.judge.verdict import BLOCKED_SQLSTATE
from policyc.vocab import Outcome, Shape

POLICY: Any = clinic_policy("clinic")
GROUPS = {group.name: group for group in POLICY.groups}


def judged(group: str, sql: str, max_bytes: int = 1 << 20) -> Judgement:
    return Judge(POLICY, max_bytes).judge(GROUPS[group], sql)


def test_an_allowed_read_runs() -> None:
    judgement = judged("billing", "SELECT id FROM claims")
    assert [v.outcome for v in judgement.verdicts] == [Outcome.ALLOWED]
    assert judgement.action == RUN and isinstance(judgement.action, Run)


def test_a_masked_read_runs() -> None:
    judgement = judged("research", "SELECT id, zip FROM patients")
    assert [v.outcome for v in judgement.verdicts] == [Outcome.MASKED]
    assert judgement.action == RUN


def test_an_empty_string_runs() -> None:
    assert judged("billing", "").action == RUN
    assert judged("billing", " ; ").action == RUN


def test_a_blocked_statement_is_refused_with_the_verdict_s_sqlstate_and_reason() -> None:
    judgement = judged("billing", "SELECT id FROM claims; RESET ROLE")
    verdict = judgement.verdicts[1]
    assert judgement.action == Refuse(
        1, "42501", f"policyc: statement blocked: {verdict.reason}", verdict.reason)
    assert judgement.blocked_index == 1


def test_a_statement_needing_approval_is_held_where_it_stands() -> None:
    judgement = judged("billing", "SELECT 1; DELETE FROM claims")
    action = judgement.action
    assert action == Hold(1, frozenset({Shape.DELETE_ALL}), judgement.verdicts[1].reason)
    assert isinstance(action, Hold) and action.shapes_text == "delete_all"
    assert action.without_approvers() == Refuse(
        1, BLOCKED_SQLSTATE, "policyc: this statement needs approval (delete_all) but the "
        "policy names no approvers, so it was not run", judgement.verdicts[1].reason)


def test_a_held_statement_before_a_blocked_one_is_refused_not_held() -> None:
    judgement = judged("billing", "DELETE FROM claims; SELECT pg_read_file('x')")
    assert [v.outcome for v in judgement.verdicts] == [Outcome.NEEDS_APPROVAL, Outcome.BLOCKED]
    assert judgement.action == Refuse(
        0, "42501", "policyc: this statement needs approval (delete_all); approvals are not "
        "available on this proxy yet, so it was not run", judgement.verdicts[0].reason)


@pytest.mark.parametrize(
    ("sql", "max_bytes", "error"),
    [
        ("SELEC 1", 1 << 20, SqlSyntaxError),
        ("SELECT 'a long literal'", 10, ProgramLimitExceeded),
        ("SELECT 1\x00", 1 << 20, ProgramLimitExceeded),
    ],
)
def test_a_string_that_cannot_be_classified_is_refused_at_its_first_statement(
        sql: str, max_bytes: int, error: type[SqlStateError]) -> None:
    judgement = judged("billing", sql, max_bytes)
    (verdict,) = judgement.verdicts
    action = judgement.action
    assert isinstance(action, Refuse) and action.index == 0
    assert action.sqlstate == verdict.sqlstate == error.sqlstate
    assert action.message == f"policyc: statement refused: {verdict.reason}"
    assert type(action.error()) is error and str(action.error()) == action.message


STRINGS = [
    "SELECT id FROM claims", "SELECT id, ssn FROM patients WHERE id = 1", "BEGIN",
    "DELETE FROM claims", "UPDATE claims SET amount = 1", "TRUNCATE claims",
    "COPY claims TO STDOUT", "SELECT pg_sleep(1)", "SET ROLE postgres", "SELEC", "",
    "SELECT 1; DELETE FROM claims; SELECT 2", "TRUNCATE claims; LOCK claims",
    "CREATE TABLE t (x int)", "DO $$ BEGIN END $$", "WITH d AS (DELETE FROM visits "
    "RETURNING *) SELECT * FROM d", "SELECT rolpassword FROM pg_authid",
]


@pytest.mark.parametrize("group", sorted(GROUPS))
@pytest.mark.parametrize("sql", STRINGS)
def test_the_action_agrees_with_the_verdicts(group: str, sql: str) -> None:
    judgement = judged(group, sql)
    verdicts, action = judgement.verdicts, judgement.action
    outcomes = [v.outcome for v in verdicts]
    stop = next((i for i, o in enumerate(outcomes) if not o.runs_as_is), None)
    if judgement.classification.error is not None:
        assert isinstance(action, Refuse) and action.index == 0
    elif stop is None:
        assert action == RUN
    elif Outcome.BLOCKED in outcomes:
        assert isinstance(action, Refuse) and action.index == stop
        assert action.reason == verdicts[stop].reason
        assert action.sqlstate == (verdicts[stop].sqlstate or BLOCKED_SQLSTATE)
    else:
        assert isinstance(action, Hold) and action.index == stop
        assert action.shapes == verdicts[stop].approval_shapes
    assert judgement.blocked_index == (None if isinstance(action, Run) else action.index)
    assert len(judgement.row_limited) == len(judgement.audit_fields)


def test_rows_count_for_row_returning_kinds_that_touch_policy_tables() -> None:
    assert judged("billing", "SELECT id FROM claims").row_limited == (True,)
    assert judged("billing", "SELECT 1; DELETE FROM claims").row_limited == (False, True)
    # catalog rows and statements that return none never count
    assert judged("billing", "SELECT relname FROM pg_class").row_limited == (False,)
    assert judged("billing", "BEGIN").row_limited == (False,)
    assert judged("billing", "SELEC").row_limited == (False,)
    tables = ("public.claims",)
    assert counts_rows("execute", tables, tables) and counts_rows(None, tables, tables)
    assert not counts_rows("truncate", tables, tables)
    assert not counts_rows("select", ("pg_catalog.pg_class",), tables)
    assert {"select", "copy_out", "fetch", "execute", None} <= ROW_LIMITED_KINDS


def test_errors_are_registered_by_sqlstate_once() -> None:
    assert lookup("42501") is InsufficientPrivilege
    assert InsufficientPrivilege("x").sqlstate == "42501"
    with pytest.raises(KeyError):
        lookup("99999")
    with pytest.raises(ValueError, match="registered twice"):
        type("Again", (SqlStateError,), {}, sqlstate="42501")
    with pytest.raises(ValueError, match="is not a SQLSTATE"):
        type("Bad", (SqlStateError,), {}, sqlstate="4250")


#: Quoted five-character strings in policyc's modules that are not SQLSTATEs, each with why.
#: Words without a digit (MERGE, FETCH, FATAL...) are never SQLSTATEs: every code PostgreSQL
#: defines has a digit, so the test skips them without listing them.
NOT_SQLSTATES = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                     "ES256", "ES384", "ES512"), "a JWS algorithm (alg) of a token or key"),
    "128MB": "the development cluster's shared_buffers",
    "00000": "successful_completion, a NoticeResponse's default: not an error, so "
             "policyc.errors (like psycopg's errors) has no class for it",
}
_QUOTED_CODE = re.compile(r"""(["'])([0-9A-Z]{5})\1""")


def test_no_raw_sqlstate_literals_in_the_engine() -> None:
    """SQLSTATEs come from policyc.errors (``InvalidCursorName.sqlstate``), never a string
    literal: every Python module of the package but errors.py itself is searched (the SQL
    templates live outside it, in sql/)."""
    package = Path(policyc.__file__).parent
    raw: list[str] = []
    allowed_seen: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        if path == package / "errors.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in _QUOTED_CODE.finditer(line):
                code = match.group(2)
                if not any(char.isdigit() for char in code):
                    continue
                if code in NOT_SQLSTATES:
                    allowed_seen.add(code)
                else:
                    raw.append(f"{path.relative_to(package)}:{number}: {code}")
    assert raw == [], "use the SQLSTATE's class in policyc.errors (X.sqlstate): " + ", ".join(raw)
    assert allowed_seen == set(NOT_SQLSTATES), "NOT_SQLSTATES lists strings no longer used"
