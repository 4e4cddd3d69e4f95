"""Proxy settings: where to listen, which upstream, TLS, limits, and the service credential.

The service credential (the password of the proxy's service role) comes from the upstream DSN,
``--password-file``, ``--password-command`` (a secret manager's CLI) or ``PGPASSWORD``, in that
order. It is kept in memory only, never logged and never sent to an agent.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from policyc.errors import ConfigFileError, PolicycError
from policyc.policy.model import Policy
from policyc.proxy.audit.owner import default_spool_dir

#: libpq's sslmode values the proxy speaks; the last two check who answers.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_REQUIRED = frozenset({"require", "verify-ca", "verify-full"})
VERIFYING = frozenset({"verify-ca", "verify-full"})


class ProxyConfigError(PolicycError):
    code = "proxy-config"
    sqlstate = ConfigFileError.sqlstate


@dataclass(frozen=True)
class Upstream:
    """Where the database is and how the service role logs in."""

    host: str
    port: int
    dbname: str
    service_user: str
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    # the CA file that vouches for the database's certificate (verify-ca, verify-full), or
    # "system" for the host's trusted CAs
    sslrootcert: str | None = None

    def conninfo(self, user: str | None = None) -> str:
        """A libpq conninfo for the audit connection (the service role by default)."""
        params: dict[str, str | int] = {
            "host": self.host, "port": self.port, "dbname": self.dbname,
            "user": user or self.service_user, "sslmode": self.sslmode,
            "application_name": "policyc-proxy-audit",
        }
        if self.password is not None:
            params["password"] = self.password
        if self.sslrootcert is not None:
            params["sslrootcert"] = self.sslrootcert
        return make_conninfo("", **params)

    @property
    def requires_tls(self) -> bool:
        return self.sslmode in TLS_REQUIRED

    def client_ssl_context(self) -> ssl.SSLContext:
        """TLS to the database as libpq does it for ``sslmode``: ``prefer``/``require``
        encrypt without checking who answers; ``verify-ca`` checks the certificate against
        ``sslrootcert``; ``verify-full`` also checks it names ``host``."""
        if self.sslmode not in VERIFYING:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.sslrootcert in (None, "system"):
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context(cafile=self.sslrootcert)
        context.check_hostname = self.sslmode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def is_unix_socket(self) -> bool:
        return self.host.startswith("/")


def _read_password(password_file: str | None, password_command: str | None) -> str | None:
    if password_file:
        text = Path(password_file).read_text()
        return text.splitlines()[0] if text else ""
    if password_command:
        done = subprocess.run(
            shlex.split(password_command), capture_output=True, text=True, check=False, timeout=30
        )
        if done.returncode != 0:
            raise ProxyConfigError(
                f"--password-command exited with {done.returncode} (its output is not shown)"
            )
        return done.stdout.rstrip("\n")
    return os.environ.get("PGPASSWORD")


def read_service_password(password_file: Path | str | None,
                          password_command: str | None) -> str | None:
    """The service password as ``--password-file`` or ``--password-command`` gives it now
    (None when neither is set); ProxyConfigError says what failed, never with the secret or
    the command's output.  An empty password is refused (a file being rewritten, say)."""
    if password_file:
        try:
            text = Path(password_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ProxyConfigError(f"the password file {password_file} cannot be read "
                                   f"({reason})") from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise ProxyConfigError(f"the password file {password_file} is empty")
        return password
    if password_command:
        try:
            done = subprocess.run(shlex.split(password_command), capture_output=True,
                                  text=True, check=False, timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise ProxyConfigError(f"--password-command did not run ({type(exc).__name__})"
                                   ) from None
        if done.returncode != 0:
            raise ProxyConfigError(
                f"--password-command exited with {done.returncode} (its output is not shown)")
        password = done.stdout.rstrip("\n")
        if not password:
            raise ProxyConfigError("--password-command printed no password")
        return password
    return None


def dsn_has_password(dsn: str) -> bool:
    """The DSN carries the service password itself (then no other source is read)."""
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except Exception:
        return False


def parse_upstream(
    dsn: str, *, password_file: str | None = None, password_command: str | None = None
) -> Upstream:
    """The upstream from a libpq DSN, falling back to PG* environment variables."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:
        raise ProxyConfigError(f"invalid --upstream DSN: {type(exc).__name__}") from None
    env = os.environ
    host = str(params.get("host") or env.get("PGHOST") or "127.0.0.1")
    port = int(str(params.get("port") or env.get("PGPORT") or 5432))
    user = str(params.get("user") or env.get("PGUSER") or "policyc_proxy")
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user)
    password = params.get("password")
    if password is None:
        password = _read_password(password_file, password_command)
    sslmode = str(params.get("sslmode") or env.get("PGSSLMODE") or "prefer")
    if sslmode not in SSLMODES:
        raise ProxyConfigError(f"upstream sslmode {sslmode} is not supported (use one of "
                               f"{', '.join(SSLMODES)})")
    sslrootcert = _root_cert(sslmode, params.get("sslrootcert") or env.get("PGSSLROOTCERT"))
    return Upstream(host, port, dbname, user, None if password is None else str(password),
                    sslmode, sslrootcert)


def _root_cert(sslmode: str, given: object) -> str | None:
    """The CA file for a verifying ``sslmode`` (libpq's default: ~/.postgresql/root.crt),
    checked now: a proxy that cannot check its database's certificate does not start."""
    if sslmode not in VERIFYING:
        return str(given) if given else None
    if given == "system":
        return "system"
    path = Path(str(given)) if given else Path.home() / ".postgresql" / "root.crt"
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ProxyConfigError(
            f"upstream sslmode={sslmode} needs the CA that signed the database's certificate: "
            f"sslrootcert={path} cannot be used ({why}); give sslrootcert=FILE in --upstream "
            "(or PGSSLROOTCERT), or sslrootcert=system for the host's CAs") from None
    return str(path)


@dataclass(frozen=True)
class ProxyConfig:
    policy: Policy
    upstream: Upstream
    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext_loopback: bool = False
    spool_dir: Path | None = None  # None: the upstream's state directory (spool_path)
    max_message_bytes: int = 64 << 20
    max_statement_bytes: int = 1 << 20
    proxy_name: str = "policyc-proxy"
    login_timeout: float = 30.0  # seconds from accept to a verified token; nothing resets it
    # caps (docs/limits.md); each refusal is FATAL 53300.  0 means no cap.
    max_connections: int = 1000  # client connections at once, logged in or not
    max_pending_logins: int = 64  # connections not yet authenticated
    max_sessions_per_agent: int = 20  # one token subject's sessions, all groups together
    max_password_bytes: int = 16 << 10  # the password message (the token) before login
    checkpoint_interval: float = 60.0  # seconds between audit.checkpoint() calls; 0: at close
    # SO_REUSEPORT on the listening socket: several worker processes accept on one port
    # (``policyc proxy --workers N``, docs/deployment.md); Linux spreads connections among them
    reuse_port: bool = False
    # this process is worker ``worker_index`` of ``workers``; with more than one, cancel
    # requests pass between them through Unix sockets in ``cancel_dir`` (policyc.proxy.cancels)
    worker_index: int = 0
    workers: int = 1
    cancel_dir: Path | None = None
    # how every process of the proxy logs (policyc.logs): "text" or "json", from "info" up
    log_format: str = "text"
    log_level: str = "info"
    # on SIGTERM, how long statements in flight may take before every session ends (57P01)
    shutdown_timeout: float = 30.0
    # the admin listener (/live, /ready, /metrics; policyc.proxy.admin): None is off; with
    # workers, worker i listens on admin_port + i
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    metrics_agent_labels: bool = False  # agent names as a metrics label (one series each)
    # where the service password comes from, read again on a reload and when the database
    # refuses it (28P01; policyc.proxy.reload); both None: the DSN, PGPASSWORD or nothing,
    # which cannot change while the proxy runs
    password_file: Path | None = None
    password_command: str | None = None
    # poll the policy, JWKS, TLS and password files and reload when one changes
    reload_on_change: bool = False

    def spool_path(self) -> Path:
        """``spool_dir``, else the default state directory of this upstream (docs/spool.md)."""
        if self.spool_dir is not None:
            return self.spool_dir
        up = self.upstream
        return default_spool_dir(up.host, up.port, up.dbname)

    def server_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # an encrypted key fails instead of OpenSSL asking for its passphrase on the terminal
        # (which would stop the event loop: a reload reads the key while sessions run)
        context.load_cert_chain(str(self.tls_cert), str(self.tls_key or self.tls_cert),
                                password=_no_passphrase)
        return context


def _no_passphrase() -> str:
    raise ProxyConfigError("the TLS key is encrypted: the proxy needs it unencrypted "
                           "(readable by the proxy's user only)")


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False
