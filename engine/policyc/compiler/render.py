"""Render the SQL templates in sql/templates; identifiers and literals go through psycopg.sql."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jinja2
import pglast
from psycopg import sql

from policyc.policy.model import TableName
from policyc.resources import sql_dir

# Quoting is pure and a policy names the same few hundred identifiers thousands of times.


@lru_cache(maxsize=65536)
def ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


@lru_cache(maxsize=16384)
def qname(table: TableName) -> str:
    return sql.Identifier(table.schema, table.name).as_string(None)


@lru_cache(maxsize=4096)
def seqname(dotted: str) -> str:
    schema, _, name = dotted.partition(".")
    return sql.Identifier(schema, name).as_string(None)


def literal(value: Any) -> str:
    return sql.Literal(value).as_string(None)


def idents(names: Iterable[str]) -> str:
    return ", ".join(ident(n) for n in names)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(sql_dir() / "templates")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders SQL, not HTML
        trim_blocks=False,
        auto_reload=False,  # one stat() per render otherwise; templates do not change mid-run
    )
    env.filters.update(ident=ident, qname=qname, literal=literal, idents=idents, seqname=seqname)
    return env


def statements(template: str, **context: Any) -> tuple[str, ...]:
    """Render a template and split it into single statements (pglast knows $$ and comments)."""
    text = _environment().get_template(template).render(**context)
    return tuple(s.strip() for s in pglast.split(text, with_parser=True) if s.strip())


@cache
def fingerprint() -> str:
    """What rendering depends on besides a template's context: every template's text, this
    module (filters, splitting) and the libraries that render and split."""
    digest = hashlib.sha256()
    for path in sorted((sql_dir() / "templates").glob("*.j2")):
        digest.update(path.name.encode() + b"\x00" + path.read_bytes() + b"\x00")
    digest.update(Path(__file__).read_bytes())
    digest.update(f"jinja2 {jinja2.__version__} pglast {pglast.__version__}".encode())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **dataclasses.asdict(value)}
    raise TypeError(f"cannot describe {type(value).__name__} in a template context")


class Template:
    """The statements of one template with one context, rendered on first use.

    ``digest`` identifies them without rendering: a hash of the template's name, its context
    and :func:`fingerprint`, so equal digests mean equal statements.  Plan compares digests,
    and renders only what it has to show or run.
    """

    __slots__ = ("_digest", "_statements", "context", "name")

    def __init__(self, name: str, /, **context: Any) -> None:
        self.name = name
        self.context = context
        self._statements: tuple[str, ...] | None = None
        self._digest: str | None = None

    @property
    def statements(self) -> tuple[str, ...]:
        if self._statements is None:
            self._statements = statements(self.name, **self.context)
        return self._statements

    @property
    def digest(self) -> str:
        if self._digest is None:
            described = json.dumps(
                [fingerprint(), self.name, self.context], sort_keys=True, default=_canonical
            )
            self._digest = hashlib.sha256(described.encode()).hexdigest()
        return self._digest

    def __repr__(self) -> str:
        return f"Template({self.name!r})"
