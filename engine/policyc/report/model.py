"""What a report is made of: sections of figures, tables, verdicts and notes.

The HTML and the JSON are two renderings of the same :class:`Report`; charts are the only
thing the JSON leaves out (their figures are in the tables beside them).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: Verdicts, worst last: what a section's badge says.
OK, INFO, NOT_CHECKED, WARN, FAIL = "ok", "info", "not checked", "warn", "fail"
_RANK = {OK: 0, INFO: 0, NOT_CHECKED: 1, WARN: 2, FAIL: 3}


def worst(*verdicts: str) -> str:
    return max(verdicts, key=lambda v: _RANK[v], default=OK)


@dataclass
class Table:
    """A small table of figures: column headings and rows of plain values."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    empty: str = "none"
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns,
                "rows": [[plain(v) for v in row] for row in self.rows],
                **({"note": self.note} if self.note else {})}


@dataclass
class Finding:
    """One line worth an auditor's attention, with its verdict."""

    verdict: str
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "text": self.text}


@dataclass
class Section:
    number: int
    key: str
    title: str
    regulation: str
    figures: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    cannot_show: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return worst(*(f.verdict for f in self.findings)) if self.findings else INFO

    def find(self, verdict: str, text: str) -> None:
        self.findings.append(Finding(verdict, text))

    def as_json(self) -> dict[str, Any]:
        return {"number": self.number, "key": self.key, "title": self.title,
                "regulation": self.regulation, "verdict": self.verdict,
                "figures": plain(self.figures),
                "findings": [f.as_json() for f in self.findings],
                "tables": [t.as_json() for t in self.tables], "queries": self.queries,
                "cannot_show": self.cannot_show}


@dataclass
class Report:
    generated_at: dt.datetime
    period_from: dt.datetime
    period_to: dt.datetime
    database: str
    role: str
    integrity: Finding
    sections: list[Section]
    queries: dict[str, dict[str, Any]]
    policy: dict[str, Any] | None
    timings: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "format": "policyc-report/1",
            "generated_at": plain(self.generated_at),
            "period": {"from": plain(self.period_from), "to": plain(self.period_to)},
            "database": self.database, "role": self.role,
            "integrity": self.integrity.as_json(),
            "policy": plain(self.policy),
            "sections": [s.as_json() for s in self.sections],
            "queries": self.queries,
        }


def plain(value: Any) -> Any:
    """JSON-ready: times as ISO 8601, decimals as numbers, UUIDs as text."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value
