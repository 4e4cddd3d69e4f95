"""The schema check's shortcut (valid policies are recognised key by key, repeated values
once) must never call an invalid policy valid: whatever jsonschema rejects, it rejects too."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.policy import _schema, _yamltree

POLICIES = Path(__file__).resolve().parent / "policies"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _data(path: Path) -> Any:
    return _yamltree.read_yaml(path.read_text()).data


def _full_errors(data: Any) -> list[Any]:
    return list(_schema._validator().iter_errors(data))


def _agrees(data: Any) -> None:
    surely = _schema._surely_valid(_schema._validator().schema, data, {})
    errors = _full_errors(data)
    assert not (surely and errors), [e.message for e in errors]
    assert surely == (not errors)


def test_shipped_policies_agree_with_jsonschema() -> None:
    paths = [*POLICIES.glob("*/*.yaml"), *EXAMPLES.glob("*/policy.yaml")]
    assert len(paths) > 5
    for path in paths:
        data = _data(path)
        if data is not None:
            _agrees(data)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        out = [(*path, key) for key in node]  # a key itself can be renamed
        for key, value in node.items():
            out += _leaves(value, (*path, key))
        return out
    if isinstance(node, list):
        out = []
        for i, value in enumerate(node):
            out += _leaves(value, (*path, i))
        return out
    return [path]


_REPLACEMENTS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(
        ["", "*", "x", "public.t", "bad name", "Public.T", "a.b.c", "redact", "hash", "nul",
         "90s", "1h", "-1", "Robert'); DROP TABLE x;--", "é", "a" * 70]),
    st.lists(st.sampled_from(["id", "*", "", "x y", "id"]), max_size=3),
    st.dictionaries(st.sampled_from(["insert", "update", "delete", "bogus"]),
                    st.sampled_from([True, "*", ["id"], 3]), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_policies_agree_with_jsonschema(data: st.DataObject) -> None:
    base = _data(EXAMPLES / "clinic" / "policy.yaml")
    policy = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        leaves = _leaves(policy)
        path = data.draw(st.sampled_from(leaves))
        parent: Any = policy
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            value = parent.pop(last)  # rename the key (or drop it)
            if data.draw(st.booleans()):
                parent[data.draw(st.sampled_from(["x", "public.zz", "raed", "Bad Key", ""]))] \
                    = value
        else:
            parent[last] = data.draw(_REPLACEMENTS)
    _agrees(policy)
