"""The login exchange's pure parts (policyc.proxy.login), without a socket or a database: what
a startup packet may set, what it is refused for, and the welcome the client gets.  The whole
exchange runs against real clients in test_proxy_security.py and test_proxy_limits.py."""

from __future__ import annotations

import pytest

from policyc.proxy.codec import BackendFramer, StartupMessage
from policyc.proxy.judge.settings import PINNED_STARTUP
from policyc.proxy.login import LoginRefused, startup_settings, welcome


def settings(**params: str) -> tuple[dict[str, str], str | None]:
    return startup_settings(StartupMessage({"user": "agent-7", "database": "clinic", **params}))


def test_pinned_lexing_settings_always_go_upstream() -> None:
    forwarded, group = settings()
    assert forwarded == dict(PINNED_STARTUP) and group is None


def test_group_and_settable_settings_from_options_and_parameters() -> None:
    forwarded, group = settings(
        options="-c policyc.group=billing -c statement_timeout=5s",
        application_name="x" * 80, DateStyle="ISO, MDY")
    assert group == "billing"
    assert forwarded["statement_timeout"] == "5s"  # judged later, once the group is known
    assert forwarded["datestyle"] == "ISO, MDY"
    assert forwarded["application_name"] == "x" * 63
    assert "policyc.group" not in forwarded
    assert settings(options="-c policyc.group=")[1] is None


@pytest.mark.parametrize(("params", "reason", "sqlstate"), [
    ({"client_encoding": "LATIN1"}, "bad_encoding", "22023"),
    ({"options": "-c client_encoding=SQL_ASCII"}, "bad_encoding", "42501"),
    ({"standard_conforming_strings": "off"}, "bad_setting", "42501"),
    ({"replication": "database"}, "replication", "42501"),
    ({"options": "-c session_replication_role=replica"}, "bad_setting", "42501"),
    ({"session_authorization": "postgres"}, "bad_setting", "42501"),
    ({"options": "-c"}, "bad_options", "22023"),
])
def test_refusals(params: dict[str, str], reason: str, sqlstate: str) -> None:
    with pytest.raises(LoginRefused) as refused:
        settings(**params)
    assert (refused.value.reason, refused.value.sqlstate) == (reason, sqlstate)
    assert str(refused.value).startswith("policyc: ")


def test_protocol_extensions_are_not_settings() -> None:
    forwarded, _ = settings(**{"_pq_.compression": "on"})
    assert forwarded == dict(PINNED_STARTUP)


def test_welcome_is_ok_parameters_key_and_ready() -> None:
    data = welcome({"server_version": "16.4", "TimeZone": "UTC"}, 1234, b"\x01\x02\x03\x04")
    frames = BackendFramer().feed(data)
    assert [f.type for f in frames] == [b"R", b"S", b"S", b"K", b"Z"]
    assert frames[0].payload == b"\x00\x00\x00\x00"  # AuthenticationOk
    assert frames[1].payload == b"server_version\x0016.4\x00"
    assert frames[3].payload == (1234).to_bytes(4, "big") + b"\x01\x02\x03\x04"
    assert frames[4].payload == b"I"
