"""``policyc service-password``: give the proxy's service role a new password and copy it onto
every group role, in one transaction.

Why a command: the proxy logs in upstream *as each group role* with the service role's
password, because apply copies the service role's password verifier onto each group role. A
bare ``ALTER ROLE policyc_proxy PASSWORD ...`` leaves the group roles on the old verifier:
every new agent session is refused upstream, and plan shows the roles as drift until the next
apply. This command does both halves at once; it also sets the first password (apply creates
a missing service role without one).

The password never reaches the server: libpq computes its SCRAM-SHA-256 verifier here
(``PQencryptPasswordConn``, as psql's ``\\password`` does) and only the verifier is sent. The
password is never printed, and no error message quotes it.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import psycopg

from policyc.apply import LOCK
from policyc.catalog import MANAGED_ROLE_COMMENT
from policyc.compiler.render import statements
from policyc.errors import PolicycError, needs_superuser
from policyc.policy.model import Policy
from policyc.resources import sql_dir

WHY_SUPERUSER = ("it sets the service role's password and copies its verifier from pg_authid "
                 "onto the group roles, as apply does")

ALGORITHM = "scram-sha-256"


@dataclass(frozen=True)
class Rotation:
    """What ``service-password`` did (or, with ``dry_run``, would do)."""

    database: str
    service_role: str
    updated: tuple[str, ...]  # group roles given the service role's new verifier
    skipped: tuple[tuple[str, str], ...]  # (group, why it was left alone)
    dry_run: bool


# ----------------------------------------------------------------------------- the password

def _first_line(text: str) -> str:
    """The password in a file's text: its first line, as the proxy reads ``--password-file``
    (policyc.proxy.config), so one file serves both."""
    return text.splitlines()[0] if text else ""


def read_password(password_file: str | None, stdin: TextIO | None) -> str:
    """The new password: the first line of ``password_file``, or of ``stdin`` (asked twice
    without echo when it is a terminal). Refused when empty; errors never quote it."""
    if password_file is not None:
        source = password_file
        try:
            password = _first_line(Path(password_file).read_text())
        except FileNotFoundError:
            raise PolicycError(f"{password_file}: no such file (--password-file)") from None
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise PolicycError(f"{password_file}: cannot read the password ({why})") from None
    elif stdin is not None:
        source = "standard input"
        if stdin.isatty():
            password = getpass.getpass("new service password: ")
            if getpass.getpass("again: ") != password:
                raise PolicycError("the two passwords typed differ; nothing was changed")
        else:
            password = _first_line(stdin.read())
    else:
        raise PolicycError("give --password-file FILE or --password-stdin")
    if not password:
        raise PolicycError(f"the password from {source} is empty (its first line is the "
                           "password); nothing was changed")
    if "\x00" in password:
        raise PolicycError(f"the password from {source} holds a NUL byte, which PostgreSQL "
                           "passwords cannot; nothing was changed")
    return password


def scram_verifier(conn: psycopg.Connection[Any], password: str, role: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed by libpq on this side (random
    salt; the role name plays no part in SCRAM)."""
    try:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                                ALGORITHM.encode()).decode("ascii")
    except psycopg.Error:  # libpq's message names the algorithm, never the password
        raise PolicycError("libpq could not compute a SCRAM-SHA-256 verifier (libpq 10 or "
                           "later is needed); nothing was changed") from None
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise PolicycError("libpq returned something other than a SCRAM-SHA-256 verifier; "
                           "nothing was changed")
    return verifier


# ----------------------------------------------------------------------------- the database

@cache
def _query(name: str) -> str:
    return (sql_dir() / "catalog" / f"{name}.sql").read_text()


def _fetch(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[Any]:
    with conn.cursor() as cur:
        cur.execute(_query(name), params)
        return cur.fetchall()


def _groups(conn: psycopg.Connection[Any], policy: Policy, database: str
            ) -> tuple[list[str], list[tuple[str, str]], bool]:
    """The policy's group roles to update, the others with why they are left alone, and
    whether apply recorded any of them here (else the policy was never applied here)."""
    updated: list[str] = []
    skipped: list[tuple[str, str]] = []
    rows = _fetch(conn, "credential_groups", {"groups": [g.name for g in policy.groups]})
    for name, exists, comment, recorded in rows:
        if exists and recorded and comment == MANAGED_ROLE_COMMENT.format(group=name,
                                                                          database=database):
            updated.append(name)
        elif not recorded:
            skipped.append((name, "not applied here yet: apply creates its role with the "
                                  "service credential"))
        elif not exists:
            skipped.append((name, "its role is gone: apply creates it again with the "
                                  "service credential"))
        else:
            skipped.append((name, f"its role is not marked as policyc group {name} of "
                                  f"database {database}: left alone (see policyc plan)"))
    return updated, skipped, any(recorded for *_, recorded in rows)


def _run(conn: psycopg.Connection[Any], statement: str) -> None:
    """Run one statement; a failure is named by the server's message, never by the statement
    (it holds the verifier)."""
    try:
        conn.execute(statement.encode())
    except psycopg.Error as exc:
        raise PolicycError(f"{exc.diag.message_primary or type(exc).__name__} "
                           f"(SQLSTATE {exc.sqlstate}); nothing was changed") from None


def rotate(conn: psycopg.Connection[Any], policy: Policy, password: str, *,
           dry_run: bool = False) -> Rotation:
    """Set ``password`` on the policy's service role and copy its verifier onto every group
    role of the policy that apply made here, in one transaction (waiting for a running apply).
    ``conn`` must be outside a transaction, as a superuser; with ``dry_run`` nothing changes."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise PolicycError("service-password needs a connection outside any transaction")
    service_role = policy.proxy.service_role
    with conn.transaction():
        database, user, superuser, applied, service_exists = _fetch(
            conn, "service_credential", {"service_role": service_role})[0]
        if not superuser:
            raise needs_superuser(f"permission denied (connected as {user}, not a superuser)",
                                  "service-password", WHY_SUPERUSER)
        if policy.database is not None and policy.database != database:
            raise PolicycError(f"the policy is for database {policy.database}, not "
                               f"{database} (its database: key); nothing was changed")
        conn.execute(LOCK)
        updated, skipped, recorded = (_groups(conn, policy, database) if applied
                                      else ([], [], False))
        if not recorded:
            raise PolicycError(f"the policy was never applied to database {database} (no group "
                               "of it is recorded in policyc.applied_objects): run policyc "
                               "apply first; it copies the service credential itself")
        if not service_exists:
            raise PolicycError(f"service role {service_role} does not exist: run policyc "
                               "apply (it creates it); nothing was changed")
        verifier = scram_verifier(conn, password, service_role)
        if not dry_run:
            for statement in statements("service_password.sql.j2", service_role=service_role,
                                        verifier=verifier, roles=updated):
                _run(conn, statement)
    return Rotation(database, service_role, tuple(updated), tuple(skipped), dry_run)


# ----------------------------------------------------------------------------- the report

NEXT_STEPS = """\
next: the running proxies keep the old password until they read the new one, and until then
every new agent session is refused upstream (28P01). The whole sequence:
  1. put the new password where the proxies read it (--password-file, --password-command)
  2. run policyc service-password (this command)
  3. kill -HUP each proxy (or nothing: a proxy re-reads it on the first upstream login
     refused with 28P01)"""


def report(rotation: Rotation, out: TextIO) -> None:
    """What was done (or would be, with --dry-run) and what the operator does next; never
    the password."""
    verb = "would set" if rotation.dry_run else "set"
    print(f"policyc service-password: database {rotation.database}", file=out)
    print(f"  service role {rotation.service_role}: {verb} the new password (its SCRAM-SHA-256 "
          "verifier, computed here: the server never receives the password)", file=out)
    groups = ", ".join(rotation.updated) or "none"
    verb = "would copy" if rotation.dry_run else "copied"
    print(f"  group roles: {verb} the service role's verifier onto {groups}", file=out)
    for name, why in rotation.skipped:
        print(f"  group {name}: skipped, {why}", file=out)
    if rotation.dry_run:
        print("dry run: nothing was changed", file=out)
        return
    print("committed in one transaction; policyc plan shows no role drift from it", file=out)
    print(NEXT_STEPS, file=out)
