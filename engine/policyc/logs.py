"""How the proxy logs: ``--log-format text|json`` and ``--log-level``.

Log lines carry events, never data: a record names its event (``extra={"event": ...}``) and
may carry the fields of :data:`FIELDS` (session id, agent, group, reason, timings). In JSON
each line is one object of exactly those keys, so nothing else a record happens to hold (a
statement, parameters, a token, an exception's message with a row in it) can reach a log
collector; an exception is named by its type only. Text lines keep today's shape.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final

#: What a record may carry into a JSON line besides its event and message.
FIELDS: Final = ("session_id", "agent", "group", "reason", "client_addr", "tls", "end_reason",
                 "statements", "duration_ms", "worker", "count", "policy_hash")
FORMATS: Final = ("text", "json")
LEVELS: Final = ("debug", "info", "warning", "error")
TEXT_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object a line: ts (UTC, ms), level, logger, event, message and the record's
    allowed fields."""

    def format(self, record: logging.LogRecord) -> str:
        at = dt.datetime.fromtimestamp(record.created, dt.UTC)
        line: dict[str, Any] = {
            "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "message",
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, ensure_ascii=False)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Standard error as it is when a record is written (it may be replaced after start)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(log_format: str = "text", level: str = "info") -> None:
    """Send every log record to standard error in ``log_format`` from ``level`` up; a second
    call replaces what the first installed (and nothing else)."""
    if log_format not in FORMATS or level not in LEVELS:
        raise ValueError(f"log format {log_format!r} / level {level!r}")
    handler = _Stderr()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
