"""Row-filter safety: what may reach ``CREATE POLICY ... USING (<expr>)`` and what may not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import parse_sql_json

from policyc.policy.model import TableName
from policyc.policy.rowfilter import MAX_LENGTH, SAFE_FUNCTIONS, check_row_filter

PATIENTS = TableName("public", "patients")


def problems(expression: str, table: TableName = PATIENTS) -> list[str]:
    return check_row_filter(expression, table)


@pytest.mark.parametrize(
    "expression",
    [
        "clinic_id = policyc.claim('clinic_id')::int",
        "clinic_id = (policyc.claim('clinic_id'))::integer AND NOT deleted",
        "owner = policyc.agent() OR session = policyc.session_id()",
        "patients.clinic_id = 1 AND public.patients.id > 0",
        "current_user = owner AND session_user IS NOT NULL AND current_date > created::date",
        "now() - interval '90 days' < created_at",
        "extract(year FROM birth_date) > 1900 AND date_trunc('day', created_at) IS NOT NULL",
        "lower(trim(email)) LIKE '%@example.org' AND length(code) BETWEEN 1 AND 10",
        "coalesce(status, 'open') IN ('open', 'closed') AND nullif(a, b) IS NULL",
        "CASE WHEN kind = 'a' THEN true ELSE false END",
        "greatest(a, b) > least(c, d) AND abs(x) < 3",
        "tags && ARRAY['x'] AND id = ANY (ARRAY[1, 2, 3])",
        "(data->>'clinic') = policyc.claim('clinic') AND data ? 'clinic'",
        "note = '-- not a comment' AND body = $$/* not a comment */$$",
        "pg_catalog.lower(code) = 'x' AND code::pg_catalog.text <> ''",
        "clinic_id IN (SELECT c.id FROM public.clinics c WHERE c.region = 'n')",
        "EXISTS (SELECT 1 FROM public.staff s WHERE s.clinic_id = patients.clinic_id"
        " AND s.agent = policyc.agent())",
        "(SELECT count(*) FROM public.visits v WHERE v.patient_id = patients.id) < 100",
        "id IN (WITH mine AS (SELECT p.id FROM public.care p WHERE p.agent = policyc.agent())"
        " SELECT id FROM mine)",
        "id IN (SELECT a.id FROM public.a JOIN public.b USING (id) WHERE b.flag)",
        "id IN (SELECT x FROM unnest(ARRAY[1, 2]) AS u(x))",
        "id IN (SELECT 1 UNION SELECT 2)",
        "EXISTS (SELECT 1 FROM (SELECT q.id FROM public.q) sub WHERE sub.id = patients.id)",
        "x IS TRUE AND y IS NOT DISTINCT FROM z",
        "pg_has_role(current_user, 'auditors', 'member')",
    ],
)
def test_safe_filters_pass(expression: str) -> None:
    assert problems(expression) == []


def test_own_schema_is_that_of_the_table() -> None:
    lab = TableName("lab", "results")
    assert problems("id IN (SELECT o.id FROM lab.orders o)", lab) == []
    assert problems("x::lab.kind IS NOT NULL", lab) == []
    assert problems("id IN (SELECT o.id FROM public.orders o)", lab) == [
        "subquery reads public.orders: a row filter on lab.results may only read tables in "
        "schema lab"
    ]
    assert problems("results.id = 1 AND lab.results.x = 2", lab) == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # smuggling a second statement or ending the expression early
        ("a = 1; DROP TABLE public.patients", "';' is not allowed"),
        ("a = 1;", "';' is not allowed"),
        ("a = 1 -- hides the closing parenthesis", "comments are not allowed"),
        ("a = 1 /* x */", "comments are not allowed"),
        ("a = 1 UNION SELECT 1", "must be a single boolean expression"),
        ("a = 1 ORDER BY 1", "must be a single boolean expression"),
        ("a = 1 GROUP BY a", "must be a single boolean expression"),
        ("a = 1 LIMIT 1", "must be a single boolean expression"),
        ("a = 1 FOR UPDATE", "must be a single boolean expression"),
        ("a = 1) OR (true", "does not parse"),
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("a = = 1", 'syntax error at or near "=" (at character 5 of the filter)'),
        # volatile, side effects, files, other databases
        ("random() < 0.5", "function random is not allowed in a row filter: it is volatile"),
        ("pg_sleep(10) IS NULL", "function pg_sleep is not allowed in a row filter: it waits"),
        ("set_config('role', 'x', false) = 'x'", "function set_config is not allowed"),
        ("current_setting('app.clinic') = '1'", "settings the agent itself can SET"),
        ("nextval('s') > 0", "function nextval is not allowed in a row filter: it uses a sequence"),
        ("length(pg_read_file('/etc/passwd')) > 0", "function pg_read_file is not allowed"),
        ("lo_import('/etc/passwd') > 0", "large objects"),
        ("dblink('x', 'y') IS NULL", "reaches other databases"),
        ("query_to_xml('select 1', true, true, '') IS NULL", "runs or reads arbitrary SQL"),
        ("pg_terminate_backend(1)", "has side effects"),
        ("clock_timestamp() > created", "is volatile"),
        ("pg_backend_pid() > 0", "inspects or administers the server"),
        ("my_func(a)", "not on the allowlist"),
        ("public.my_func(a)", "function public.my_func is not allowed"),
        ("evil.lower(a) = 'x'", "function evil.lower is not allowed"),
        ("policyc.claims() IS NULL", "function policyc.claims is not a row-filter function"),
        ("claim('clinic_id') = '1'", "call policyc.claim() with its schema"),
        # aggregates and windows
        ("count(*) > 1", "aggregate function count is not allowed"),
        ("sum(x) > 1", "aggregate function sum is not allowed"),
        ("row_number() OVER () = 1", "window function row_number is not allowed"),
        # other tables and schemas
        ("visits.clinic_id = 1", "column reference visits.clinic_id names another table"),
        ("other.patients.x = 1", "column reference other.patients.x names another table"),
        ("id IN (SELECT id FROM other.t)", "subquery reads other.t"),
        ("id IN (SELECT id FROM t)", "table t in a subquery must be schema-qualified"),
        ("id IN (SELECT id FROM db.public.t)", "database-qualified names are not allowed"),
        ("id IN (SELECT s.id FROM public.s WHERE z.x = 1)", "column reference z.x"),
        # data-changing or locking subqueries
        ("id IN (WITH d AS (DELETE FROM public.t RETURNING id) SELECT id FROM d)", "DELETE"),
        ("id IN (WITH d AS (UPDATE public.t SET a = 1 RETURNING id) SELECT id FROM d)", "UPDATE"),
        ("id IN (SELECT id FROM public.t FOR UPDATE)", "FOR UPDATE/SHARE"),
        # others
        ("a = $1", "a parameter ($1) is not allowed"),
        ("a::evil.t IS NULL", "cast to evil.t is not allowed"),
        ("a OPERATOR(evil.=) 1", "operator evil.= is not allowed"),
        ("id IN (SELECT random() FROM public.t)", "function random"),
        ("id IN (SELECT 1 UNION SELECT pg_sleep(1)::int)", "function pg_sleep"),
    ],
)
def test_unsafe_filters_are_refused(expression: str, expected: str) -> None:
    found = problems(expression)
    assert any(expected in message for message in found), found


def test_every_problem_is_reported_not_only_the_first() -> None:
    found = problems("random() < 0.5 AND pg_sleep(1) IS NULL AND visits.x = 1 AND a = $1")
    assert len(found) == 4, found


def test_the_same_problem_is_reported_once() -> None:
    assert len(problems("random() < random()")) == 1


def test_messages_never_repeat_literal_values() -> None:
    found = problems("ssn = '123-45-6789' AND random() < 0.5 AND my_func('Jane Doe')")
    assert found
    assert not any("123-45-6789" in m or "Jane Doe" in m for m in found)


def test_overlong_and_deeply_nested_filters() -> None:
    assert problems("a = 1 AND " * (MAX_LENGTH // 10) + "true")[0].startswith(
        "a row filter is limited"
    )
    assert problems("(" * 2000 + "a = 1" + ")" * 2000) == []  # parentheses only group
    deep = "lower(" * 1000 + "a" + ")" * 1000 + " = 'x'"
    assert problems(deep) == ["row filter is nested too deeply"]
    assert problems("NOT " * 1500 + "true") == ["row filter is nested too deeply"]


def test_allowlist_is_free_of_known_volatile_functions() -> None:
    assert not {"random", "pg_sleep", "set_config", "nextval", "clock_timestamp"} & SAFE_FUNCTIONS


_FRAGMENTS = [
    "a", "=", "1", "(", ")", ";", "--", "/*", "*/", "'", "$$", "\n", " ", ",",
    " OR true", " UNION SELECT 1", " ORDER BY 1", " DROP TABLE t", "policyc.claim('x')",
    "SELECT", " FROM public.t", " WHERE ", "::int", "\\", '"',
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=12))
def test_accepted_filters_stay_one_expression_inside_a_policy(parts: list[str]) -> None:
    """Whatever is accepted, pasted into USING (...), is one CREATE POLICY and nothing more."""
    expression = "".join(parts)
    if problems(expression):
        return
    head = f"CREATE POLICY p ON public.patients USING ({expression}) WITH CHECK ("
    tree = json.loads(parse_sql_json(head + "true)"))
    assert len(tree["stmts"]) == 1
    statement = tree["stmts"][0]["stmt"]["CreatePolicyStmt"]
    # the WITH CHECK clause after the filter is still ours, where we wrote it
    assert statement["with_check"] == {
        "A_Const": {"boolval": {"boolval": True}, "location": len(head)}
    }
