"""Throwaway local PostgreSQL clusters for the demo, the tests and the benchmarks.

PostgreSQL refuses to run as root, and CI runs as root; so when we are root the server
processes (initdb, pg_ctl, postgres) run as an unprivileged OS user (``postgres`` when the
distribution package created it, else ``policyc``), and the data directory is handed to it.
As an ordinary user everything simply runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created or started; the message says why."""


def find_bindir() -> Path:
    """The directory of initdb/pg_ctl/postgres: $POLICYC_PG_BINDIR, else the newest installed."""
    override = os.environ.get("POLICYC_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "postgres").exists():
            return Path(candidate)
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ClusterError(
        "no PostgreSQL server found: install it (Debian/Ubuntu: apt-get install postgresql "
        "postgresql-plpython3-<version>) or set POLICYC_PG_BINDIR"
    )


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "policyc"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "policyc"],
        check=True,
    )
    return pwd.getpwnam("policyc")


@dataclass
class Cluster:
    """One local cluster: a data directory, a port on 127.0.0.1 and a private socket dir."""

    base: Path
    port: int = field(default_factory=free_port)
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socketdir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def _run(self, argv: list[str]) -> None:
        account = _server_user()
        kwargs: dict[str, object] = {}
        if account is not None:
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd="/", check=False, **kwargs  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise ClusterError(
                f"{Path(argv[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:]}\n{log}"
            )

    def init(self) -> None:
        """initdb with trust auth for local connections (a throwaway cluster only)."""
        account = _server_user()
        self.base.mkdir(parents=True, exist_ok=True)
        self.socketdir.mkdir(exist_ok=True)
        if account is not None:
            for path in (self.base, self.socketdir):
                os.chown(path, account.pw_uid, account.pw_gid)
            self.base.chmod(0o700)
            # every parent must be traversable by the server's user
            for parent in self.base.parents:
                if parent.stat().st_mode & 0o001 == 0 and str(parent) != "/":
                    raise ClusterError(
                        f"{parent} is not traversable by the server user {account.pw_name}; "
                        "put the cluster under /tmp (POLICYC_CLUSTER_BASE)"
                    )
        bindir = find_bindir()
        self._run(
            [
                str(bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", SUPERUSER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale", "C.UTF-8",
                "--no-sync",
            ]
        )

    def start(self) -> None:
        bindir = find_bindir()
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socketdir),
            "max_connections": "200",
            **self.settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._run(
            [
                str(bindir / "pg_ctl"), "start", "-w", "-t", "60",
                "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts,
            ]
        )

    def stop(self) -> None:
        bindir = find_bindir()
        if (self.datadir / "postmaster.pid").exists():
            self._run([str(bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.datadir)])

    def restart(self) -> None:
        self.stop()
        self.start()


FAST_TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
}


@contextlib.contextmanager
def throwaway_cluster(
    settings: Mapping[str, str] | None = None, keep: bool = False
) -> Iterator[Cluster]:
    """A fresh cluster for the duration of the block; removed afterwards unless ``keep``."""
    root = os.environ.get("POLICYC_CLUSTER_BASE") or tempfile.gettempdir()
    base = Path(tempfile.mkdtemp(prefix="policyc-pg-", dir=root))
    base.chmod(0o755)
    cluster = Cluster(base=base, settings=dict(settings or {}))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(ClusterError):
            cluster.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
