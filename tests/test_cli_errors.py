"""Mistakes an operator makes get one line naming the fix and a non-zero exit, never a
traceback (issue #15, item 6): a connection string libpq cannot read, plan and apply run
without the privileges they need, ``--listen`` without a port, a busy port, an upstream that
is down."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CLINIC, Database, clinic_policy
from policyc.cli import build_parser, main
from policyc.errors import PolicycError
from proxyharness import run_proxy


def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    err = capsys.readouterr().err
    return code, out.getvalue() + err


def test_a_connection_string_libpq_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("plan", "apply"):
        code, text = cli(command, str(CLINIC / "policy.yaml"), "--dsn",
                         "host=db password=hunter2 oops", capsys=capsys)
        assert code == 1
        assert "not one libpq can read" in text and "postgresql://" in text
        assert "hunter2" not in text and "oops" not in text and "Traceback" not in text
        assert len(text.strip().splitlines()) == 1


@pytest.mark.db
def test_plan_and_apply_without_privileges_say_so(applied_clinic: Database,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    applied_clinic.execute("CREATE ROLE plain_dba LOGIN")
    try:
        for command in ("plan", "apply"):
            code, text = cli(command, str(CLINIC / "policy.yaml"), "--dsn",
                             applied_clinic.dsn_as("plain_dba"), capsys=capsys)
            assert code == 1, text
            assert f"{command} needs a superuser" in text and "permission denied" in text
            assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    finally:
        applied_clinic.execute("DROP ROLE plain_dba")


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1", "127.0.0.1:", "[::1]:65536",
                                    "host:port"])
def test_listen_needs_a_port(listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli("proxy", str(CLINIC / "policy.yaml"), "--listen", listen,
                     "--allow-plaintext-loopback", capsys=capsys)
    assert code == 64
    assert "is not HOST:PORT (e.g. 127.0.0.1:6432" in text and "Traceback" not in text


@pytest.mark.db
def test_a_busy_port_stops_the_start_and_frees_the_spool(applied_clinic: Database,
                                                          tmp_path: Path) -> None:
    policy = clinic_policy(applied_clinic.name)
    upstream = applied_clinic.dsn_as("policyc_proxy")
    with run_proxy(policy, upstream, tmp_path / "first") as first:
        busy: dict[str, Any] = {"listen_port": first.port}
        with (pytest.raises(PolicycError, match=rf"cannot listen on 127\.0\.0\.1:{first.port}: "
                                                r"address already in use; choose another"),
              run_proxy(policy, upstream, tmp_path / "second", **busy)):
            pass
        # the failed start left the spool as it found it: another start may take it
        with run_proxy(policy, upstream, tmp_path / "second") as second:
            assert second.port != first.port


def test_an_upstream_that_is_down_is_named_with_postgresql_s_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli("proxy", str(CLINIC / "policy.yaml"), "--listen", "127.0.0.1:0",
                     "--upstream", "host=127.0.0.1 port=1 dbname=clinic user=policyc_proxy",
                     "--allow-plaintext-loopback", "--spool", str(tmp_path / "spool"),
                     capsys=capsys)
    assert code == 1
    assert "the proxy cannot start" in text and "127.0.0.1:1/clinic is unreachable" in text
    assert "Connection refused" in text and "Traceback" not in text


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse keeps no public list of subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                yield from ((f"{name} {n}", c) for n, c in _subparsers(child))


def test_every_command_and_option_says_what_it_does_and_its_default() -> None:
    parser = build_parser()
    assert "autonomous agents" in (parser.description or "")  # for users, not a docstring
    assert "policyc apply" in (parser.epilog or "")
    commands = dict(_subparsers(parser))
    assert {"check", "plan", "apply", "proxy", "audit verify", "token"} <= set(commands)
    for name, command in commands.items():
        top = name.split()[0]
        assert command.description, name
        if " " not in name:
            assert (command.epilog or "").startswith("example:\n  policyc " + top), name
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                    action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.default not in (None, False, []):
                assert "default" in action.help, f"{name} {action.dest}: default not said"


def test_help_prints_without_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["proxy", "--help"], ["audit", "verify", "--help"]):
        assert main(argv, io.StringIO()) == 0
        assert "usage: policyc" in capsys.readouterr().out
