"""Packaging (issue #15, item 5): the container image, the Compose file, the systemd unit and
the example configuration in packaging/, checked without a database and without a container
engine (none runs here): each file is read the way its tool reads it and held to what the
others and the proxy's own command line say. What this machine can run, it runs: the unit
through ``systemd-analyze verify`` (and ``security --offline``), the proxy's code under the
kernel's MemoryDenyWriteExecute, the health check against a real HTTP server, the wheel's
build step. The several-instances deployment is tests/test_proxy_instances.py."""

from __future__ import annotations

import argparse
import http.server
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, load_module
from policyc.cli import _with_config_file
from policyc.cliargs import build_parser
from policyc.errors import PolicycError
from policyc.proxy.config import parse_upstream

PACKAGING = ROOT / "packaging"
CONTAINERFILE = PACKAGING / "Containerfile"
COMPOSE = PACKAGING / "compose.yaml"
UNIT = PACKAGING / "policyc-proxy.service"
PROXY_TOML = PACKAGING / "proxy.toml"
HEALTHCHECK = PACKAGING / "healthcheck.py"
#: Where the image and the unit read the configuration (packaging/proxy.toml, installed).
INSTALLED_CONFIG = "/etc/policyc/proxy.toml"
#: How long a supervisor waits for its workers beyond --shutdown-timeout before killing one
#: (policyc.proxy.workers.STOP_GRACE_SECONDS).
WORKER_GRACE = 30.0
#: Descriptors a proxy process holds besides two per client connection (client and upstream
#: sockets): listening sockets, audit and approval connections, spool files, the event loop.
FIXED_DESCRIPTORS = 64
HARDENING = {  # the unit's hardening: key -> value (booleans as systemd writes them)
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service", "CapabilityBoundingSet": "", "UMask": "0077",
    "User": "policyc", "DynamicUser": "no", "StateDirectory": "policyc", "Type": "exec",
    "KillSignal": "SIGTERM", "KillMode": "mixed", "Restart": "on-failure",
    "ExecReload": "/bin/kill -HUP $MAINPID",
}


# ---- reading the files as their tools do ------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """A Containerfile's instructions as (KEYWORD, arguments): continuation lines joined,
    comment lines dropped (also inside a continued instruction, as Docker does)."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Containerfile ends inside a continued instruction"
    return result


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image itself: everything after the last FROM."""
    steps = instructions(CONTAINERFILE.read_text())
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last + 1:]


def only(steps: list[tuple[str, str]], keyword: str) -> str:
    found = [args for k, args in steps if k == keyword]
    assert len(found) == 1, f"the image should have exactly one {keyword}, has {len(found)}"
    return found[0]


def exec_form(args: str) -> list[str]:
    """An instruction's JSON (exec) form; the shell form would put /bin/sh between the
    runtime's signals and the proxy."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def copies(steps: list[tuple[str, str]]) -> dict[str, list[str]]:
    """COPY destinations -> sources (flags such as --from dropped)."""
    result: dict[str, list[str]] = {}
    for keyword, args in steps:
        if keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            result[words[-1]] = words[:-1]
    return result


def image_argv() -> list[str]:
    steps = final_stage()
    return exec_form(only(steps, "ENTRYPOINT")) + exec_form(only(steps, "CMD"))


def image_config() -> Path:
    """The file the image's command reads: the source of the COPY to its --config path."""
    sources = copies(final_stage()).get(INSTALLED_CONFIG)
    assert sources and len(sources) == 1, f"no COPY puts a file at {INSTALLED_CONFIG}"
    return ROOT / sources[0]


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    """The unit file's sections -> (key, value) in order; keys may repeat, as in systemd."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for line in UNIT.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        stripped, pending = pending + stripped, ""
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), [])
            continue
        assert current is not None and "=" in stripped, stripped
        key, _, value = stripped.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def service() -> dict[str, str]:
    """The [Service] section, the last assignment of each key winning."""
    return dict(unit_entries()["Service"])


def unit_argv() -> list[str]:
    exec_start = service()["ExecStart"]
    assert "%" not in exec_start and "$" not in exec_start, (
        "ExecStart with specifiers or variables: this test would not read it as systemd does")
    return shlex.split(exec_start.lstrip("-@:+!"))


def seconds(text: str) -> float:
    """A systemd or Compose time span: ``90``, ``90s``, ``1min 30s``, ``1m30s``, ``500ms``."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
             "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts and re.fullmatch(r"[\d.a-z\s]+", text.strip()), text
    return sum(float(number) * units[unit] for number, unit in parts)


def host_port(value: object) -> tuple[str, int]:
    """A parsed address option (``--listen``, ``--admin``) as (host, port)."""
    if isinstance(value, tuple | list) and len(value) == 2:
        return str(value[0]), int(value[1])
    if isinstance(value, str):
        host, _, port = value.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    if isinstance(value, int):
        return "127.0.0.1", value
    pytest.fail(f"cannot read {value!r} as HOST:PORT")


def effective(argv: list[str], config: Path) -> argparse.Namespace:
    """``argv`` (after the program) parsed by the real command line, with ``config`` read as
    the file it names at INSTALLED_CONFIG: what the proxy would run with."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"policyc does not accept {argv}: exit {exc.code} (see stderr)")
    assert args.command == "proxy", argv
    assert args.config == INSTALLED_CONFIG, f"--config should be {INSTALLED_CONFIG}"
    argv = [str(config) if arg == INSTALLED_CONFIG else arg for arg in argv]
    try:
        return _with_config_file(parser, parser.parse_args(argv), argv)
    except PolicycError as exc:
        pytest.fail(f"the configuration does not load: {exc}")


def admin_urls(args: argparse.Namespace) -> list[str]:
    """The /ready URL of each proxy process, as a check on the same host (or in the same
    container) asks it: worker K listens on the admin port + K."""
    host, port = host_port(args.admin)
    assert host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost"), (
        f"admin listens on {host}, which a local health check cannot reach at 127.0.0.1")
    base = "http://[::1]" if host in ("::", "::1") else "http://127.0.0.1"
    return [f"{base}:{port + k}/ready" for k in range(args.workers)]


def admin_ports(args: argparse.Namespace) -> set[int]:
    return {int(url.rsplit(":", 1)[1].split("/")[0]) for url in admin_urls(args)}


def healthcheck() -> Any:
    return load_module(HEALTHCHECK, "policyc_healthcheck")


def stop_budget(args: argparse.Namespace) -> float:
    """How long a graceful stop may take before anything is killed (docs/deployment.md)."""
    return float(args.shutdown_timeout) + (WORKER_GRACE if args.workers > 1 else 0.0)


def descriptors(args: argparse.Namespace) -> int:
    return 2 * int(args.max_connections) + FIXED_DESCRIPTORS


# ---- the container image ----------------------------------------------------------------

def test_the_image_runs_as_a_fixed_non_root_user_from_before_its_command() -> None:
    steps = final_stage()
    keywords = [k for k, _ in steps]
    users = [args for k, args in steps if k == "USER"]
    assert users, "the image sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: a fixed numeric uid, not 0"
    assert not group or (group.isdigit() and int(group) != 0), f"USER {users[-1]}: group 0"
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    assert last_user < keywords.index("ENTRYPOINT") and last_user < keywords.index("CMD")


def test_the_image_s_command_is_the_proxy_with_its_config() -> None:
    argv = image_argv()
    assert argv[0] == "/opt/policyc/bin/policyc", argv
    config = image_config()
    assert config == PROXY_TOML
    effective(argv[1:], config)


def test_the_health_check_asks_every_worker_s_ready_on_the_configured_admin_port() -> None:
    steps = final_stage()
    config = image_config()
    args = effective(image_argv()[1:], config)
    check = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", only(steps, "HEALTHCHECK"))
    assert check, "HEALTHCHECK [OPTIONS] CMD [exec form]"
    command = exec_form(check.group(2))
    assert not any(tool in command[0] for tool in ("curl", "wget")), command
    script, target = command[1], command[-1]
    assert copies(instructions(CONTAINERFILE.read_text())).get(script) == [
        "packaging/healthcheck.py"], f"no COPY puts the health check at {script}"
    assert target == INSTALLED_CONFIG, "the health check reads another file than the proxy"
    assert healthcheck().urls(config) == admin_urls(args)


def test_the_spool_is_a_volume_owned_by_the_image_s_user() -> None:
    steps = final_stage()
    spool = Path(effective(image_argv()[1:], image_config()).spool)
    volumes = exec_form(only(steps, "VOLUME"))
    assert any(spool == Path(v) or Path(v) in spool.parents for v in volumes), (
        f"spool {spool} is on no VOLUME {volumes}: a container's writes would be lost")
    # a new named volume starts as a copy of the image's directory: it must be the proxy's
    uid = only(steps, "USER").partition(":")[0]
    made = re.search(rf"install -d -o {uid} -g \d+ -m 0700 (?:[^&\s]+\s+)*"
                     rf"{re.escape(str(spool))}(?=\s|$)",
                     " ".join(args for k, args in steps if k == "RUN"))
    assert made, f"the image does not create {spool} owned by uid {uid}, mode 0700"


def test_the_image_exposes_its_ports_and_stops_on_sigterm() -> None:
    steps = final_stage()
    args = effective(image_argv()[1:], image_config())
    exposed = {int(p.split("/")[0]) for p in only(steps, "EXPOSE").split()}
    assert {host_port(args.listen)[1], *admin_ports(args)} <= exposed
    assert only(steps, "STOPSIGNAL") in ("SIGTERM", "15")


def test_the_image_keeps_no_build_tools() -> None:
    steps = final_stage()
    runs = " ".join(args for k, args in steps if k == "RUN")
    assert "apt-get install" not in runs and "pip install" not in runs
    assert re.search(r"pip uninstall\b.*\bpip\b", runs), "the image keeps pip"
    assert not any(k == "COPY" and "--from" not in a and a.split()[0] in (".", "./")
                   for k, a in steps), "the whole build context is copied into the image"
    build = instructions(CONTAINERFILE.read_text())[:-len(steps)]
    assert any("--only-binary=:all:" in args for k, args in build if k == "RUN"), (
        "dependencies must come as wheels (nothing compiled in the build)")


# ---- Compose ----------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_runs_the_image_read_only_without_privileges() -> None:
    document = compose()
    proxy = document["services"]["proxy"]
    build = proxy["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == CONTAINERFILE
    assert proxy["read_only"] is True
    assert proxy["cap_drop"] == ["ALL"]
    assert any(o.replace("=", ":") in ("no-new-privileges", "no-new-privileges:true")
               for o in proxy["security_opt"])
    assert any(t.split(":")[0] == "/tmp" for t in proxy["tmpfs"]), "no tmpfs at /tmp"  # noqa: S108
    assert proxy["user"] == only(final_stage(), "USER")
    assert proxy["command"] == exec_form(only(final_stage(), "CMD"))
    assert proxy.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_compose_keeps_the_spool_on_a_named_volume_and_the_password_in_a_file_secret() -> None:
    document = compose()
    proxy = document["services"]["proxy"]
    args = effective(proxy["command"], PROXY_TOML)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    spool = Path(args.spool)
    named = [source for target, source in mounts.items()
             if Path(target) == spool or Path(target) in spool.parents]
    assert named and named[0] in document["volumes"], f"spool {spool} is not on a named volume"
    secrets = [s if isinstance(s, str) else s["source"] for s in proxy["secrets"]]
    targets = {f"/run/secrets/{s}" if isinstance(s, str) else s.get("target", s["source"])
               for s in proxy["secrets"]}
    assert args.password_file in targets, f"{args.password_file} is not a secret's file"
    assert all("file" in document["secrets"][s] for s in secrets)
    assert "PGPASSWORD" not in json.dumps(proxy.get("environment", {}))


def test_compose_checks_ready_and_waits_for_a_graceful_stop() -> None:
    proxy = compose()["services"]["proxy"]
    args = effective(proxy["command"], PROXY_TOML)
    test = proxy["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == INSTALLED_CONFIG, test
    assert test[1:] == exec_form(re.sub(r"^.*?CMD\s+", "", only(final_stage(), "HEALTHCHECK")))
    grace = seconds(proxy["stop_grace_period"])
    assert grace > stop_budget(args), (
        f"stop_grace_period {grace} s: Compose kills the proxy before its shutdown "
        f"({stop_budget(args)} s) and drain are done")
    nofile = proxy["ulimits"]["nofile"]
    assert min(nofile["soft"], nofile["hard"]) >= descriptors(args)
    published: set[int] = set()
    for mapping in proxy["ports"]:
        first, _, last = str(mapping).rsplit(":", 1)[-1].partition("-")
        published.update(range(int(first), int(last or first) + 1))
    assert {host_port(args.listen)[1], *admin_ports(args)} <= published


# ---- systemd ------------------------------------------------------------------------------

def test_the_unit_has_every_hardening_option() -> None:
    settings = service()
    wrong = {key: settings.get(key) for key, value in HARDENING.items()
             if settings.get(key) != value}
    assert not wrong, f"the unit should set {({k: HARDENING[k] for k in wrong})}, has {wrong}"
    assert settings.get("RuntimeDirectory"), "no RuntimeDirectory="
    assert settings.get("Group") in (None, "policyc")


def test_the_unit_s_command_parses_and_its_configuration_loads() -> None:
    settings = service()
    argv = unit_argv()
    assert Path(argv[0]).is_absolute(), argv[0]
    args = effective(argv[1:], PROXY_TOML)
    for key in ("policy", "tls_cert", "tls_key"):  # relative: from the file's directory
        assert PROXY_TOML.parent in Path(getattr(args, key)).parents, (key, getattr(args, key))
    spool = Path(args.spool)
    writable = [Path(p.lstrip("-")) for p in settings.get("ReadWritePaths", "").split()]
    writable.append(Path("/var/lib") / settings["StateDirectory"])
    assert any(spool == w or w in spool.parents for w in writable), (
        f"spool {spool} is read-only under ProtectSystem=strict")
    stop = seconds(settings["TimeoutStopSec"])
    assert stop > stop_budget(args), (
        f"TimeoutStopSec={stop}: systemd kills the proxy before its shutdown "
        f"({stop_budget(args)} s) and drain are done")
    assert int(settings["LimitNOFILE"].split(":")[0]) >= descriptors(args)
    assert admin_urls(args)  # the admin listener is on, where a local check reaches it


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed here")


def checkable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's program pointed at this checkout's policyc (the installed
    path, /opt/policyc/bin/policyc, does not exist here; verify would say only that)."""
    program = Path(sys.executable).with_name("policyc")
    assert program.exists(), program
    installed = unit_argv()[0]
    text = UNIT.read_text()
    assert text.count(f"ExecStart={installed} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={installed} ", f"ExecStart={program} "))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_finds_nothing_in_the_unit(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = checkable_unit(tmp_path)
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    said = [line for line in (done.stdout + done.stderr).splitlines()
            if UNIT.name in line or str(unit) in line]
    assert not said and done.returncode == 0, "\n".join(said) or done.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = checkable_unit(tmp_path)
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout  # 0 (safe) .. 10 (exposed)


# ---- what the hardening asks of the proxy, and the example configuration ----------------

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

UNDER_MDWE = r"""
import asyncio, ctypes, mmap, multiprocessing
import jwt, pglast, psycopg, uvloop
from cryptography.hazmat.primitives.asymmetric import ec
import policyc.cli, policyc.proxy.server, policyc.proxy.workers
from policyc.proxy.judge.classify import classify

libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(66, 0, 0, 0, 0) == 1, "MDWE was not inherited"  # PR_GET_MDWE
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    raise AssertionError("writable and executable memory was allowed")
assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__
assert classify("SELECT name FROM patients WHERE id = $1").statements
key = ec.generate_private_key(ec.SECP256R1())
token = jwt.encode({"sub": "agent-7"}, key, algorithm="ES256")
assert jwt.decode(token, key.public_key(), algorithms=["ES256"])["sub"] == "agent-7"
assert libc.prctl(1, 15) == 0  # PR_SET_PDEATHSIG, as a worker does
assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # a libffi closure

async def main():
    await asyncio.sleep(0)
    return 1
assert uvloop.run(main()) == 1
if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=print, args=("worker",))
    worker.start(); worker.join(30)
    assert worker.exitcode == 0, worker.exitcode
print("ok")
"""


def test_the_proxy_s_code_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute= (systemd) refuses memory that is writable and executable: no
    JIT in CPython, and none in the C extensions the proxy loads, nor in a spawned worker.
    Here the kernel's own version of it (PR_SET_MDWE, Linux 6.3), inherited across exec."""
    script = tmp_path / "under_mdwe.py"
    script.write_text(UNDER_MDWE)
    start = ("import ctypes, os, sys\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
             "    print(os.strerror(ctypes.get_errno()))\n"
             "    sys.exit(77)\n"
             "os.execv(sys.executable, [sys.executable, sys.argv[1]])\n")
    done = subprocess.run([sys.executable, "-c", start, str(script)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)
    if done.returncode == 77:
        pytest.skip(f"this kernel has no PR_SET_MDWE ({done.stdout.strip()})")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_the_example_configuration_keeps_deployment_md_s_keys_and_no_secret() -> None:
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    example = re.search(r"```toml\n# /etc/policyc/proxy.toml\n(.*?)```", deployment, re.S)
    assert example, "docs/deployment.md has no proxy.toml example any more"
    documented = set(tomllib.loads(example.group(1)))
    ours = tomllib.loads(PROXY_TOML.read_text())
    assert documented <= set(ours), f"missing {documented - set(ours)}"
    # what `policyc proxy` makes of it, with a CA file that exists here in place of the
    # deployment's: the example checks who the database is (verify-full), never less
    assert "sslmode=verify-full" in ours["upstream"]
    upstream = parse_upstream(re.sub(r"sslrootcert=\S+", "sslrootcert=" + str(
        ROOT / "examples" / "clinic" / "dev-keys" / "dev-tls.crt"), ours["upstream"]))
    assert upstream.sslmode == "verify-full"
    assert upstream.password is None or upstream.password == ""
    assert "password" not in ours["upstream"]


# ---- the health check and the wheel ------------------------------------------------------

class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b'{"ready": true}'

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/ready" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_listeners() -> Iterator[list[http.server.HTTPServer]]:
    """Two stand-ins for the admin listeners of two workers: ports P and P + 1."""
    for _attempt in range(50):
        first = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
        try:
            second = http.server.HTTPServer(("127.0.0.1", first.server_address[1] + 1), _Ready)
        except OSError:
            first.server_close()
            continue
        break
    else:
        pytest.fail("no two consecutive free ports on 127.0.0.1")
    servers = [first, second]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def run_healthcheck(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *targets], capture_output=True,
                          text=True, timeout=30, check=False)


def test_the_health_check_is_healthy_only_when_every_worker_answers_200(
        admin_listeners: list[http.server.HTTPServer], tmp_path: Path) -> None:
    port = admin_listeners[0].server_address[1]
    config = tmp_path / "proxy.toml"
    config.write_text(f'admin = "0.0.0.0:{port}"\nworkers = 2\n')
    _Ready.status, _Ready.body = 200, b'{"ready": true}'
    done = run_healthcheck(str(config))
    assert done.returncode == 0 and done.stdout.count(" 200 ") == 2, done
    _Ready.status, _Ready.body = 503, b'{"checks": {"upstream": "unreachable"}}'
    done = run_healthcheck(f"http://127.0.0.1:{port}/ready")
    assert done.returncode == 1 and '"upstream": "unreachable"' in done.stdout, done
    _Ready.status = 200
    config.write_text(f"admin = {port + 1}\nworkers = 3\n")  # a bare port; P+2 is closed
    done = run_healthcheck(str(config))
    assert done.returncode == 1 and "refused" in done.stdout.lower(), done
    config.write_text("workers = 2\n")
    done = run_healthcheck(str(config))
    assert done.returncode == 1 and "no admin listener" in done.stdout, done


def test_the_wheel_carries_the_sql_and_plpython_the_proxy_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed policyc (the image's) reads sql/ and plpython/ from policyc/_data
    (policyc.resources); setup.py's build step puts them there."""
    setuptools = pytest.importorskip("setuptools")
    monkeypatch.chdir(ROOT)
    setup = load_module(ROOT / "setup.py", "policyc_setup")
    distribution = setuptools.Distribution({"name": "policyc", "packages": ["policyc"],
                                            "package_dir": {"": "engine"}})
    distribution.script_name = "setup.py"
    command = setup.BuildPyWithData(distribution)
    command.build_lib = str(tmp_path)
    command.ensure_finalized()
    command.run()
    data = tmp_path / "policyc" / "_data"
    for folder in ("sql", "plpython"):
        expected = {p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts}
        built = {p.relative_to(data / folder) for p in (data / folder).rglob("*") if p.is_file()}
        assert expected and built == expected, folder


# ---- the documentation these files point to ----------------------------------------------

DOCS = [ROOT / "docs" / "architecture.md", ROOT / "docs" / "operations.md",
        PACKAGING / "README.md", ROOT / "README.md"]


def slugs(markdown: str) -> set[str]:
    """GitHub's anchors for a document's headings."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_path_and_module_a_guide_names_exists(doc: Path) -> None:
    text = doc.read_text()
    assert "shared/design" not in text and "../shared" not in text  # not shipped
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"link {target}: no {file}")
        elif anchor and file.suffix == ".md" and anchor not in slugs(file.read_text()):
            problems.append(f"link {target}: no heading #{anchor}")
    if doc.name != "README.md" or doc.parent != ROOT:
        for name in set(re.findall(r"`((?:engine|sql|plpython|tests|docs|packaging|scripts|"
                                   r"examples|bench)/[\w./-]*)`", text)):
            if not (ROOT / name).exists():
                problems.append(f"path {name} does not exist")
        for name in set(re.findall(r"`(policyc(?:\.\w+)+)`", text)):
            if not _resolves(name):
                problems.append(f"module or name {name} does not exist")
    assert not problems, "\n".join(problems)


def _resolves(dotted: str) -> bool:
    """``policyc.a.b`` (a module) or ``policyc.a.b.name`` (a name in one) exists; a name
    whose second part is no module of the package is SQL (``policyc.applied_objects``)."""
    parts = dotted.split(".")
    if importlib.util.find_spec(f"policyc.{parts[1]}") is None:
        return True
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False
