"""Verdicts: data-driven cases from tests/classify_cases/*.sql plus rule-level unit tests.

Each case classifies its SQL and decides every statement for a sample group, checking kind,
risky shapes, decision and (when given) resolved tables and PHI columns.  Test ids are
``file:line`` of the expectation, so a failure points at the case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from policyc.policy.model import (
    ALL_COLUMNS,
    ApprovalRules,
    Approvals,
    AuditSettings,
    ColumnRef,
    Group,
    Mask,
    Policy,
    ProxySettings,
    TableName,
    WriteGrant,
)
from policyc.proxy.judge.classify import classify
from policyc.proxy.judge.statement import RISKY, StatementInfo
from policyc.proxy.judge.verdict import (
    BLOCKED_SQLSTATE,
    Verdict,
    combine,
    judge_all,
    judge_statement,
    phi_columns,
    resolve_tables,
)

CASES = Path(__file__).resolve().parent / "classify_cases"

PATIENTS = TableName("public", "patients")
VISITS = TableName("public", "visits")
CLAIMS = TableName("public", "claims")


def _group(name: str, **overrides: object) -> Group:
    fields: dict[str, object] = {
        "name": name,
        "oidc_groups": (f"{name}-agents",),
        "read": {
            PATIENTS: ("id", "clinic_id", "full_name", "ssn", "birth_date"),
            VISITS: ALL_COLUMNS,
        },
        "write": {CLAIMS: WriteGrant(insert=("patient_id", "amount", "code"), update=("status",))},
        "rows": {PATIENTS: "clinic_id = policyc.claim('clinic_id')::int"},
        "unmask": (),
        "approval": ApprovalRules(
            rows_over=1000,
            statements=(
                "copy_out",
                "delete_all",
                "update_all",
                "ddl",
                "truncate",
                "explain_analyze_write",
                "write_in_cte",
            ),
        ),
    }
    fields.update(overrides)
    return Group(**fields)  # type: ignore[arg-type]


BILLING = _group("billing")
CLINICIAN = _group(
    "clinician",
    read={PATIENTS: ALL_COLUMNS, VISITS: ALL_COLUMNS},
    unmask=(
        ColumnRef(PATIENTS, "full_name"),
        ColumnRef(VISITS, "diagnosis"),
        ColumnRef(VISITS, "notes"),
    ),
    approval=ApprovalRules(),
    allow_do=True,
)
RESEARCH = _group(
    "research", approval=ApprovalRules(statements=("do_block", "copy_in")), allow_do=True
)

POLICY = Policy(
    version=1,
    database="clinic",
    identity=None,
    phi={
        PATIENTS: {
            "ssn": Mask.HASH,
            "full_name": Mask.PARTIAL,
            "birth_date": Mask.YEAR,
            "zip": Mask.ZIP3,
            "email": Mask.REDACT,
        },
        VISITS: {"diagnosis": Mask.REDACT, "notes": Mask.REDACT},
    },
    groups=(BILLING, CLINICIAN, RESEARCH),
    approvals=Approvals(approvers=("security-analysts",)),
    audit=AuditSettings(),
    proxy=ProxySettings(),
)


# --------------------------------------------------------------------------- case files


@dataclass(frozen=True)
class Case:
    sql: str
    expect: str
    where: str


def _load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(CASES.glob("*.sql")):
        sql_lines: list[str] = []
        expects: list[tuple[int, str]] = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate([*lines, ""], 1):
            if line.startswith("=>"):
                expects.append((number, line[2:].strip()))
                continue
            if expects:
                sql = "\n".join(sql_lines)
                cases.extend(Case(sql, text, f"{path.name}:{at}") for at, text in expects)
                sql_lines, expects = [], []
            if not sql_lines and (not line.strip() or line.startswith("#")):
                continue
            sql_lines.append(line)
    return cases


ALL_CASES = _load_cases()
_SPEC = re.compile(r"^(?P<kind>\w+)\[(?P<risky>[\w,]*)\]\s+(?P<decision>\w+)(?P<extra>.*)$")


def _names(text: str) -> set[str]:
    return {item for item in text.split(",") if item}


def _check_statement(info: StatementInfo, verdict: Verdict, spec: str) -> None:
    match = _SPEC.match(spec.strip())
    assert match, f"bad case spec {spec!r}"
    assert info.kind == match["kind"]
    expected_risky = _names(match["risky"])
    assert expected_risky <= RISKY, f"unknown risky shape in {spec!r}"
    assert set(info.risky) == expected_risky
    assert verdict.outcome == match["decision"], verdict.reason
    for extra in match["extra"].split():
        key, _, value = extra.partition("=")
        if key == "tables":
            assert {str(t) for t in verdict.tables} == _names(value)
        elif key == "phi":
            assert {str(c) for c in verdict.phi_columns} == _names(value)
        else:
            raise AssertionError(f"unknown case key {key!r}")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.where) for c in ALL_CASES])
def test_case(case: Case) -> None:
    expect = case.expect
    group = BILLING
    prefixed = re.match(r"^(\w+):\s*(.*)$", expect)
    if prefixed:
        group = POLICY.group(prefixed[1])
        expect = prefixed[2]
    result = classify(case.sql)
    if expect.startswith("error"):
        assert result.error is not None and not result.statements
        assert result.error_sqlstate == expect.split()[1]
        (verdict,) = judge_all(result, group, POLICY)
        assert verdict.outcome == "blocked"
        return
    assert result.error is None, result.error
    if expect == "none":
        assert result.statements == ()
        return
    specs = expect.split("|")
    assert len(result.statements) == len(specs), [s.kind for s in result.statements]
    for info, spec in zip(result.statements, specs, strict=True):
        _check_statement(info, judge_statement(info, group, POLICY), spec)


def test_cases_cover_every_kind_and_shape() -> None:
    kinds: set[str] = set()
    shapes: set[str] = set()
    for case in ALL_CASES:
        for spec in case.expect.split("|"):
            match = _SPEC.match(spec.split(":", 1)[-1].strip())
            if match:
                kinds.add(match["kind"])
                shapes |= _names(match["risky"])
    assert shapes == set(RISKY)
    assert kinds >= {
        "select", "insert", "update", "delete", "merge", "copy_in", "copy_out", "ddl",
        "truncate", "set", "show", "reset", "transaction", "prepare", "execute", "deallocate",
        "declare_cursor", "fetch", "close_cursor", "explain", "do", "call", "listen", "notify",
        "lock", "vacuum", "discard", "role", "other",
    }  # fmt: skip


# --------------------------------------------------------------------------- rules


def _one(sql: str) -> StatementInfo:
    result = classify(sql)
    assert result.error is None and len(result.statements) == 1
    return result.statements[0]


def test_blocked_verdicts_carry_42501_and_no_literals() -> None:
    secret = "123-45-6789"
    for sql in (
        f"SELECT set_config('role', '{secret}', false)",
        f"COPY t TO PROGRAM '{secret}'",
        f'SET ROLE "{secret}"',
        f"SELECT pg_read_file('{secret}')",
        f"SET work_mem = '{secret}'",
        f"DO $$ BEGIN RAISE NOTICE '{secret}'; END $$",
        f"CREATE TABLE t (a text DEFAULT '{secret}')",
        f'SET "{secret}.x" = 1',
    ):
        verdict = judge_statement(_one(sql), BILLING if "CREATE" not in sql else CLINICIAN, POLICY)
        assert verdict.outcome == "blocked", sql
        assert verdict.sqlstate == BLOCKED_SQLSTATE
        assert verdict.reason and secret not in verdict.reason
        assert verdict.reason[0].isupper() or verdict.reason[0].islower()


def test_unknown_setting_name_is_not_echoed_when_odd() -> None:
    verdict = judge_statement(_one('SET "Weird Name!.x" = 1'), BILLING, POLICY)
    assert verdict.outcome == "blocked"
    assert verdict.reason is not None and "Weird" not in verdict.reason


def test_needs_approval_names_the_shapes() -> None:
    verdict = judge_statement(_one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
                              BILLING, POLICY)
    assert verdict.outcome == "needs_approval"
    assert verdict.approval_shapes == {"delete_all", "write_in_cte"}
    assert verdict.sqlstate is None
    assert verdict.reason is not None and "delete_all" in verdict.reason


def test_blocked_wins_over_approval() -> None:
    # ddl is approvable for billing
    verdict = judge_statement(_one("CREATE ROLE r"), BILLING, POLICY)
    assert verdict.outcome == "blocked"


def test_phi_resolution_and_unmask() -> None:
    info = _one("SELECT p.ssn, p.full_name, v.notes FROM patients p JOIN visits v USING (id)")
    assert resolve_tables(info, BILLING, POLICY) == {PATIENTS, VISITS}
    touched = phi_columns(info, BILLING, POLICY)
    assert touched == {
        ColumnRef(PATIENTS, "ssn"),
        ColumnRef(PATIENTS, "full_name"),
        ColumnRef(VISITS, "notes"),
    }
    assert judge_statement(info, BILLING, POLICY).outcome == "masked"
    # clinician unmasks full_name and notes but not ssn
    assert judge_statement(info, CLINICIAN, POLICY).outcome == "masked"
    names_only = _one("SELECT p.full_name, v.notes FROM patients p JOIN visits v ON true")
    verdict = judge_statement(names_only, CLINICIAN, POLICY)
    assert verdict.outcome == "allowed"
    assert verdict.phi_columns == {ColumnRef(PATIENTS, "full_name"), ColumnRef(VISITS, "notes")}


def test_unqualified_column_matches_every_phi_table_of_the_statement() -> None:
    info = _one("SELECT notes FROM patients, visits")
    assert phi_columns(info, BILLING, POLICY) == {ColumnRef(VISITS, "notes")}


def test_cte_named_like_a_group_table_is_kept() -> None:
    # The CTE shadows the table, but over-reporting PHI beats missing it.
    info = _one("WITH patients AS (SELECT 1 AS ssn) SELECT ssn FROM patients")
    assert PATIENTS in resolve_tables(info, BILLING, POLICY)
    assert judge_statement(info, BILLING, POLICY).outcome == "masked"


def test_tables_outside_the_group_are_kept_as_written() -> None:
    info = _one("SELECT * FROM pg_catalog.pg_class, mystery")
    assert resolve_tables(info, BILLING, POLICY) == {
        TableName("pg_catalog", "pg_class"),
        TableName("", "mystery"),
    }
    assert judge_statement(info, BILLING, POLICY).outcome == "allowed"


def test_judge_all_and_combine() -> None:
    result = classify("SELECT 1; SELECT ssn FROM patients; DELETE FROM claims")
    verdicts = judge_all(result, BILLING, POLICY)
    assert [v.outcome for v in verdicts] == ["allowed", "masked", "needs_approval"]
    whole = combine(verdicts)
    assert whole.outcome == "needs_approval"
    assert whole.phi_columns == {ColumnRef(PATIENTS, "ssn")}
    assert whole.tables == {PATIENTS, CLAIMS}
    assert whole.approval_shapes == {"delete_all"}

    blocked = combine(judge_all(classify("SELECT 1; RESET ROLE"), BILLING, POLICY))
    assert blocked.outcome == "blocked" and blocked.sqlstate == BLOCKED_SQLSTATE

    assert combine(()).outcome == "allowed"


def test_judge_all_refuses_unclassifiable_sql() -> None:
    (verdict,) = judge_all(classify("SELEC 1"), BILLING, POLICY)
    assert verdict.outcome == "blocked"
    assert verdict.sqlstate == "42601"
    (verdict,) = judge_all(classify("SELECT 1", max_length=4), BILLING, POLICY)
    assert verdict.sqlstate == "54000"
    assert verdict.reason == "statement of 8 bytes exceeds the limit of 4"


def test_index_follows_a_new_policy_object() -> None:
    info = _one("SELECT ssn FROM patients")
    assert judge_statement(info, BILLING, POLICY).outcome == "masked"
    no_phi = Policy(
        version=1,
        database=None,
        identity=None,
        phi={},
        groups=(BILLING,),
        approvals=Approvals(),
        audit=AuditSettings(),
        proxy=ProxySettings(),
    )
    assert judge_statement(info, BILLING, no_phi).outcome == "allowed"


def test_a_refused_catalog_function_is_named_with_its_class_and_article() -> None:
    reasons = {name: judge_statement(_one(f"SELECT {name}(1)"), BILLING, POLICY).reason
               for name in ("pg_table_size", "pg_tablespace_location")}
    assert "function pg_table_size is an activity function;" in str(reasons["pg_table_size"])
    assert "is a file network function;" in str(reasons["pg_tablespace_location"])
