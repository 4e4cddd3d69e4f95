"""Tell approvers about a held statement where they already are: a webhook POST per request.

Delivery is best effort and must never hurt the held session: :meth:`WebhookNotifier.notify`
never raises, runs each blocking HTTP attempt in a worker thread (the proxy's event loop keeps
serving), waits between attempts with ``asyncio.sleep``, and gives up after a bounded number of
retries. LISTEN/NOTIFY stays the primary path; a lost webhook only means an approver hears later.

Two body formats: ``json`` (the request's fields, with ``Authorization: Bearer <secret>`` so the
endpoint can tell policyc from anyone else) and ``slack`` (``{"text": ...}`` for an incoming
webhook, whose URL is itself the secret). Logs name the request id, the host and the HTTP
status, never the statement, its parameters, the URL path or the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policyc import __version__
from policyc.errors import ConfigFileError, PolicycError
from policyc.policy.durations import format_duration
from policyc.policy.model import Webhook, WebhookFormat

__all__ = ["WebhookConfigError", "WebhookNotifier", "read_secret", "slack_text"]

log = logging.getLogger("policyc.webhook")

STATEMENT_SUMMARY = 300
"""Characters of the statement shown in a Slack message."""


class WebhookConfigError(PolicycError):
    """The webhook's secret cannot be read (missing variable, unreadable file)."""

    code = "webhook"
    sqlstate = ConfigFileError.sqlstate


def read_secret(webhook: Webhook) -> str | None:
    """The bearer secret from the environment or a file; None when the policy names none."""
    if webhook.secret_env is not None:
        value = os.environ.get(webhook.secret_env, "")
        if not value:
            raise WebhookConfigError(
                f"approvals.webhook: environment variable {webhook.secret_env} is not set"
            )
        return value
    if webhook.secret_file is not None:
        try:
            lines = Path(webhook.secret_file).read_text().splitlines()
        except OSError as exc:
            raise WebhookConfigError(
                f"approvals.webhook: cannot read secret_file {webhook.secret_file} "
                f"({exc.strerror or type(exc).__name__})"
            ) from exc
        value = lines[0].strip() if lines else ""
        if not value:
            raise WebhookConfigError(
                f"approvals.webhook: secret_file {webhook.secret_file} is empty"
            )
        return value
    return None


def _time_left(request: Mapping[str, Any]) -> str | None:
    expires = request.get("expires_at")
    if isinstance(expires, str):
        try:
            expires = datetime.fromisoformat(expires)
        except ValueError:
            expires = None
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        seconds = int((expires - datetime.now(UTC)).total_seconds())
        return format_duration(max(seconds, 0))
    hold = request.get("hold_seconds")
    if isinstance(hold, int | float) and not isinstance(hold, bool):
        return format_duration(int(hold))
    return None


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _listing(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return ", ".join(str(v) for v in value)
    return "none"


def slack_text(request: Mapping[str, Any]) -> str:
    """A readable message: who wants to run what, why it is held, and how to decide."""
    request_id = request.get("id", "?")
    statement = " ".join(str(request.get("statement", "")).split())
    if len(statement) > STATEMENT_SUMMARY:
        statement = statement[: STATEMENT_SUMMARY - 1] + "…"
    who = f"agent `{request.get('agent', '?')}`"
    if request.get("human"):
        who += f" (for {request['human']})"
    lines = [
        f":hourglass_flowing_sand: *policyc: statement held for approval — request {request_id}*",
        f"{who} in group `{request.get('group', '?')}` wants to run:",
        f"```{statement.replace('```', '` ` `')}```",
        f"held because: {request.get('reason') or 'policy rule'}"
        f" · tables: {_listing(request.get('tables'))}"
        f" · PHI columns: {_listing(request.get('phi_columns'))}",
    ]
    details = []
    if request.get("estimated_rows") is not None:
        details.append(f"estimated rows: {request['estimated_rows']}")
    parameters = request.get("parameters")
    if isinstance(parameters, list | tuple | dict) and parameters:
        details.append(f"{len(parameters)} bound parameters (not shown)")
    left = _time_left(request)
    if left is not None:
        details.append(f"time left: {left}")
    if details:
        lines.append(" · ".join(details))
    lines.append(
        f"Decide: `policyc approve {request_id} --reason \"...\"` or "
        f"`policyc deny {request_id} --reason \"...\"`"
    )
    return _slack_escape("\n".join(lines))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would replay the secret to another URL (as a GET, without the body)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookNotifier:
    """POSTs each new approval request to the policy's webhook, with bounded retries."""

    def __init__(self, webhook: Webhook, *, secret: str | None = None,
                 backoff_seconds: float = 0.5, max_backoff_seconds: float = 30.0) -> None:
        """Reads the secret now (``secret`` overrides it), so a bad configuration fails at
        start-up with :class:`WebhookConfigError` instead of silently at the first request."""
        if urllib.parse.urlsplit(webhook.url).scheme.lower() not in ("http", "https"):
            raise WebhookConfigError("approvals.webhook: url must be https://")
        self.webhook = webhook
        self._secret = secret if secret is not None else read_secret(webhook)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._host = urllib.parse.urlsplit(webhook.url).hostname or "?"

    def body(self, request: Mapping[str, Any]) -> bytes:
        """The POST body for ``request`` in the configured format."""
        if self.webhook.format is WebhookFormat.SLACK:
            payload: Any = {"text": slack_text(request)}
        else:
            payload = {"event": "approval_requested", **request}
            left = _time_left(request)
            if left is not None:
                payload.setdefault("time_left", left)
        return json.dumps(payload, default=str).encode()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"policyc/{__version__}"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        return headers

    def _post(self, body: bytes) -> int:
        """One blocking attempt; the HTTP status (errors included), or raises OSError."""
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.webhook.url, data=body, headers=self._headers(), method="POST")
        try:
            with self._opener.open(req, timeout=self.webhook.timeout_seconds) as response:
                response.read(65536)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code)

    async def notify(self, request: dict[str, Any]) -> None:
        """Deliver ``request`` (fields of audit.approvals: id, agent, group, statement, ...).
        Retries connection errors, 429 and 5xx with exponential backoff; never raises."""
        request_id = request.get("id", "?")
        try:
            body = self.body(request)
        except Exception as exc:  # a request field that does not serialize
            log.error("webhook for request %s not sent: cannot encode it (%s)", request_id,
                      type(exc).__name__)
            return
        attempts = 1 + self.webhook.retries
        delay = self._backoff
        for attempt in range(1, attempts + 1):
            try:
                status = await asyncio.to_thread(self._post, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection refused, DNS, TLS, timeout
                outcome = f"{type(exc).__name__}"
                retry = True
            else:
                if 200 <= status < 300:
                    if attempt > 1:
                        log.info("webhook for request %s delivered to %s after %d attempts",
                                 request_id, self._host, attempt)
                    return
                outcome = f"HTTP {status}"
                retry = status == 429 or status >= 500
            if not retry or attempt == attempts:
                log.warning("webhook for request %s to %s failed (%s) after %d attempt%s; "
                            "approvers still see it in policyc approvals", request_id,
                            self._host, outcome, attempt, "" if attempt == 1 else "s")
                return
            log.info("webhook for request %s to %s failed (%s); retrying in %.1fs",
                     request_id, self._host, outcome, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)
