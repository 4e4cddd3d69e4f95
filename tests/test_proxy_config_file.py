"""``policyc proxy --config proxy.toml`` (issue #15, item 4): every option has a key, the file
is read as the command line would be, the command line wins, no secrets in the file, and each
mistake is ``file:line: key: message``."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from conftest import CLINIC
from policyc.cli import _with_config_file, build_parser, main
from policyc.cliargs import subcommand as _subcommand

EVERY_OPTION = """\
policy = "{policy}"
listen = "0.0.0.0:7432"
upstream = "host=db.example port=5433 dbname=clinic user=policyc_proxy"
password_file = "secrets/service-password"
tls_cert = "tls/proxy.crt"
tls_key = "tls/proxy.key"
allow_plaintext_loopback = true
spool = "/var/lib/policyc/spool"
max_message_bytes = 1048576
max-connections = 500
max_pending_logins = 32
max_sessions_per_agent = 4
max_password_bytes = 8192
login_timeout = 12.5
name = "proxy-a"
checkpoint_interval = 30
workers = 2
log_format = "json"
log-level = "warning"
shutdown_timeout = 10
admin = 9187
metrics_agent_labels = true
reload_on_change = true
"""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _with_config_file(parser, args, argv) if args.config else args


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return path


def test_every_option_has_a_key_and_reads_as_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_OPTION.format(policy=CLINIC / "policy.yaml"))
    from_file = parse(["proxy", "--config", str(path)])
    from_line = parse([
        "proxy", str(CLINIC / "policy.yaml"), "--listen", "0.0.0.0:7432",
        "--upstream", "host=db.example port=5433 dbname=clinic user=policyc_proxy",
        "--password-file", str(tmp_path / "secrets/service-password"),
        "--tls-cert", str(tmp_path / "tls/proxy.crt"), "--tls-key", str(tmp_path / "tls/proxy.key"),
        "--allow-plaintext-loopback", "--spool", "/var/lib/policyc/spool",
        "--max-message-bytes", "1048576", "--max-connections", "500",
        "--max-pending-logins", "32", "--max-sessions-per-agent", "4",
        "--max-password-bytes", "8192", "--login-timeout", "12.5", "--name", "proxy-a",
        "--checkpoint-interval", "30", "--workers", "2", "--log-format", "json",
        "--log-level", "warning", "--shutdown-timeout", "10", "--admin", "127.0.0.1:9187",
        "--metrics-agent-labels", "--reload-on-change"])
    assert {k: v for k, v in vars(from_file).items() if k not in ("config", "func")} == {
        k: v for k, v in vars(from_line).items() if k not in ("config", "func")}
    # and nothing the command line takes is missing from the file above
    options = {a.dest for a in _subcommand(build_parser(), "proxy")._actions
               if a.dest not in ("help", "config")}
    keys = {line.split("=")[0].strip().replace("-", "_")
            for line in EVERY_OPTION.splitlines() if "=" in line}
    assert options <= keys | {"password_command"}  # the other way to give the password


def test_the_command_line_wins(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "0.0.0.0:7432"\nworkers = 2\nname = "from-file"\n')
    args = parse(["proxy", "policy.yaml", "--config", str(path), "--workers", "1",
                  "--listen", "127.0.0.1:6432"])
    assert (args.workers, args.listen, args.name) == (1, ("127.0.0.1", 6432), "from-file")
    assert args.policy == "policy.yaml"


@pytest.mark.parametrize(("text", "expected"), [
    ('name = "a"\n\nmax_conections = 5\n', ":3: max_conections: not a proxy option"),
    ('workers = 0\n', ":1: workers: 0 is not a positive number of workers"),
    ('listen = "localhost"\n', ":1: listen: 'localhost' is not HOST:PORT"),
    ('allow_plaintext_loopback = "yes"\n', ":1: allow_plaintext_loopback: true or false"),
    ('name = "a"\nreload_on_change = 1\n', ":2: reload_on_change: true or false"),
    ('max_connections = [1]\n', ":1: max_connections: a string or a number"),
    ('log_format = "xml"\n', ":1: log_format: 'xml' is not one of text, json"),
    ('name = "a"\nlisten = \n', ":2: not TOML"),
    ('upstream = "host=db password=hunter2"\n', ":1: upstream: holds a password"),
    ('upstream = "postgresql://svc:hunter2@db/clinic"\n', ":1: upstream: holds a password"),
])
def test_mistakes_are_file_line_key_message(tmp_path: Path, text: str, expected: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    code = main(["proxy", "--config", str(path)], io.StringIO())
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{path}{expected}" in err and "Traceback" not in err
    assert "hunter2" not in err


def test_a_missing_file_and_a_missing_policy(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--config", str(tmp_path / "nope.toml")], io.StringIO()) == 1
    assert "nope.toml: cannot read the configuration file" in capsys.readouterr().err
    path = write(tmp_path, 'listen = "127.0.0.1:0"\nallow_plaintext_loopback = true\n')
    assert main(["proxy", "--config", str(path)], io.StringIO()) == 64
    assert "give the policy file" in capsys.readouterr().err


def test_the_proxy_runs_from_the_file(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The file's upstream and spool are the ones the proxy uses (here: a port nobody
    listens on, so it stops at once, saying so)."""
    path = write(tmp_path, f'policy = "{CLINIC / "policy.yaml"}"\nlisten = "127.0.0.1:0"\n'
                 'upstream = "host=127.0.0.1 port=1 dbname=clinic user=policyc_proxy"\n'
                 'allow_plaintext_loopback = true\nspool = "spool"\n')
    assert main(["proxy", "--config", str(path)], io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:1/clinic is unreachable" in err
    assert f"audit spool {tmp_path / 'spool'} cannot be checked" in err
