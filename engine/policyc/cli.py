"""The ``policyc`` command line: one entry point, ``main(argv) -> int``, tested in-process.

Exit codes: 0 success; 1 an error (invalid policy, database mismatch, apply failure), or
``audit verify`` found the trail broken; 2 ``plan --check`` found pending changes or drift;
64 bad command-line usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import psycopg

from policyc import logs, runtime
from policyc.cliargs import EXIT_USAGE, build_parser, subcommand
from policyc.connect import connect as connect_as
from policyc.errors import PolicycError, needs_superuser

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PENDING", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PENDING = 2


def _load(path: str) -> Any:
    from policyc.policy import load_policy

    return load_policy(Path(path))


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    policy = _load(args.policy)
    groups = ", ".join(g.name for g in policy.groups)
    print(f"{args.policy}: ok (version {policy.version}; groups: {groups})", file=out)
    from policyc.policy.rowfilter import unfiltered_write_warnings

    for warning in unfiltered_write_warnings(policy):
        print(f"warning: {warning}", file=out)
    return EXIT_OK


def _print_warnings(plan: Any, out: TextIO) -> None:
    for warning in getattr(plan, "warnings", ()):
        print(f"warning: {warning}", file=out)


def _print_plan(plan: Any, out: TextIO, policy_path: str, show_sql: bool) -> None:
    print(f"policyc plan: {policy_path} against database {plan.catalog.database}", file=out)
    _print_warnings(plan, out)
    if plan.empty:
        print("no changes", file=out)
        return
    symbols = {"create": "+", "update": "~", "drift": "!", "drop": "-"}
    for family, changes in plan.by_family().items():
        print(f"\n{family}", file=out)
        for change in changes:
            line = f"  {symbols[change.action]} {change.action:<6} {change.key}"
            if change.note:
                line += f"  ({change.note})"
            print(line, file=out)
            for hazard in change.hazards:
                print(f"      HAZARD widens access: {hazard}", file=out)
            if show_sql:
                for statement in change.statements:
                    for i, text in enumerate(statement.splitlines()):
                        print(("      " if i == 0 else "        ") + text, file=out)
    counts: dict[str, int] = {}
    for change in plan.changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    hazards = sum(len(c.hazards) for c in plan.changes)
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    print(f"\n{len(plan.changes)} changes ({summary}); {hazards} authorization hazards", file=out)


def _plan_json(plan: Any) -> dict[str, Any]:
    return {
        "database": plan.catalog.database,
        "changes": [c.as_json() for c in plan.changes],
        "pending": len(plan.changes),
        "drift": len(plan.drift),
        "hazards": sum(len(c.hazards) for c in plan.changes),
        "warnings": [str(w) for w in getattr(plan, "warnings", ())],
    }


_PLAN_APPLY_NEED = ("apply installs PL/Python and the runtime, creates group roles, views and "
                    "row-security policies on every table of the policy; plan reads what apply "
                    "recorded")


@contextlib.contextmanager
def _privileged(command: str, why: str = _PLAN_APPLY_NEED) -> Iterator[None]:
    """A role without the privileges a command needs gets one line saying so."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise needs_superuser(exc.diag.message_primary or "permission denied", command,
                              why) from None


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from policyc.plan import make_plan

    policy = _load(args.policy)
    with connect_as(args.dsn) as conn, _privileged("plan"):
        plan = make_plan(conn, policy)
    if args.json:
        json.dump(_plan_json(plan), out, indent=2)
        out.write("\n")
    else:
        _print_plan(plan, out, args.policy, show_sql=not args.no_sql)
    if args.check and not plan.empty:
        return EXIT_PENDING
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, out: TextIO) -> int:
    from policyc.apply import apply_policy

    policy = _load(args.policy)
    with connect_as(args.dsn) as conn, _privileged("apply"):
        result = apply_policy(conn, policy)
    if args.json:
        json.dump({**_plan_json(result.plan), "executed": result.executed}, out, indent=2)
        out.write("\n")
    elif result.plan.empty:
        _print_warnings(result.plan, out)
        print("no changes", file=out)
    else:
        _print_plan(result.plan, out, args.policy, show_sql=False)
        print(f"applied: {result.executed} statements in one transaction", file=out)
    return EXIT_OK


def cmd_service_password(args: argparse.Namespace, out: TextIO) -> int:
    from policyc import servicepassword

    policy = _load(args.policy)
    password = servicepassword.read_password(args.password_file,
                                             sys.stdin if args.password_stdin else None)
    with (connect_as(args.dsn, "policyc service-password") as conn,
          _privileged("service-password", servicepassword.WHY_SUPERUSER)):
        rotation = servicepassword.rotate(conn, policy, password, dry_run=args.dry_run)
    servicepassword.report(rotation, out)
    return EXIT_OK


def cmd_proxy(args: argparse.Namespace, out: TextIO) -> int:

    from policyc.proxy.config import ProxyConfig, dsn_has_password, parse_upstream
    from policyc.proxy.workers import Supervisor, serve

    logs.configure(args.log_format, args.log_level)
    if not args.policy:
        print("policyc proxy: give the policy file (or `policy = \"...\"` in --config)",
              file=sys.stderr)
        return EXIT_USAGE
    policy = _load(args.policy)
    host, port = args.listen
    upstream = parse_upstream(args.upstream or "", password_file=args.password_file,
                              password_command=args.password_command)
    # where the service password came from, read again on a reload (as parse_upstream chose:
    # a password in the DSN first, then the file, then the command)
    in_dsn = dsn_has_password(args.upstream or "")
    password_file = Path(args.password_file) if args.password_file and not in_dsn else None
    password_command = args.password_command if not (in_dsn or password_file) else None
    config = ProxyConfig(
        policy=policy, upstream=upstream, listen_host=host,
        listen_port=port, tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        allow_plaintext_loopback=args.allow_plaintext_loopback,
        spool_dir=Path(args.spool) if args.spool else None,
        max_message_bytes=args.max_message_bytes,
        proxy_name=args.name, checkpoint_interval=args.checkpoint_interval,
        max_connections=args.max_connections, max_pending_logins=args.max_pending_logins,
        max_sessions_per_agent=args.max_sessions_per_agent,
        max_password_bytes=args.max_password_bytes, login_timeout=args.login_timeout,
        log_format=args.log_format, log_level=args.log_level,
        shutdown_timeout=args.shutdown_timeout,
        admin_host=args.admin[0] if args.admin else "127.0.0.1",
        admin_port=args.admin[1] if args.admin else None,
        metrics_agent_labels=args.metrics_agent_labels,
        reload_on_change=args.reload_on_change, password_file=password_file,
        password_command=password_command,
    )
    if config.tls_cert is None and not config.allow_plaintext_loopback:
        print("policyc proxy: give --tls-cert/--tls-key (agents send tokens as passwords), or "
              "--allow-plaintext-loopback for local development", file=sys.stderr)
        return EXIT_USAGE
    if args.workers == 1:
        serve(config, out)
        return EXIT_OK
    if config.listen_port == 0:
        print("policyc proxy: --workers needs a fixed port in --listen (each worker binds it)",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"policyc proxy: {args.workers} workers on {config.listen_host}:{config.listen_port}"
          f" (supervisor pid {os.getpid()})", file=out, flush=True)
    return EXIT_OK if Supervisor(config, args.workers).run() == 0 else EXIT_ERROR


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    from policyc.identity.devkeys import mint_token

    policy = _load(args.policy)
    if policy.identity is None:
        print("policyc token: the policy has no identity section", file=sys.stderr)
        return EXIT_ERROR
    key = Path(args.key) if args.key else Path(policy.identity.jwks).parent / "dev-signing-key.pem"
    claims: dict[str, Any] = {}
    for item in args.claim:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"policyc token: --claim wants NAME=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        claims[name] = int(value) if value.lstrip("-").isdigit() else value
    token = mint_token(
        key, issuer=policy.identity.issuer, audience=policy.identity.audience,
        subject=args.sub, groups=args.groups.split(",") if args.groups else [],
        claims=claims, ttl_seconds=args.ttl,
    )
    print(token, file=out)
    return EXIT_OK


def cmd_runtime_render(args: argparse.Namespace, out: TextIO) -> int:
    for path in runtime.render(Path(args.directory)):
        print(path, file=out)
    return EXIT_OK


def _with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Sequence[str] | None) -> argparse.Namespace:
    """``args`` parsed again with ``--config``'s settings as defaults: the command line wins."""
    from policyc import proxyfile

    command = subcommand(parser, args.command)
    command.set_defaults(**proxyfile.read(Path(args.config), command))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None):
            args = _with_config_file(parser, args, argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    except PolicycError as exc:  # a configuration file that cannot be used
        print(f"policyc {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.func(args, out))
    except PolicycError as exc:
        print(f"policyc {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.OperationalError as exc:
        print(f"policyc {args.command}: cannot connect: {exc}".rstrip(), file=sys.stderr)
        return EXIT_ERROR
    except FileNotFoundError as exc:
        print(f"policyc {args.command}: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
