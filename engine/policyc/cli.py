"""The ``policyc`` command line: one entry point, ``main(argv) -> int``, tested in-process.

Exit codes: 0 success; 1 an error (invalid policy, database mismatch, apply failure), or
``audit verify`` found the trail broken; 2 ``plan --check`` found pending changes or drift;
64 bad command-line usage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import psycopg

from policyc import __version__, logs, runtime
from policyc.connect import connect as connect_as
from policyc.errors import PolicycError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PENDING = 2
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2, which means "pending" for us
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


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


@contextlib.contextmanager
def _privileged(command: str) -> Iterator[None]:
    """A role without the privileges plan and apply need gets one line saying so."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PolicycError(
            f"{exc.diag.message_primary or 'permission denied'}: {command} needs a superuser "
            "(apply installs PL/Python and the runtime, creates group roles, views and "
            "row-security policies on every table of the policy; plan reads what apply "
            "recorded); README \"Privileges\"") from None


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


def _count(text: str) -> int:
    """A non-negative integer command-line value."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def cmd_proxy(args: argparse.Namespace, out: TextIO) -> int:

    from policyc.proxy.config import ProxyConfig, parse_upstream
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


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (127.0.0.1) for ``--listen``."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:6432, 0.0.0.0:6432 for every "
            "IPv4 interface, [::1]:6432; port 0 picks a free one)")
    return host or "127.0.0.1", int(port)


def _workers(text: str) -> int:
    """A worker count: 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of workers")
    return value


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


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00)"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _lazy(module: str, name: str) -> Any:
    """A command handler imported only when its command runs (keeps every start fast)."""

    def run(args: argparse.Namespace, out: TextIO) -> int:
        handler = getattr(importlib.import_module(f"policyc.{module}"), name)
        return int(handler(args, out))

    return run


ABOUT = """\
policyc puts two fences between autonomous agents and PostgreSQL: in the database (group
roles, column grants, row filters, masking views, audit triggers, compiled from policy.yaml
by plan/apply) and in the data path (an audited proxy that verifies each agent's token,
judges every statement, holds risky ones for a human, and records everything)."""

WORKFLOW = """\
a first deployment:
  policyc check policy.yaml                       # every problem as file:line: key: message
  policyc plan policy.yaml --dsn 'host=db dbname=clinic user=postgres'
  policyc apply policy.yaml --dsn 'host=db dbname=clinic user=postgres'
  policyc proxy policy.yaml --upstream 'host=db dbname=clinic user=policyc_proxy' \\
      --password-file /run/secrets/policyc --tls-cert tls.crt --tls-key tls.key
then agents connect to the proxy with any PostgreSQL client, their OIDC token as password.

`policyc COMMAND --help` tells each command's options and defaults; README.md and docs/ tell
the rest. Exit codes: 0 ok, 1 error, 2 pending changes (plan --check), 64 bad usage."""

#: One example per command, shown at the end of its --help.
EXAMPLES = {
    "check": "policyc check examples/clinic/policy.yaml",
    "plan": "policyc plan policy.yaml --dsn 'host=db dbname=clinic user=postgres' --check",
    "apply": "policyc apply policy.yaml --dsn 'host=db dbname=clinic user=postgres'",
    "proxy": ("policyc proxy policy.yaml --listen 0.0.0.0:6432 "
              "--upstream 'host=db dbname=clinic user=policyc_proxy' "
              "--password-file /run/secrets/policyc --tls-cert tls.crt --tls-key tls.key"),
    "approvals": "policyc approvals --dsn 'host=db dbname=clinic user=alice' --watch",
    "approve": "policyc approve 42 --reason 'month-end billing run, ticket OPS-1234'",
    "deny": "policyc deny 42 --reason 'not during business hours'",
    "replay": "policyc replay 9b2f3c1e-0d4e-4c3a-9a57-2f1d8f0c6b11 --verify",
    "audit": "policyc audit verify --dsn 'host=db dbname=clinic user=auditor'",
    "token": "policyc token examples/clinic/policy.yaml --sub agent-7 --groups billing-agents "
             "--claim clinic_id=1",
    "runtime": "policyc runtime render \"$(pg_config --sharedir)/extension\"",
}

DSN_HELP = ("libpq connection string, key=value pairs or a postgresql:// URI (default: the "
            "PG* environment variables)")
POLICY_HELP = "the policy file (YAML; see examples/clinic/policy.yaml)"


def _nested(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand of a subcommand (``audit verify``): its help starts with what it does."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary,
                                                     formatter_class=_Help)
    return parser


def _command(sub: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose help starts with what it does and ends with an example."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=kwargs.pop("description", summary),
        epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=_Help, **kwargs)
    return parser


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written (each option's help says its default)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="policyc", description=ABOUT, epilog=WORKFLOW, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"policyc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")

    check = _command(sub, "check", "validate a policy file and report every problem")
    check.add_argument("policy", help=POLICY_HELP)
    check.set_defaults(func=cmd_check)

    plan = _command(sub, "plan", "show what apply would change in the database (read only; "
                    "HAZARD marks changes that widen access, drift marks hand edits)")
    plan.add_argument("policy", help=POLICY_HELP)
    plan.add_argument("--dsn", help=DSN_HELP)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--check", action="store_true",
                      help="exit 2 when there are pending changes or drift")
    plan.add_argument("--no-sql", action="store_true", help="list changes without their SQL")
    plan.set_defaults(func=cmd_plan)

    apply = _command(sub, "apply", "make the database match the policy (one transaction; a "
                     "second run changes nothing)")
    apply.add_argument("policy", help=POLICY_HELP)
    apply.add_argument("--dsn", help=DSN_HELP)
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(func=cmd_apply)

    proxy = _command(sub, "proxy", "run the audited PostgreSQL proxy agents connect to")
    proxy.add_argument("policy", nargs="?", help=POLICY_HELP + " (or policy = in --config)")
    proxy.add_argument("--config", metavar="FILE",
                       help="a TOML file with any of these options (keys: their long names, "
                       "e.g. max_connections = 500); the command line wins over it; no "
                       "secrets in it (docs/deployment.md)")
    proxy.add_argument("--listen", default="127.0.0.1:6432", type=_listen, metavar="HOST:PORT",
                       help="where agents connect (default 127.0.0.1:6432, loopback only; "
                            "e.g. 0.0.0.0:6432 for every IPv4 interface)")
    proxy.add_argument("--upstream", help="libpq DSN of the database and the service role "
                       "(default: PG* environment)")
    proxy.add_argument("--password-file", help="file whose first line is the service password")
    proxy.add_argument("--password-command",
                       help="command that prints the service password (e.g. a secret manager)")
    proxy.add_argument("--tls-cert", help="PEM certificate for agent connections")
    proxy.add_argument("--tls-key", help="PEM private key for --tls-cert")
    proxy.add_argument("--allow-plaintext-loopback", action="store_true",
                       help="accept non-TLS logins from 127.0.0.1/::1 (development only)")
    proxy.add_argument("--spool", default=None, metavar="DIR",
                       help="directory of the durable audit spool; it belongs to one "
                       "database (default: $STATE_DIRECTORY/spool/DB-HOST-PORT, as root "
                       "/var/lib/policyc/spool/DB-HOST-PORT, else $XDG_STATE_HOME (or "
                       "~/.local/state)/policyc/spool/DB-HOST-PORT; see docs/spool.md)")
    proxy.add_argument("--max-message-bytes", type=int, default=64 << 20,
                       help="largest protocol message accepted from a client, in bytes "
                       "(default 67108864)")
    proxy.add_argument("--max-connections", type=_count, default=1000, metavar="N",
                       help="client connections at once, logged in or not (default 1000; "
                       "0: no cap); more are refused with 53300 (docs/limits.md)")
    proxy.add_argument("--max-pending-logins", type=_count, default=64, metavar="N",
                       help="connections not yet authenticated (default 64; 0: no cap)")
    proxy.add_argument("--max-sessions-per-agent", type=_count, default=20, metavar="N",
                       help="sessions of one agent (token subject) at once, all groups "
                       "(default 20; 0: no cap); a group's limits.connections_per_agent "
                       "applies too")
    proxy.add_argument("--max-password-bytes", type=_count, default=16 << 10, metavar="N",
                       help="largest password message (the token) read before login "
                       "(default 16384)")
    proxy.add_argument("--login-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="from connect to a verified token, whatever the client does "
                       "(default 30)")
    proxy.add_argument("--name", default="policyc-proxy",
                       help="this proxy's name in the audit (default policyc-proxy; one per "
                       "instance when several share a database)")
    proxy.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="SECONDS",
                       help="seal the audit trail this often (audit.checkpoint(); default 60, "
                       "0: only at shutdown)")
    proxy.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="proxy processes accepting on one port with SO_REUSEPORT, each "
                       "with its own spool (<spool>/worker-K for K > 0), restarted when one "
                       "dies (default 1: one process, no supervisor; docs/deployment.md)")
    proxy.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM or SIGINT, how long statements in flight may take "
                       "before every session ends with 57P01 (default 30; a second signal "
                       "ends them at once)")
    proxy.add_argument("--log-format", choices=logs.FORMATS, default="text",
                       help="text lines, or json: one object a line with stable event names "
                       "(session_opened, login_refused, session_closed, ...), session id, "
                       "agent and reason; never statement text, parameters or tokens "
                       "(default text)")
    proxy.add_argument("--log-level", choices=logs.LEVELS, default="info",
                       help="the least important messages logged (default info)")
    proxy.set_defaults(func=cmd_proxy)

    approvals = _command(sub, "approvals", "list held statements waiting for a decision")
    approvals.add_argument("--dsn", help=DSN_HELP)
    approvals.add_argument("--json", action="store_true", help="one JSON object per line")
    approvals.add_argument("--all", action="store_true", help="include decided requests")
    approvals.add_argument("--watch", action="store_true",
                           help="stream new requests and decisions as they happen (Ctrl-C stops)")
    approvals.add_argument("--max-events", type=int, default=None, help=argparse.SUPPRESS)
    approvals.set_defaults(func=_lazy("approvals", "cmd_approvals"))

    for verb, func in (("approve", _lazy("approvals", "cmd_approve")),
                       ("deny", _lazy("approvals", "cmd_deny"))):
        decide = _command(sub, verb, f"{verb} a held statement (approver roles only)")
        decide.add_argument("id", type=int, help="the request id (see policyc approvals)")
        decide.add_argument("--reason", required=True, help="why (kept in audit.approvals)")
        decide.add_argument("--dsn", help=DSN_HELP)
        decide.set_defaults(func=func)

    replay = _command(sub, "replay", "print a recorded session as a transcript (exit 1 when "
                      "--verify finds a mismatch, 69 database unreachable)")
    replay.add_argument("session_id", help="the session id (audit.sessions.session_id)")
    replay.add_argument("--dsn", help=DSN_HELP)
    replay.add_argument("--json", action="store_true", help="one JSON document")
    replay.add_argument("--verify", action="store_true",
                        help="recompute kept results' digests and check the seqs are contiguous")
    replay.set_defaults(func=_lazy("replay", "cmd_replay"))

    audit = _command(sub, "audit", "verify, seal, sign and prune the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)

    verify_p = _nested(audit_sub, "verify",
                       "check the hash chains, seals and partitions (exit 1 when broken)")
    verify_p.add_argument("--dsn", help=DSN_HELP)
    verify_p.add_argument("--since", type=_timestamp,
                          help="only chains with records or seals from this time on, each "
                          "checked whole (ISO 8601)")
    verify_p.add_argument("--trusted", action="append", default=[], metavar="EXPORT",
                          help="a signed checkpoint export to hold the database to (repeatable)")
    verify_p.add_argument("--public-key", help="PEM public key that signed the --trusted exports")
    verify_p.add_argument("--json", action="store_true", help="one JSON document")
    verify_p.add_argument("--limit", type=int, default=20, help="problems to print (default 20)")
    verify_p.set_defaults(func=_lazy("audittrail", "cmd_verify"))

    checkpoint_p = _nested(audit_sub, "checkpoint",
                           "seal new records now; with --sign, export the seal signed")
    checkpoint_p.add_argument("--dsn", help=DSN_HELP)
    checkpoint_p.add_argument("--sign", metavar="KEY",
                              help="Ed25519 private key (PEM) to sign with")
    checkpoint_p.add_argument("--out", help="write the signed export here (default: stdout)")
    checkpoint_p.add_argument("--json", action="store_true", help="machine-readable output")
    checkpoint_p.set_defaults(func=_lazy("audittrail", "cmd_checkpoint"))

    keygen_p = _nested(audit_sub, "keygen", "create an Ed25519 key to sign checkpoints")
    keygen_p.add_argument("path", help="where to write the private key (PEM, mode 0600)")
    keygen_p.set_defaults(func=_lazy("audittrail", "cmd_keygen"))

    prune_p = _nested(audit_sub, "prune",
                      "drop whole monthly partitions older than the retention, and record it")
    prune_p.add_argument("--dsn", help=DSN_HELP)
    prune_p.add_argument("--policy", help="take the retention from this policy's audit section")
    prune_p.add_argument("--retention", help="e.g. 6y (default: the policy's, else 6y)")
    prune_p.add_argument("--dry-run", action="store_true", help="list what would be dropped")
    prune_p.add_argument("--now", type=_timestamp, help=argparse.SUPPRESS)  # tests: a past clock
    prune_p.add_argument("--json", action="store_true", help="machine-readable output")
    prune_p.set_defaults(func=_lazy("audittrail", "cmd_prune"))

    token = _command(sub, "token", "mint a development token (NOT for production)")
    token.add_argument("policy", help=POLICY_HELP)
    token.add_argument("--sub", required=True, help="the agent's name (subject)")
    token.add_argument("--groups", default="",
                       help="comma-separated OIDC groups (default: none)")
    token.add_argument("--claim", action="append", default=[], help="extra claim NAME=VALUE")
    token.add_argument("--ttl", type=int, default=3600,
                       help="lifetime in seconds (default 3600)")
    token.add_argument("--key",
                       help="signing key (PEM; default: dev-signing-key.pem beside the JWKS)")
    token.set_defaults(func=cmd_token)

    rt = _command(sub, "runtime", "the runtime extension files")
    rt_sub = rt.add_subparsers(dest="runtime_command", required=True, parser_class=_Parser)
    render = _nested(rt_sub, "render", "write policyc.control and scripts into DIRECTORY")
    render.add_argument("directory",
                        help="where to write them, e.g. the server's sharedir/extension")
    render.set_defaults(func=cmd_runtime_render)
    return parser


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse keeps no public map of its subcommands
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


def _with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Sequence[str] | None) -> argparse.Namespace:
    """``args`` parsed again with ``--config``'s settings as defaults: the command line wins."""
    from policyc import proxyfile

    command = _subcommand(parser, args.command)
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
