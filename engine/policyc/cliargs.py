"""The ``policyc`` command line's arguments: every command, option, default and example
(``build_parser``), and the value parsers they share. The commands themselves are in
:mod:`policyc.cli` and the modules it names; each is imported only when it runs."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from typing import Any, TextIO

from policyc import __version__, logs

EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2, which means "pending" for us
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _count(text: str) -> int:
    """A non-negative integer command-line value."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


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


def _admin(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as for ``--listen``, or a bare ``PORT`` on loopback, for ``--admin``."""
    if text.isdigit() and int(text) <= 65535:
        return "127.0.0.1", int(text)
    try:
        return _listen(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT or PORT (e.g. 9187 for 127.0.0.1:9187, or "
            "0.0.0.0:9187 for a scraper on another host)") from None


def _workers(text: str) -> int:
    """A worker count: 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of workers")
    return value


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00)"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _day_or_time(end: bool) -> Any:
    """``--from``/``--to``: a date is a whole UTC day (``--to 2026-12-31`` includes it)."""

    def parse(text: str) -> dt.datetime:
        value = _timestamp(text)
        if end and len(text.strip()) == 10:  # YYYY-MM-DD: up to the end of that day
            value += dt.timedelta(days=1)
        return value

    return parse


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
  policyc service-password policy.yaml --dsn 'host=db dbname=clinic user=postgres' \\
      --password-file /run/secrets/policyc       # also to rotate it (README)
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
    "service-password": ("policyc service-password policy.yaml "
                         "--dsn 'host=db dbname=clinic user=postgres' "
                         "--password-file /run/secrets/policyc"),
    "proxy": ("policyc proxy policy.yaml --listen 0.0.0.0:6432 "
              "--upstream 'host=db dbname=clinic user=policyc_proxy' "
              "--password-file /run/secrets/policyc --tls-cert tls.crt --tls-key tls.key"),
    "approvals": "policyc approvals --dsn 'host=db dbname=clinic user=alice' --watch",
    "approve": "policyc approve 42 --reason 'month-end billing run, ticket OPS-1234'",
    "deny": "policyc deny 42 --reason 'not during business hours'",
    "replay": "policyc replay 9b2f3c1e-0d4e-4c3a-9a57-2f1d8f0c6b11 --verify",
    "audit": "policyc audit verify --dsn 'host=db dbname=clinic user=auditor'",
    "report": "policyc report --dsn 'host=db dbname=clinic user=auditor' --policy policy.yaml "
              "--from 2026-10-01 --to 2026-12-31 --out evidence.html --json evidence.json",
    "token": "policyc token examples/clinic/policy.yaml --sub agent-7 --groups billing-agents "
             "--claim clinic_id=1",
    "runtime": "policyc runtime render \"$(pg_config --sharedir)/extension\"",
}

ROTATION_ABOUT = """\
The proxy logs in as each group role with the service role's password: apply copies the
service role's password verifier onto every group role. This command sets the new password
on the policy's service role (policyc_proxy unless the policy names another) and copies it
onto the group roles at once, so `policyc plan` shows no drift. libpq computes the
SCRAM-SHA-256 verifier here: the server never receives the password, and it is never printed.

rotating the password:
  1. put the new password where the proxies read it (--password-file, --password-command)
  2. run this command
  3. kill -HUP each proxy (or nothing: a proxy re-reads it on the first upstream login
     refused with 28P01)"""

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
    check.set_defaults(func=_lazy("cli", "cmd_check"))

    plan = _command(sub, "plan", "show what apply would change in the database (read only; "
                    "HAZARD marks changes that widen access, drift marks hand edits)")
    plan.add_argument("policy", help=POLICY_HELP)
    plan.add_argument("--dsn", help=DSN_HELP)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--check", action="store_true",
                      help="exit 2 when there are pending changes or drift")
    plan.add_argument("--no-sql", action="store_true", help="list changes without their SQL")
    plan.set_defaults(func=_lazy("cli", "cmd_plan"))

    apply = _command(sub, "apply", "make the database match the policy (one transaction; a "
                     "second run changes nothing)")
    apply.add_argument("policy", help=POLICY_HELP)
    apply.add_argument("--dsn", help=DSN_HELP)
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(func=_lazy("cli", "cmd_apply"))

    summary = ("set the service role's password and copy it onto every group role (one "
               "transaction)")
    password = _command(sub, "service-password", summary,
                        description=f"{summary}\n\n{ROTATION_ABOUT}")
    password.add_argument("policy", help=POLICY_HELP)
    password.add_argument("--dsn", help=DSN_HELP + "; as a superuser")
    source = password.add_mutually_exclusive_group(required=True)
    source.add_argument("--password-file", metavar="FILE",
                        help="file whose first line is the new password (the proxies' "
                        "--password-file reads it the same way)")
    source.add_argument("--password-stdin", action="store_true",
                        help="read the new password from standard input's first line (asked "
                        "twice without echo on a terminal)")
    password.add_argument("--dry-run", action="store_true",
                          help="check and say what would change; change nothing")
    password.set_defaults(func=_lazy("cli", "cmd_service_password"))

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
    proxy.add_argument("--password-file", help="file whose first line is the service password "
                       "(read again on SIGHUP, and when the database refuses the password)")
    proxy.add_argument("--password-command",
                       help="command that prints the service password (e.g. a secret manager; "
                       "run again on SIGHUP, and when the database refuses the password)")
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
    proxy.add_argument("--reload-on-change", action="store_true",
                       help="look at the policy, its JWKS file, the TLS certificate and key and "
                       "the password file every 2 s and reload when one changes, as SIGHUP "
                       "does: new sessions get the new policy, open ones keep theirs, a bad "
                       "file keeps the old one (default: off, reload on SIGHUP only; "
                       "docs/deployment.md#reloading)")
    proxy.add_argument("--log-format", choices=logs.FORMATS, default="text",
                       help="text lines, or json: one object a line with stable event names "
                       "(session_opened, login_refused, session_closed, ...), session id, "
                       "agent and reason; never statement text, parameters or tokens "
                       "(default text)")
    proxy.add_argument("--log-level", choices=logs.LEVELS, default="info",
                       help="the least important messages logged (default info)")
    proxy.add_argument("--admin", type=_admin, metavar="HOST:PORT",
                       help="serve /live, /ready and /metrics (Prometheus) over HTTP here, "
                       "e.g. 9187 for 127.0.0.1:9187 (default: off; with --workers N, "
                       "worker K listens on PORT+K; docs/operations.md)")
    proxy.add_argument("--metrics-agent-labels", action="store_true",
                       help="label session and statement metrics with the agent's name (token "
                       "subject); one series per agent, so off by default")
    proxy.set_defaults(func=_lazy("cli", "cmd_proxy"))

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

    report = _command(
        sub, "report", "write the HIPAA evidence report for a period (auditors; read only): "
        "one self-contained HTML file, and the same figures as JSON; exit 1 when the audit "
        "trail is broken", description=(
            "Write the HIPAA evidence report for a period as one self-contained HTML file (no "
            "script, no network; prints to PDF), section by safeguard: audit controls, "
            "integrity, access control, authentication, transmission security, activity "
            "review, minimum necessary, approvals, retention, de-identification. Runs as a "
            "member of policyc_auditor in one read-only snapshot; works on a read replica "
            "(there the integrity check says 'not checked'). docs/report.md"))
    report.add_argument("--dsn", help=DSN_HELP)
    report.add_argument("--from", dest="start", type=_day_or_time(end=False), metavar="TIME",
                        help="start of the period, a UTC date or an ISO 8601 time (default: "
                        "90 days before --to)")
    report.add_argument("--to", dest="end", type=_day_or_time(end=True), metavar="TIME",
                        help="end of the period; a date includes that whole day (default: now)")
    report.add_argument("--policy", help="the policy in force (needed for access control, "
                        "minimum necessary, de-identification and the retention in force; "
                        "default: none, those parts say 'not checked')")
    report.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the HTML report (required)")
    report.add_argument("--json", metavar="FILE",
                        help="also write the same figures as JSON here (default: no JSON)")
    report.add_argument("--no-verify", action="store_true",
                        help="skip audit.verify() (the integrity verdict then says 'not "
                        "checked'; default: verify the chains recorded in the period)")
    report.set_defaults(func=_lazy("report", "cmd_report"))

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
    token.set_defaults(func=_lazy("cli", "cmd_token"))

    rt = _command(sub, "runtime", "the runtime extension files")
    rt_sub = rt.add_subparsers(dest="runtime_command", required=True, parser_class=_Parser)
    render = _nested(rt_sub, "render", "write policyc.control and scripts into DIRECTORY")
    render.add_argument("directory",
                        help="where to write them, e.g. the server's sharedir/extension")
    render.set_defaults(func=_lazy("cli", "cmd_runtime_render"))
    return parser


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse keeps no public map of its subcommands
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


