"""`policyc check` semantics: every problem at once, each with file, line and dotted key."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from policyc.errors import PolicyError, Problem
from policyc.policy import check_policy, load_policy, load_policy_text

BAD = Path(__file__).resolve().parent / "policies" / "bad"


def where(problems: list[Problem]) -> list[tuple[int, str]]:
    return [(p.location.line, p.location.key) for p in problems]


def found(text: str) -> list[tuple[int, str, str]]:
    """(line, key, message) of every problem in an inline policy."""
    with pytest.raises(PolicyError) as info:
        load_policy_text(dedent(text), source="inline.yaml")
    return [(p.location.line, p.location.key, p.message) for p in info.value.problems]


def keys(text: str) -> list[tuple[int, str]]:
    return [(line, key) for line, key, _ in found(text)]


def message_at(text: str, key: str) -> str:
    messages = [message for _, k, message in found(text) if k == key]
    assert len(messages) == 1, (key, found(text))
    return messages[0]


# --- whole files: all problems, in order, at their lines ------------------------------------


def test_many_problems_are_reported_together() -> None:
    path = BAD / "many_problems.yaml"
    problems = check_policy(path)
    assert all(p.location.file == str(path) for p in problems)
    assert where(problems) == [
        (5, "identity.jwks"),
        (6, "identity.algorithms[1]"),
        (6, "identity.algorithms[2]"),
        (7, "identity.leeway"),
        (11, "phi.public.patients.full_name"),
        (15, "groups.billing.oidc_groups[0]"),
        (16, "groups.billing.raed"),
        (19, "groups.billing.read.public.patients.id"),
        (20, "groups.billing.unmask.public.patients.id"),
        (20, "groups.billing.unmask.public.patients.ssn"),
        (22, "groups.ops.oidc_groups[1]"),
        (26, "groups.ops.write.public.patients.update.full_name"),
        (26, "groups.ops.write.public.patients.update.ssn"),
        (28, "groups.ops.rows.public.visits"),
        (29, "groups.ops.rows.public.patients"),
        (30, "groups.pg_admin"),
        (33, "approvals.approvers"),
        (34, "approvals.hold"),
        (35, "approvals.valid_for"),
        (37, "audit.retention"),
        (38, "audit.results"),
        (39, "audit.results_limit"),
    ]
    text = {f"{p.location.line}:{p.location.key}": p.message for p in problems}
    assert text["5:identity.jwks"].startswith("http:// is refused")
    assert "HMAC" in text["6:identity.algorithms[1]"]
    assert "unsigned tokens" in text["6:identity.algorithms[2]"]
    assert text["11:phi.public.patients.full_name"] == (
        "unknown mask 'scramble'; valid masks: "
        "redact, hash, partial, year, month, zip3, age90, null"
    )
    assert "(billing, ops)" in text["15:groups.billing.oidc_groups[0]"]
    assert text["16:groups.billing.raed"].startswith("unknown key 'raed' (did you mean 'read'?)")
    assert "listed twice" in text["19:groups.billing.read.public.patients.id"]
    assert "is not a PHI column" in text["20:groups.billing.unmask.public.patients.id"]
    assert (
        "does not read column public.patients.ssn"
        in text["20:groups.billing.unmask.public.patients.ssn"]
    )
    assert "reads it masked" in text["26:groups.ops.write.public.patients.update.ssn"]
    assert "neither reads nor writes" in text["28:groups.ops.rows.public.visits"]
    assert "random" in text["29:groups.ops.rows.public.patients"]
    assert "reserved" in text["30:groups.pg_admin"]
    assert "approvers is empty" in text["33:approvals.approvers"]
    assert text["34:approvals.hold"] == "must be longer than 0s"
    assert "is not a duration" in text["35:approvals.valid_for"]
    assert "did you mean MB?" in text["39:audit.results_limit"]


def test_error_text_is_file_line_key_message() -> None:
    path = BAD / "many_problems.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 22
    assert lines[6] == (
        f"{path}:16: groups.billing.raed: unknown key 'raed' (did you mean 'read'?); "
        "allowed here: allow_do, approval, catalog, functions, limits, oidc_groups, read, rows, "
        "unmask, write"
    )
    assert info.value.code == "policy"


def test_schema_errors_file() -> None:
    problems = check_policy(BAD / "schema_errors.yaml")
    assert where(problems) == [
        (1, "version"),
        (2, "databse"),
        (3, "identity.audience"),
        (3, "identity.jwks"),
        (5, "identity.algorithms"),
        (7, "phi.Public.Patients"),
        (9, "phi.public.visits"),
        (11, "groups.Billing"),
        (13, "groups.research.oidc_groups"),
        (15, "groups.research.read.public.visits"),
        (16, "groups.research.read.public.patients[1]"),
        (18, "groups.research.write.public.claims.delete"),
        (19, "groups.research.unmask[0]"),
        (20, "groups.research.allow_do"),
        (21, "groups.research.approval"),
        (22, "groups.research.approval.rows_over"),
        (23, "groups.research.approval.statements[1]"),
        (24, "groups.research.approval.in_transaction"),
        (26, "proxy.service_role"),
    ]
    messages = [p.message for p in problems]
    assert messages[0] == "unsupported format version: this policyc reads version 1"
    assert messages[2] == "missing required key 'audience'"
    assert messages[4] == "must be a list, not a string"
    assert messages[7].startswith("'Billing' is not a group name")
    assert messages[9] == 'must be "*" (every column) or a list of column names'
    assert messages[10] == "must be a string, not a number"
    assert messages[11] == "must be true or false, not a string"  # YAML 1.2: yes is a string
    assert messages[12].startswith("'ssn' is not a column reference")
    assert messages[15] == "must be at least 0"
    assert messages[16].startswith(
        "'drop_table' is not a risky statement kind: use one of copy_out"
    )


def test_duplicates_file() -> None:
    problems = check_policy(BAD / "duplicates.yaml")
    assert [(p.location.line, p.location.key, p.message) for p in problems] == [
        (
            5,
            "phi.public.patients",
            "table public.patients is listed twice (as 'patients' on line 3 and as "
            "'public.patients')",
        ),
        (
            9,
            "groups.billing.oidc_groups[1]",
            "OIDC group 'billing' is listed twice (first as item 1)",
        ),
        (12, "groups.billing.read", "duplicate key 'read' (first written on line 10)"),
        (
            16,
            "groups.billing.unmask.public.patients.ssn",
            "public.patients.ssn is listed twice (first on line 15)",
        ),
        (17, "groups.billing", "duplicate key 'billing' (first written on line 8)"),
        (20, "approvals.approvers[1]", "approver 'analysts' is listed twice (first as item 1)"),
    ]


def test_unsafe_filters_file() -> None:
    problems = check_policy(BAD / "unsafe_filters.yaml")
    assert where(problems) == [
        (11, "groups.agents.rows.public.patients"),
        (11, "groups.agents.rows.public.patients"),
        (12, "groups.agents.rows.public.visits"),
        (13, "groups.agents.rows.public.notes"),
        (13, "groups.agents.rows.public.notes"),
        (14, "groups.agents.rows.public.claims"),
    ]
    messages = " | ".join(p.message for p in problems)
    for fragment in (
        "';' is not allowed",
        "comments are not allowed",
        "pg_sleep",
        "other.patients",
    ):
        assert fragment in messages


def test_identity_file() -> None:
    problems = check_policy(BAD / "identity.yaml")
    assert [(p.location.line, p.location.key, p.message) for p in problems] == [
        (5, "identity.jwks", "unsupported URL scheme 'ftp': use https:// or a file path"),
        (
            6,
            "identity.algorithms[0]",
            "unknown algorithm 'rs256' (did you mean RS256?): use one of RS256, RS384, RS512, "
            "ES256, ES384, ES512, PS256, PS384, PS512, EdDSA",
        ),
        (
            6,
            "identity.algorithms[2]",
            "'HS512' is refused: HMAC algorithms use a shared secret, and with published (JWKS) "
            "keys anyone could forge tokens; use an asymmetric algorithm such as RS256, ES256 "
            "or EdDSA",
        ),
        (
            6,
            "identity.algorithms[3]",
            "unknown algorithm 'ES999': use one of RS256, RS384, RS512, ES256, ES384, ES512, "
            "PS256, PS384, PS512, EdDSA",
        ),
        (7, "identity.leeway", "a leeway over 5m accepts expired tokens for too long"),
        (
            11,
            "groups.proxy_role.approval",
            "group proxy_role holds statements for approval but no one can approve them: add "
            "approvals.approvers",
        ),
        (
            14,
            "proxy.service_role",
            "service role 'proxy_role' is also a group name: the proxy's own role must not be an "
            "agent group role",
        ),
    ]


def test_syntax_error_file() -> None:
    (problem,) = check_policy(BAD / "syntax.yaml")
    assert (problem.location.line, problem.location.key) == (5, "(root)")
    # the wording is PyYAML's or libyaml's, whichever parser is installed
    assert problem.message.startswith("YAML syntax error: ")
    assert "expected ',' or ']'" in problem.message
    assert problem.message.endswith("(while parsing a flow sequence that starts on line 4)")


def test_top_level_must_be_a_mapping() -> None:
    (problem,) = check_policy(BAD / "not_a_mapping.yaml")
    assert (problem.location.line, problem.location.key, problem.message) == (
        1,
        "(root)",
        "must be a mapping, not a list",
    )


# --- individual rules ------------------------------------------------------------------------

PHI = """\
version: 1
phi:
  public.patients:
    ssn: hash
    full_name: partial
approvals:
  approvers: [analysts]
groups:
  g:
    oidc_groups: [g]
"""
# Group sections below start on line 11.


def group(body: str) -> str:
    return PHI + indent(dedent(body), "    ")


def test_version_is_required() -> None:
    assert found("database: x\n") == [(1, "version", "missing required key 'version'")]


@pytest.mark.parametrize("text", ['version: "1"\n', "version: 2\n", "version: true\n"])
def test_version_must_be_the_number_1(text: str) -> None:
    assert keys(text) == [(1, "version")]


def test_unknown_keys_are_reported_where_they_are_with_a_suggestion() -> None:
    text = group(
        """\
        write:
          public.claims: {insret: [a]}
        approval: {row_over: 3}
        """
    )
    assert found(text) == [
        (
            12,
            "groups.g.write.public.claims.insret",
            "unknown key 'insret' (did you mean 'insert'?); allowed here: delete, insert, update",
        ),
        (
            13,
            "groups.g.approval.row_over",
            "unknown key 'row_over' (did you mean 'rows_over'?); allowed here: budget, "
            "in_transaction, mode, rows_over, statements",
        ),
    ]


def test_unmask_of_a_non_phi_column() -> None:
    text = group(
        """\
        read: {public.patients: "*"}
        unmask: [public.patients.id]
        """
    )
    assert found(text) == [
        (
            12,
            "groups.g.unmask.public.patients.id",
            "public.patients.id is not a PHI column (not listed under phi.public.patients): unmask "
            "only applies to PHI columns",
        )
    ]


def test_unmask_of_a_table_the_group_does_not_read() -> None:
    text = group("unmask: [public.patients.ssn]\n")
    assert found(text) == [
        (
            11,
            "groups.g.unmask.public.patients.ssn",
            "group g does not read public.patients: add it to read, or remove "
            "public.patients.ssn from unmask",
        )
    ]


def test_unmask_of_a_column_missing_from_an_explicit_read_list() -> None:
    text = group(
        """\
        read: {patients: [id, full_name]}
        unmask:
          - public.patients.full_name
          - patients.ssn
        """
    )
    assert keys(text) == [(14, "groups.g.unmask.public.patients.ssn")]
    assert "does not read column public.patients.ssn" in found(text)[0][2]


def test_unmask_with_star_read_is_fine() -> None:
    policy = load_policy_text(
        group(
            """\
            read: {public.patients: "*"}
            unmask: [public.patients.ssn]
            """
        )
    )
    assert [str(ref) for ref in policy.group("g").unmask] == ["public.patients.ssn"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            """\
            read: {public.patients: "*"}
            write: {public.patients: {insert: [id, ssn]}}
            """,
            [(12, "groups.g.write.public.patients.insert.ssn")],
        ),
        (
            """\
            read: {public.patients: [id, ssn, full_name]}
            write:
              public.patients:
                update: [full_name]
            """,
            [(14, "groups.g.write.public.patients.update.full_name")],
        ),
        (
            """\
            read: {public.patients: "*"}
            write: {public.patients: {insert: "*"}}
            """,
            [
                (12, "groups.g.write.public.patients.insert"),
                (12, "groups.g.write.public.patients.insert"),
            ],
        ),
    ],
)
def test_writing_a_phi_column_read_masked_is_an_error(
    body: str, expected: list[tuple[int, str]]
) -> None:
    problems = found(group(body))
    assert [(line, key) for line, key, _ in problems] == expected
    assert all("unmask" in message for _, _, message in problems)


def test_writing_phi_is_fine_when_unmasked_or_not_read() -> None:
    unmasked = group(
        """\
        read: {public.patients: "*"}
        write: {public.patients: {insert: "*", update: [ssn, full_name]}}
        unmask: [public.patients.ssn, public.patients.full_name]
        """
    )
    write_only = group("write: {public.patients: {insert: [id, ssn]}}\n")
    not_read_column = group(
        """\
        read: {public.patients: [id]}
        write: {public.patients: {update: [ssn]}}
        """
    )
    for text in (unmasked, write_only, not_read_column):
        load_policy_text(text)


def test_row_filter_needs_a_table_the_group_reaches() -> None:
    text = group(
        """\
        write: {public.claims: {delete: true}}
        rows:
          public.claims: "owner = policyc.agent()"
          public.visits: "owner = policyc.agent()"
        """
    )
    assert found(text) == [
        (
            14,
            "groups.g.rows.public.visits",
            "row filter for public.visits, which group g neither reads nor writes",
        )
    ]


def test_duplicate_oidc_groups_are_reported_at_every_place() -> None:
    text = """\
        version: 1
        groups:
          a: {oidc_groups: [shared, mine]}
          b: {oidc_groups: [other, shared]}
          c:
            oidc_groups:
              - shared
        """
    problems = found(text)
    assert [(line, key) for line, key, _ in problems] == [
        (3, "groups.a.oidc_groups[0]"),
        (4, "groups.b.oidc_groups[1]"),
        (7, "groups.c.oidc_groups[0]"),
    ]
    assert {message for _, _, message in problems} == {
        "OIDC group 'shared' is mapped by more than one group (a, b, c): each OIDC group must "
        "map to exactly one policy group"
    }


@pytest.mark.parametrize("name", ["public", "audit", "policyc", "pg_reader", "policyc_owner"])
def test_reserved_group_names(name: str) -> None:
    text = f"version: 1\ngroups:\n  {name}: {{oidc_groups: [x]}}\n"
    assert keys(text) == [(3, f"groups.{name}")]
    assert "is reserved" in found(text)[0][2]


@pytest.mark.parametrize("name", ["Billing", "1st", "bill-ing", "a" * 64, '"a b"'])
def test_group_names_must_be_lowercase_identifiers(name: str) -> None:
    text = f"version: 1\ngroups:\n  {name}: {{oidc_groups: [x]}}\n"
    problems = found(text)
    assert len(problems) == 1
    line, key, message = problems[0]
    assert line == 3
    assert key == f"groups.{name.strip(chr(34))}"
    assert "is not a group name" in message or "too long" in message


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("read: {public.patients: [id, id]}\n", "groups.g.read.public.patients.id"),
        (
            "write: {public.patients: {update: [id, id]}}\n",
            "groups.g.write.public.patients.update.id",
        ),
        (
            "write: {public.patients: {insert: [a, b, a]}}\n",
            "groups.g.write.public.patients.insert.a",
        ),
    ],
)
def test_columns_listed_twice(body: str, key: str) -> None:
    problems = found(group(body))
    assert [(line, k) for line, k, _ in problems] == [(11, key)]
    assert "is listed twice (first as item" in problems[0][2]


def test_a_table_written_two_ways_is_listed_twice() -> None:
    text = group(
        """\
        read:
          patients: [id]
          public.patients: [id]
        """
    )
    assert keys(text) == [(13, "groups.g.read.public.patients")]


def test_write_entry_that_grants_nothing() -> None:
    text = group("write: {public.claims: {delete: false}}\n")
    assert found(text) == [
        (
            11,
            "groups.g.write.public.claims",
            "write entry for public.claims grants nothing: give insert, update or delete: true",
        )
    ]
    assert found(group("write: {public.claims: {}}\n")) == [
        (11, "groups.g.write.public.claims", "must not be empty")
    ]


def test_empty_lists_are_refused() -> None:
    assert keys(group("read: {public.patients: []}\n")) == [(11, "groups.g.read.public.patients")]
    assert keys("version: 1\ngroups:\n  g: {oidc_groups: []}\n") == [(3, "groups.g.oidc_groups")]


def test_approval_rules() -> None:
    text = """\
        version: 1
        approvals:
          hold: 0s
          valid_for: 0m
        groups:
          g:
            oidc_groups: [g]
            approval: {rows_over: -5, statements: [copy_out, copy_out]}
        """
    assert found(text) == [
        (3, "approvals.hold", "must be longer than 0s"),
        (4, "approvals.valid_for", "must be longer than 0s"),
        (
            8,
            "groups.g.approval",
            "group g holds statements for approval but no one can approve them: add "
            "approvals.approvers",
        ),
        (8, "groups.g.approval.rows_over", "must be at least 0"),
        (
            8,
            "groups.g.approval.statements[1]",
            "statement kind 'copy_out' is listed twice (first as item 1)",
        ),
    ]


def test_rows_over_zero_is_allowed() -> None:
    policy = load_policy_text(group("approval: {rows_over: 0, in_transaction: refuse}\n"))
    assert policy.group("g").approval.rows_over == 0


def test_approvers_must_not_be_agent_groups() -> None:
    text = """\
        version: 1
        approvals: {approvers: [analysts, analysts, billing]}
        groups:
          billing: {oidc_groups: [b]}
        """
    assert found(text) == [
        (2, "approvals.approvers[1]", "approver 'analysts' is listed twice (first as item 1)"),
        (
            2,
            "approvals.approvers[2]",
            "approver role 'billing' is an agent group: agents must never approve held statements",
        ),
    ]


def test_audit_limits() -> None:
    text = """\
        version: 1
        audit: {retention: 0d, results_limit: 0B}
        """
    assert found(text) == [
        (2, "audit.results_limit", "must be larger than 0B"),
        (2, "audit.retention", "must be longer than 0s"),
    ]


def test_schema_and_semantic_messages_are_not_doubled() -> None:
    """A bad mask, algorithm or duration gets one message (ours), not also the schema's."""
    text = """\
        version: 1
        identity: {issuer: i, audience: a, jwks: j.json, algorithms: [HS256], leeway: 5x}
        phi: {public.t: {a: scramble}}
        audit: {retention: 6 years, results_limit: 1 ton}
        approvals: {approvers: []}
        """
    problems = found(text)
    assert len(problems) == 6
    assert len({key for _, key, _ in problems}) == 6


def test_problems_carry_no_row_filter_values() -> None:
    text = group(
        """\
        read: {public.patients: "*"}
        rows:
          public.patients: "ssn = '123-45-6789' AND random() < 1 AND visits.x = 'Jane Doe'"
        """
    )
    problems = found(text)
    assert len(problems) == 2
    assert not any("123-45-6789" in m or "Jane Doe" in m for _, _, m in problems)


def test_check_policy_of_a_good_file_is_empty() -> None:
    path = BAD.parent / "good" / "architecture.yaml"
    assert check_policy(path) == []
    assert check_policy(str(path)) == []


def test_one_bad_name_is_one_problem_not_a_cascade() -> None:
    text = """\
        version: 1
        phi: {Public.T: {a: hash}}
        groups:
          g:
            oidc_groups: [g]
            read: {Public.T: "*", x.y.z: "*"}
            rows: {Public.T: "random() < 1"}
            unmask: [a.b.c.d, Public.T.a]
        """
    assert keys(text) == [
        (2, "phi.Public.T"),
        (6, "groups.g.read.Public.T"),
        (6, "groups.g.read.x.y.z"),
        (7, "groups.g.rows.Public.T"),
        (8, "groups.g.unmask[0]"),
        (8, "groups.g.unmask[1]"),
    ]


def test_group_catalog_and_work_mem_are_checked_where_they_are() -> None:
    text = group(
        """\
        read: {public.patients: "*"}
        catalog: [pg_catalog.pg_policy, public.patients, PG_CATALOG.PG_AUTHID]
        limits: {work_mem: lots}
        """
    )
    problems = found(text)
    assert [key for _, key, _ in problems] == [
        "groups.g.catalog[1]", "groups.g.catalog[2]", "groups.g.limits.work_mem"]
    assert "is not a catalog relation name" in problems[0][2]
    good = load_policy_text(dedent(group(
        """\
        read: {public.patients: "*"}
        catalog: [pg_catalog.pg_policy]
        limits: {work_mem: 16MiB}
        """)), source="inline.yaml")
    billing = good.groups[0]
    assert billing.catalog == ("pg_catalog.pg_policy",)
    assert billing.limits.work_mem == 16 * 1024
