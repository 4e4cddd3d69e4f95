"""Whom an audit spool belongs to, and where it lives by default.

A spool holds records on their way into one database's ``audit`` schema.  Drained into any
other database they would corrupt its trail (``audit verify`` fails there) and be missing
from their own, so a spool belongs to exactly one upstream database and is used by one proxy
process at a time:

* **One upstream.**  The owner file ``<spool>/owner.json`` names the database by the
  cluster's system identifier (``pg_control_system()``: kept by physical replicas and
  failover, new after initdb, ``pg_upgrade`` or a restore into another cluster) and the
  database's OID in that cluster, plus, for people, its name, host and port.  The proxy
  writes it at its first start (atomically: a fsynced temporary file renamed into place, then
  the directory fsynced) and compares it at every start, before it recovers anything; a spool
  owned by another database is refused, naming both, and nothing in it is touched.  The
  audit log compares again on every connection it opens later, so a host name that starts
  pointing at another cluster while the proxy runs never receives the spool's records.
* **One process.**  ``<spool>/spool.lock`` is held with ``flock`` for as long as the audit
  log runs (:mod:`policyc.proxy.audit.spool`); a second proxy on the same directory is refused.
* **One instance.**  ``<spool>/instance`` holds the id of the proxy instance the spool is
  (:func:`instance_id`, written once like the owner file): a proxy restarted on its spool is
  the same instance, which lets it close the sessions its crashed run left open
  (:mod:`policyc.proxy.audit.sessions`).
* **Unowned spools.**  A spool with undrained records and no owner file was written by an
  older policyc (or its owner file was removed): nothing says where its records belong, so it
  is refused too, unless the operator creates the empty file ``<spool>/owner.adopt`` to say
  they belong to this proxy's database.

The default location (:func:`default_spool_dir`) is a state directory per upstream, never
the working directory.  See docs/spool.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import pwd
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from policyc.errors import AuditStorageFailure, PolicycError
from policyc.proxy.audit.spool import fsync_directory
from policyc.resources import sql_dir

OWNER_NAME = "owner.json"
INSTANCE_NAME = "instance"
ADOPT_NAME = "owner.adopt"
_OWNER_TMP = "owner.json.tmp"
FORMAT = 1


class SpoolOwnershipError(PolicycError):
    """The spool belongs to another database (or to nobody known): the proxy must not start."""

    code = "spool-owner"
    sqlstate = AuditStorageFailure.sqlstate


@dataclass(frozen=True)
class UpstreamIdentity:
    """One database: its cluster's system identifier and its OID (the identity), and its name,
    host and port (for people; a renamed database or a moved host is still the same one)."""

    system_identifier: str
    database_oid: int
    database: str
    host: str
    port: int

    def same_database(self, other: UpstreamIdentity) -> bool:
        return (self.system_identifier == other.system_identifier
                and self.database_oid == other.database_oid)

    def describe(self) -> str:
        return (f'database "{self.database}" (oid {self.database_oid}) of cluster '
                f"{self.system_identifier} at {self.host}:{self.port}")


@cache
def identity_query() -> str:
    return (sql_dir() / "proxy" / "upstream_identity.sql").read_text()


async def read_identity(conn: psycopg.AsyncConnection[Any], host: str,
                        port: int) -> UpstreamIdentity:
    """The identity of the database ``conn`` is connected to (``host``/``port`` as configured).

    Raises :class:`SpoolOwnershipError` when the role may not read the system identifier, and
    ``psycopg.Error`` when the database fails otherwise.
    """
    try:
        cur = await conn.execute(identity_query())
        row = await cur.fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise SpoolOwnershipError(
            "the proxy's service role may not call pg_control_system(), so it cannot tell "
            "which cluster its audit spool belongs to; as a superuser: GRANT EXECUTE ON "
            "FUNCTION pg_control_system() TO <the service role>") from None
    if row is None:  # current_database() is always in pg_database
        raise SpoolOwnershipError("the upstream did not report its own database")
    return UpstreamIdentity(str(row[0]), int(row[1]), str(row[2]), host, port)


# --- the owner file -----------------------------------------------------------------------------
def read_owner(directory: Path) -> UpstreamIdentity | None:
    """The owner recorded in ``directory``, or None when there is no owner file."""
    path = directory / OWNER_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError("unknown format")
        return UpstreamIdentity(str(data["system_identifier"]), int(data["database_oid"]),
                                str(data["database"]), str(data["host"]), int(data["port"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SpoolOwnershipError(
            f"the owner file {path} is unreadable, so nobody can tell which database the "
            "records in this spool belong to; restore it, or move the spool aside") from None


def write_owner(directory: Path, owner: UpstreamIdentity, proxy_name: str,
                claimed_at: str | None = None) -> None:
    """Write ``owner.json`` atomically and durably (temporary file, fsync, rename, fsync dir)."""
    data = {
        "format": FORMAT,
        "system_identifier": owner.system_identifier,
        "database_oid": owner.database_oid,
        "database": owner.database,
        "host": owner.host,
        "port": owner.port,
        "proxy": proxy_name,
        "claimed_at": claimed_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_durably(directory, OWNER_NAME, (json.dumps(data, indent=2) + "\n").encode())


def instance_id(directory: Path) -> uuid.UUID:
    """The id of the proxy instance whose spool is ``directory`` (locked by the caller),
    created (durably) the first time.  An unreadable id is replaced: the sessions of the
    earlier id are then closed by the others once its heartbeat is old."""
    path = directory / INSTANCE_NAME
    with contextlib.suppress(FileNotFoundError, ValueError):
        return uuid.UUID(path.read_text(encoding="ascii").strip())
    made = uuid.uuid4()
    _write_durably(directory, INSTANCE_NAME, f"{made}\n".encode())
    return made


def _write_durably(directory: Path, name: str, body: bytes) -> None:
    """``directory/name`` replaced atomically and durably (temporary file, fsync, rename,
    fsync of the directory)."""
    tmp = directory / f"{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)
    fsync_directory(directory)


def _claimed_at(directory: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        value = json.loads((directory / OWNER_NAME).read_text(encoding="utf-8")).get("claimed_at")
        return str(value) if value else None
    return None


def claim(directory: Path, upstream: UpstreamIdentity, proxy_name: str,
          undrained: int) -> str:
    """Make sure the spool in ``directory`` (locked by the caller) belongs to ``upstream``.

    ``undrained`` counts the records a previous run left in it.  Returns what happened:
    ``claimed`` (a new spool), ``adopted`` (an unowned spool, with the operator's
    ``owner.adopt``), ``updated`` (same database, new name/host/port recorded) or ``owned``.
    Raises :class:`SpoolOwnershipError` for a spool of another database, or an unowned spool
    with records and no ``owner.adopt``; raises ``OSError`` when the owner file cannot be
    written.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / _OWNER_TMP)  # an interrupted write; owner.json is whole or absent
    owner = read_owner(directory)
    adopt = directory / ADOPT_NAME
    if owner is None:
        if undrained and not adopt.exists():
            raise SpoolOwnershipError(
                f"audit spool {directory} holds {undrained} undrained record(s) but no owner "
                f"file ({OWNER_NAME}): it was written by an older policyc, or its owner file "
                "was removed, so nobody can tell which database they belong to. Start a proxy "
                "for their database on it; or, if they belong to this proxy's upstream, "
                f"{upstream.describe()}, create the empty file {adopt} and start again")
        write_owner(directory, upstream, proxy_name)
        if adopt.exists():
            adopt.unlink()
            fsync_directory(directory)
        return "adopted" if undrained else "claimed"
    if not owner.same_database(upstream):
        raise SpoolOwnershipError(
            f"audit spool {directory} belongs to {owner.describe()}, not to this proxy's "
            f"upstream, {upstream.describe()}; it holds {undrained} undrained record(s), left "
            "untouched. Start a proxy for its database on this spool to deliver them, or give "
            "this proxy a spool of its own (--spool, or leave it out for the default)")
    if owner != upstream:  # renamed database, another host name or port for the same one
        write_owner(directory, upstream, proxy_name, _claimed_at(directory))
        return "updated"
    return "owned"


# --- the default location ---------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def spool_leaf(host: str, port: int, dbname: str) -> str:
    """``<db>-<host>-<port>`` as one safe file name (a socket path's slashes become ``_``)."""
    raw = f"{dbname}-{host}-{port}"
    safe = _UNSAFE.sub("_", raw)
    if len(safe) > 200:  # NAME_MAX is 255; keep it readable and distinct
        safe = f"{safe[:180]}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"
    return safe


def default_spool_dir(host: str, port: int, dbname: str, *,
                      environ: Mapping[str, str] | None = None,
                      euid: int | None = None) -> Path:
    """Where the spool of the upstream ``host:port/dbname`` lives when ``--spool`` is not given.

    In order: ``$STATE_DIRECTORY/spool/<leaf>`` (systemd's ``StateDirectory=``; the first
    entry when it lists several); ``/var/lib/policyc/spool/<leaf>`` when running as root;
    ``$XDG_STATE_HOME/policyc/spool/<leaf>`` (an absolute ``XDG_STATE_HOME`` only, as the XDG
    specification says); else ``~/.local/state/policyc/spool/<leaf>``.  The leaf is
    :func:`spool_leaf`.  Relative values are ignored (never the working directory).
    """
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    leaf = spool_leaf(host, port, dbname)
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state and os.path.isabs(state):
        return Path(state) / "spool" / leaf
    if uid == 0:
        return Path("/var/lib/policyc/spool") / leaf
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "policyc" / "spool" / leaf
    home = env.get("HOME", "")
    if not (home and os.path.isabs(home)):
        home = pwd.getpwuid(uid).pw_dir
    return Path(home) / ".local" / "state" / "policyc" / "spool" / leaf
