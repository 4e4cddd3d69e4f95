"""The proxy's log (issue #15, item 3, in part): login failures with their reason, sessions
opened and closed, as stable events; ``--log-format json`` lines hold exactly the allowed
fields, never a token, a statement or a value from the database."""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
import pytest

from policyc import logs
from proxyharness import wait_for

pytestmark = pytest.mark.db

SECRET_VALUE = "SSN-987-65-4321"


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_logins_and_sessions_are_logged_as_events_without_secrets(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    token = proxy.token("agent-7", "billing", clinic_id=1)
    with psycopg.connect(proxy.dsn("agent-7", "billing", token=token), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM patients WHERE full_name = %s", (SECRET_VALUE,))
        conn.execute(f"SELECT '{SECRET_VALUE}' AS leak".encode())
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(proxy.dsn("agent-7", "billing", token=token[:-4] + "AAAA"))
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(proxy.dsn("agent-9", "billing", token=token))  # not its token
    wait_for(lambda: events(caplog, "session_closed"))

    opened, = events(caplog, "session_opened")
    assert (opened.agent, opened.group, opened.tls) == ("agent-7", "billing", False)  # type: ignore[attr-defined]
    closed, = events(caplog, "session_closed")
    assert closed.session_id == opened.session_id  # type: ignore[attr-defined]
    assert closed.statements >= 2 and closed.end_reason == "client terminated the session"  # type: ignore[attr-defined]
    refused = events(caplog, "login_refused")
    assert sorted(r.reason for r in refused) == ["bad_signature", "user_mismatch"]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.WARNING for r in refused)

    formatter = logs.JsonLines()
    lines = [formatter.format(r) for r in caplog.records]
    for line in lines:
        document = json.loads(line)
        assert set(document) <= {"ts", "level", "logger", "event", "message", "exception",
                                 *logs.FIELDS}
        assert document["ts"].endswith("Z") and document["level"] in logs.LEVELS
    text = "\n".join(lines) + "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET_VALUE not in text and "full_name" not in text
    assert token not in text and token.split(".")[2] not in text


def test_json_lines_keep_only_the_allowed_fields() -> None:
    record = logging.LogRecord("policyc.proxy", logging.ERROR, __file__, 1, "boom: %s",
                               ("x",), None)
    record.event = "login_refused"
    record.reason = "expired"
    record.statement = f"SELECT '{SECRET_VALUE}'"  # a field nobody allowed
    try:
        raise ValueError(f"row {SECRET_VALUE}")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    document = json.loads(logs.JsonLines().format(record))
    assert document["event"] == "login_refused" and document["reason"] == "expired"
    assert document["exception"] == "ValueError" and document["message"] == "boom: x"
    assert SECRET_VALUE not in json.dumps(document)


def test_configure_sets_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("json", "warning")
        logging.getLogger("policyc.test").info("not shown")
        logging.getLogger("policyc.test").warning("shown", extra={"event": "probe"})
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert [(x["event"], x["message"]) for x in lines] == [("probe", "shown")]
        logs.configure("text", "info")  # replaces its own handler, leaves the others
        assert sum(isinstance(h, logs._Stderr) for h in root.handlers) == 1
        assert all(h in root.handlers for h in saved[0] if not isinstance(h, logs._Stderr))
        with pytest.raises(ValueError):
            logs.configure("xml", "info")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
