"""Validate plain policy data against the shipped JSON Schema; say what is wrong in words.

The schema (``policyc/schema/policy-v1.schema.json``) is the one contract editors and the
loader share.  jsonschema reports errors against the parent object for unknown and missing keys
and for bad key names; this module moves each error onto the key it is about (so ``raed``
under ``groups.billing`` is reported at ``groups.billing.raed``, on its own line) and rewrites
the messages for people.  ``uniqueItems`` errors are left to the loader, which names the
repeated item and its line.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from policyc.policy._yamltree import Path

__all__ = ["SchemaProblem", "load_schema", "schema_problems"]

SchemaProblem = tuple[Path, str]
"""A raw path and a message."""

_LEFT_TO_LOADER = frozenset({"uniqueItems"})

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


@lru_cache(maxsize=1)
def load_schema() -> Mapping[str, Any]:
    """The JSON Schema of policy format version 1, as shipped in the package."""
    text = resources.files("policyc").joinpath("schema", "policy-v1.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/x", ...}`` replaced by ``$defs/x`` itself (plus
    the annotations written next to the reference).  The shipped schema has no recursive
    definitions; a validator then never resolves a reference, which was about half of the time
    validating a large policy took.  Errors come out the same: same keywords, same titles."""
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: _inline_refs(v, defs) for k, v in node.items() if k != "$ref"}
        return {**_inline_refs(defs[ref.removeprefix("#/$defs/")], defs), **rest}
    return {k: _inline_refs(v, defs) for k, v in node.items()}


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    # the schema itself is checked against the metaschema by the tests, not on every load
    schema = load_schema()
    return Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))


# Object keywords whose meaning splits over the keys: an object is valid exactly when each
# key and value is (plus the count and required keys).  Annotations are listed so they do not
# stop the split.
_PER_KEY = frozenset({
    "type", "properties", "additionalProperties", "propertyNames", "required", "minProperties",
    "title", "description", "$comment", "$schema", "$id", "$defs",
})


def _surely_valid(schema: Any, instance: object, seen: dict[tuple[int, str], bool]) -> bool:
    """True only when ``instance`` is valid under ``schema`` (False means: ask jsonschema).

    A policy repeats itself: the same column lists, masks and filters under hundreds of tables.
    Objects are split key by key (for the keywords in :data:`_PER_KEY`); anything else is
    validated by jsonschema once per distinct value, by its canonical JSON.  Errors are always
    reported by the full validation, so this only decides that there are none.
    """
    if (isinstance(schema, dict) and isinstance(instance, dict)
            and schema.get("type") == "object" and schema.keys() <= _PER_KEY):
        if len(instance) < schema.get("minProperties", 0):
            return False
        if any(name not in instance for name in schema.get("required", ())):
            return False
        properties = schema.get("properties", {})
        names = schema.get("propertyNames")
        others = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if names is not None and not _surely_valid(names, key, seen):
                return False
            sub = properties.get(key, others)
            if sub is False or (sub is not True and not _surely_valid(sub, value, seen)):
                return False
        return True
    try:
        memo = (id(schema), json.dumps(instance, sort_keys=True))
    except (TypeError, ValueError):  # not JSON data (a YAML timestamp, say): no shortcut
        return False
    if memo not in seen:
        seen[memo] = _validator().evolve(schema=schema).is_valid(instance)
    return seen[memo]


def schema_problems(data: object) -> list[SchemaProblem]:
    """Every schema violation in ``data``, each on the path it is about."""
    if _surely_valid(_validator().schema, data, {}):
        return []
    problems: list[SchemaProblem] = []
    for error in _validator().iter_errors(data):
        for problem in _explain(error):
            if problem not in problems:  # "required" repeats per missing key
                problems.append(problem)
    return problems


def describe(value: object) -> str:
    """What kind of YAML value this is, in words (never the value itself)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "empty (null)"
    return f"a {type(value).__name__}"


def _path(error: ValidationError) -> Path:
    return tuple(error.absolute_path)


def _title(error: ValidationError) -> str | None:
    schema = error.schema
    if isinstance(schema, Mapping):
        title = schema.get("title")
        if isinstance(title, str):
            return title
    return None


def _explain(error: ValidationError) -> Iterator[SchemaProblem]:
    path = _path(error)
    kind = error.validator
    if kind in _LEFT_TO_LOADER:
        return
    if "propertyNames" in error.relative_schema_path:
        # The instance is the offending key; report it at the key itself.
        yield (*path, str(error.instance)), _key_name_message(error)
    elif kind == "additionalProperties":
        yield from _unknown_keys(error, path)
    elif kind == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        required: list[str] = list(_value(error))
        for name in required:
            if name not in instance:
                yield (*path, name), f"missing required key '{name}'"
    elif kind in ("anyOf", "oneOf"):
        yield from _alternatives(error, path)
    else:
        yield path, _message(error)


def _key_name_message(error: ValidationError) -> str:
    name = str(error.instance)
    title = _title(error)
    if error.validator == "maxLength":
        return f"'{name}' is too long (at most {_value(error)} characters)"
    if title:
        return f"'{name}' is not {title}"
    return f"'{name}' is not a valid key here"


def _unknown_keys(error: ValidationError, path: Path) -> Iterator[SchemaProblem]:
    instance = error.instance if isinstance(error.instance, dict) else {}
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    allowed = sorted(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        yield (*path, key), f"unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}"


def _alternatives(error: ValidationError, path: Path) -> Iterator[SchemaProblem]:
    """For ``anyOf``: explain the branch whose shape matches, else list what would do."""
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branch = sub.relative_schema_path[0]
        if isinstance(branch, int):
            by_branch.setdefault(branch, []).append(sub)
    plausible = [
        subs
        for subs in by_branch.values()
        if not any(
            sub.validator in ("type", "const", "enum") and _path(sub) == path for sub in subs
        )
    ]
    if len(plausible) == 1:
        for sub in plausible[0]:
            yield from _explain(sub)
        return
    title = _title(error)
    yield path, f"must be {title}" if title else error.message


def _value(error: ValidationError) -> Any:
    """The schema keyword's value (typed loosely by jsonschema)."""
    return error.validator_value


def _message(error: ValidationError) -> str:
    kind = error.validator
    value = _value(error)
    instance = error.instance
    title = _title(error)
    if kind == "type":
        expected = [value] if isinstance(value, str) else list(value)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
        return f"must be {names}, not {describe(instance)}"
    if kind == "const":
        if _path(error) == ("version",):
            return f"unsupported format version: this policyc reads version {value}"
        return f"must be {json.dumps(value)}"
    if kind == "enum":
        shown = f"'{instance}'" if isinstance(instance, str) else describe(instance)
        what = title or "allowed here"
        return f"{shown} is not {what}: use one of {', '.join(str(v) for v in value)}"
    if kind == "pattern":
        return f"'{instance}' is not {title}" if title else f"'{instance}' has the wrong form"
    if kind in ("minItems", "minProperties", "minLength") and value == 1:
        return "must not be empty"
    if kind == "maxLength":
        return f"is too long (at most {value} characters)"
    if kind == "minimum":
        return f"must be at least {value}"
    return error.message
