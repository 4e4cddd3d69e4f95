"""The processes a benchmark run needs besides PostgreSQL: PgBouncer and the policyc proxy.

Each is a context manager that starts the process in its own process group, waits (bounded)
until its port answers, and on exit (normal or not) terminates the whole group, then kills
it if it lingers.  PgBouncer refuses to run as root like PostgreSQL does, so as root it runs
as the same unprivileged OS user as the throwaway cluster (see policyc.devcluster).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from policyc.devcluster import _server_user, free_port

ROOT = Path(__file__).resolve().parent.parent
PGBOUNCER = Path("/usr/sbin/pgbouncer")


class ServiceError(RuntimeError):
    """A helper process did not start; the message carries the tail of its log."""


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path,
                  timeout: float = 30.0) -> None:
    """Poll 127.0.0.1:port until it accepts a connection; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"port {port} did not open within {timeout:.0f} s:\n{_tail(log)}")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def spawn(argv: Sequence[str], log: Path, port: int, *, env: Mapping[str, str] | None = None,
          as_server_user: bool = False,
          cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in a new session with output to ``log``; stop its group on exit."""
    kwargs: dict[str, object] = {}
    account = _server_user() if as_server_user else None
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=str(cwd or "/"),
            start_new_session=True, **kwargs,  # type: ignore[call-overload]
        )
    try:
        wait_for_port(port, proc, log)
        yield proc
    finally:
        stop_group(proc)


def hand_to_server_user(*paths: Path) -> None:
    """Give files and directories to the cluster's OS user when we run as root."""
    account = _server_user()
    if account is None:
        return
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)


@contextlib.contextmanager
def pgbouncer(workdir: Path, upstream_port: int, dbname: str, users: Sequence[str],
              connect_query: str) -> Iterator[int]:
    """PgBouncer on a free loopback port in session pooling mode; yields its port.

    Session mode because pgbench ``-M prepared`` keeps named prepared statements on its
    server connection, which PgBouncer 1.18 does not track in transaction mode; it is also
    what the proxy does (one upstream backend per client session).  ``connect_query`` runs
    once on every new server connection (we use it to register the bench identity).
    """
    if not PGBOUNCER.exists():
        raise ServiceError(f"{PGBOUNCER} is missing: run scripts/system-deps.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    userlist = workdir / "userlist.txt"
    userlist.write_text("".join(f'"{user}" ""\n' for user in users))
    query = connect_query.replace("'", "''")
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{dbname} = host=127.0.0.1 port={upstream_port} dbname={dbname} "
        f"connect_query='{query}'\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {userlist}\n"
        "pool_mode = session\n"
        "max_client_conn = 200\n"
        "default_pool_size = 40\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "log_pooler_errors = 1\n"
    )
    workdir.chmod(0o755)
    for path in (userlist, ini):
        path.chmod(0o644)
    hand_to_server_user(workdir, userlist, ini)
    with spawn([str(PGBOUNCER), str(ini)], workdir / "pgbouncer.log", port,
               as_server_user=True, cwd=workdir):
        yield port


def python_env() -> dict[str, str]:
    """Our environment with the engine importable and no libpq defaults leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "engine"), os.environ.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def proxy(policy: Path, upstream_dsn: str, workdir: Path, *,
          profile: Path | None = None, workers: int = 1) -> Iterator[tuple[int, int]]:
    """``policyc proxy`` as a subprocess with a durable spool in ``workdir``; yields its
    (port, pid).

    With ``profile`` it runs through bench/profiled_proxy.py: SIGUSR1 to the pid starts
    cProfile, SIGUSR2 stops it and writes ``profile``.  With ``workers`` > 1 it runs
    ``--workers`` (the pid is the supervisor's) and is yielded once every worker listens.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if profile is None:
        argv = [sys.executable, "-m", "policyc.cli"]
    else:
        argv = [sys.executable, str(Path(__file__).with_name("profiled_proxy.py")), str(profile)]
    argv += ["proxy", str(policy), "--listen", f"127.0.0.1:{port}",
             "--upstream", upstream_dsn, "--allow-plaintext-loopback",
             "--spool", str(workdir / "spool")]
    if workers > 1:
        argv += ["--workers", str(workers)]
    log = workdir / "proxy.log"
    with spawn(argv, log, port, env=python_env(), cwd=ROOT) as proc:
        deadline = time.monotonic() + 60
        while _tail(log, 1 << 20).count("listening on") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"{workers} proxy workers did not start:\n{_tail(log)}")
            time.sleep(0.1)
        yield port, proc.pid
