"""Render the SQL templates in sql/templates; identifiers and literals go through psycopg.sql."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import jinja2
import pglast
from psycopg import sql

from policyc.policy.model import TableName
from policyc.resources import sql_dir


def ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def qname(table: TableName) -> str:
    return sql.Identifier(table.schema, table.name).as_string(None)


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
    )
    env.filters.update(ident=ident, qname=qname, literal=literal, idents=idents, seqname=seqname)
    return env


def statements(template: str, **context: Any) -> tuple[str, ...]:
    """Render a template and split it into single statements (pglast knows $$ and comments)."""
    text = _environment().get_template(template).render(**context)
    return tuple(s.strip() for s in pglast.split(text, with_parser=True) if s.strip())
