"""The approval webhook against a real local HTTP server: retries with backoff, formats,
the secret, bounded attempts, no statement text in logs, and an event loop that keeps running."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from policyc.policy.model import Webhook, WebhookFormat
from policyc.webhook import WebhookConfigError, WebhookNotifier, read_secret, slack_text

REQUEST: dict[str, Any] = {
    "id": 42, "agent": "agent-7", "group": "billing",
    "statement": "COPY (SELECT ssn FROM patients WHERE full_name = 'Jane Roe') TO STDOUT",
    "parameters": ["123-45-6789"], "tables": ["public.patients"],
    "phi_columns": ["public.patients.ssn"], "reason": "copy_out", "estimated_rows": 300,
    "hold_seconds": 120,
}


@dataclass
class Server:
    """Answers each POST with the next status of ``script`` (then 200), recording what came."""

    script: list[int]
    delay: float = 0.0
    received: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(script=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((time.monotonic(), dict(self.headers), body))
            time.sleep(state.delay)
            status = state.script.pop(0) if state.script else 200
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/T000/secret-path"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


SECRET = "s3cret"


def notifier(url: str, fmt: WebhookFormat = WebhookFormat.JSON, retries: int = 5,
             secret: str | None = SECRET, backoff: float = 0.05) -> WebhookNotifier:
    hook = Webhook(url=url, format=fmt, timeout_seconds=2, retries=retries)
    return WebhookNotifier(hook, secret=secret, backoff_seconds=backoff)


def test_retries_5xx_with_backoff_then_delivers_json(server: Server) -> None:
    server.script = [503, 500]
    asyncio.run(notifier(server.url).notify(dict(REQUEST)))
    assert len(server.received) == 3
    gaps = [b[0] - a[0] for a, b in zip(server.received, server.received[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential
    _, headers, body = server.received[-1]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["event"] == "approval_requested"
    assert {k: payload[k] for k in REQUEST} == REQUEST
    assert payload["time_left"] == "2m"


def test_429_is_retried_but_other_4xx_and_redirects_are_not(server: Server) -> None:
    server.script = [429]
    asyncio.run(notifier(server.url).notify(dict(REQUEST)))
    assert len(server.received) == 2
    server.received.clear()
    server.script = [400]
    asyncio.run(notifier(server.url).notify(dict(REQUEST)))
    assert len(server.received) == 1
    server.received.clear()
    server.script = [302]  # following it would replay the secret somewhere else
    asyncio.run(notifier(server.url).notify(dict(REQUEST)))
    assert len(server.received) == 1


def test_attempts_are_bounded_and_failures_logged_without_the_statement(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.script = [500] * 10
    with caplog.at_level(logging.INFO, logger="policyc.webhook"):
        asyncio.run(notifier(server.url, retries=2).notify(dict(REQUEST)))
    assert len(server.received) == 3
    assert "request 42" in caplog.text and "HTTP 500" in caplog.text
    assert "after 3 attempts" in caplog.text
    for secret_or_phi in ("Jane", "ssn FROM", "123-45-6789", "s3cret", "secret-path"):
        assert secret_or_phi not in caplog.text


def test_connection_errors_are_retried_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level(logging.INFO, logger="policyc.webhook"):
        asyncio.run(notifier(f"http://127.0.0.1:{port}/", retries=2).notify(dict(REQUEST)))
    assert "URLError" in caplog.text and "after 3 attempts" in caplog.text


def test_unserializable_request_is_logged_not_raised(server: Server,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="policyc.webhook"):
        asyncio.run(notifier(server.url).notify({"id": 7, "parameters": {(1, 2): "v"}}))
    assert server.received == []
    assert "request 7 not sent: cannot encode it (TypeError)" in caplog.text
    # values JSON lacks (sets, dates, uuids) are sent as text
    asyncio.run(notifier(server.url).notify({"id": 8, "tables": {"public.t"}}))
    assert json.loads(server.received[0][2])["tables"] == "{'public.t'}"


def test_the_event_loop_keeps_running_while_posting(server: Server) -> None:
    server.delay = 0.5
    ticks: list[float] = []

    async def scenario() -> None:
        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        task = asyncio.create_task(ticker())
        await notifier(server.url).notify(dict(REQUEST))
        task.cancel()

    asyncio.run(scenario())
    assert len(server.received) == 1
    assert len(ticks) >= 5  # ~25 ticks in 0.5 s; a blocked loop would give 1


def test_slack_message_is_readable_and_carries_no_parameters(server: Server) -> None:
    slack = notifier(server.url, fmt=WebhookFormat.SLACK, secret=None)
    asyncio.run(slack.notify({**REQUEST, "statement": "SELECT 1 WHERE a < b & c > d"}))
    _, headers, body = server.received[0]
    assert "Authorization" not in headers
    text = json.loads(body)["text"]
    assert list(json.loads(body)) == ["text"]
    assert "request 42" in text and "agent `agent-7` in group `billing`" in text
    assert "SELECT 1 WHERE a &lt; b &amp; c &gt; d" in text
    assert "PHI columns: public.patients.ssn" in text and "time left: 2m" in text
    assert "estimated rows: 300" in text and "1 bound parameters (not shown)" in text
    assert '`policyc approve 42 --reason "..."`' in text
    assert "123-45-6789" not in text
    long = slack_text({**REQUEST, "statement": "x" * 1000})
    assert "x" * 299 + "…" in long and "x" * 300 not in long


def test_secret_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    assert read_secret(Webhook(url="https://h/", secret_env="HOOK_SECRET")) == "from-env"
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(WebhookConfigError, match="HOOK_SECRET is not set"):
        WebhookNotifier(Webhook(url="https://h/", secret_env="HOOK_SECRET"))
    path = tmp_path / "secret"
    path.write_text("from-file\nignored\n")
    assert read_secret(Webhook(url="https://h/", secret_file=str(path))) == "from-file"
    path.write_text("\n")
    with pytest.raises(WebhookConfigError, match="is empty"):
        read_secret(Webhook(url="https://h/", secret_file=str(path)))
    with pytest.raises(WebhookConfigError, match="cannot read"):
        read_secret(Webhook(url="https://h/", secret_file=str(tmp_path / "missing")))
    assert read_secret(Webhook(url="https://h/", format=WebhookFormat.SLACK)) is None
    with pytest.raises(WebhookConfigError, match="https"):
        WebhookNotifier(Webhook(url="file:///etc/passwd"), secret="x")
