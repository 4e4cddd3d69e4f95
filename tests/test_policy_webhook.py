"""``approvals.webhook`` in the policy: the model it becomes, defaults, and every refusal with
its line (https only, a secret for json, one secret source), checked by loader and schema."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import Any

import jsonschema
import pytest
import yaml

from policyc.errors import PolicyError
from policyc.policy import load_policy_text
from policyc.policy._schema import load_schema
from policyc.policy.model import Webhook, WebhookFormat

HEAD = """\
version: 1
approvals:
  approvers: [security_analysts]
  webhook:
"""


def load(webhook: str, **kwargs: Any) -> Any:
    text = HEAD + "".join(f"    {line}\n" for line in dedent(webhook).strip().splitlines())
    return load_policy_text(text, source="p.yaml", **kwargs)


def problems(webhook: str) -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as info:
        load(webhook)
    return [(p.location.line, p.location.key, p.message) for p in info.value.problems]


def test_json_webhook_with_env_secret_and_defaults() -> None:
    policy = load("""
        url: https://hooks.example.org/policyc
        secret_env: POLICYC_HOOK
    """)
    assert policy.approvals.webhook == Webhook(
        url="https://hooks.example.org/policyc", format=WebhookFormat.JSON,
        secret_env="POLICYC_HOOK", secret_file=None, timeout_seconds=5, retries=5)


def test_slack_webhook_needs_no_secret_and_takes_timeout_and_retries() -> None:
    policy = load("""
        url: https://hooks.slack.com/services/T0/B0/XYZ
        format: slack
        timeout: 10s
        retries: 0
    """)
    hook = policy.approvals.webhook
    assert (hook.format, hook.secret_env, hook.timeout_seconds, hook.retries) == (
        WebhookFormat.SLACK, None, 10, 0)


def test_secret_file_is_relative_to_the_policy(tmp_path: Path) -> None:
    policy = load("""
        url: https://hooks.example.org/
        secret_file: secrets/hook
    """, base_dir=tmp_path)
    assert policy.approvals.webhook.secret_file == str(tmp_path / "secrets" / "hook")


def test_no_webhook_is_none() -> None:
    policy = load_policy_text("version: 1\napprovals:\n  approvers: [a]\n", source="p.yaml")
    assert policy.approvals.webhook is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook"])
def test_http_is_allowed_to_loopback_only(url: str) -> None:
    assert load(f"url: {url}\nsecret_env: S").approvals.webhook.url == url


def test_refusals_name_line_and_key() -> None:
    assert problems("url: http://hooks.example.org/\nsecret_env: S") == [
        (5, "approvals.webhook.url",
         "http:// is refused: requests carry statements and the secret; use https:// "
         "(http:// is allowed to 127.0.0.1 and localhost only, for tests)")]
    assert problems("url: https://hooks.example.org/") == [
        (4, "approvals.webhook",
         "a json webhook needs a secret (secret_env or secret_file): the endpoint must be able "
         "to tell policyc's requests from anyone else's")]
    assert problems("url: https://h.example/\nsecret_env: S\nsecret_file: f") == [
        (4, "approvals.webhook", "give secret_env or secret_file, not both")]


def test_schema_refusals() -> None:
    found = problems("""
        url: ftp://h.example/
        format: teams
        secret_env: 1BAD
        retries: 50
        timeout: soon
        extra: 1
    """)
    keys = {key: message for _, key, message in found}
    assert keys["approvals.webhook.url"] == "'ftp://h.example/' is not an https:// URL"
    assert keys["approvals.webhook.format"].startswith("'teams' is not a webhook format")
    assert keys["approvals.webhook.secret_env"] == "'1BAD' is not an environment variable name"
    assert "approvals.webhook.retries" in keys and "approvals.webhook.timeout" in keys
    assert keys["approvals.webhook.extra"].startswith("unknown key 'extra'")
    assert problems("format: slack") == [
        (4, "approvals.webhook.url", "missing required key 'url'")]


def test_editors_see_the_same_schema() -> None:
    data = yaml.safe_load(HEAD + "    url: https://h.example/\n    secret_file: s\n"
                          "    format: json\n    timeout: 5s\n    retries: 3\n")
    jsonschema.Draft202012Validator(dict(load_schema())).validate(data)
