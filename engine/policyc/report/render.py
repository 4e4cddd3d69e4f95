"""The report as one self-contained HTML file (no script, no fetch; inline CSS and SVG) and
as JSON with the same figures."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2

from policyc.report.model import Report, plain

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float | Decimal):
        return f"{value:,.2f}"
    return str(plain(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=False, lstrip_blocks=False)
    env.filters["css"] = lambda verdict: str(verdict).replace(" ", "-")
    env.filters["cell"] = _cell
    return env


def html(report: Report) -> str:
    template = _environment().get_template("report.html.j2")
    period = f"{_when(report.period_from)} to {_when(report.period_to)}"
    return template.render(report=report, period=period, generated=_when(report.generated_at))


def as_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n"
