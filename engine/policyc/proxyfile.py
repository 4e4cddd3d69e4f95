"""``policyc proxy --config proxy.toml``: every proxy option from one TOML file.

A key is an option's long name without its dashes (``max_connections``, or ``max-connections``),
plus ``policy``; relative paths are read from the file's directory, so the file can move with
what it names. The file sets defaults: an option given on the command line wins. Each value goes
through the option's own parser, so the file accepts exactly what the command line accepts.

Secrets stay out of it: a service password comes from ``password_file``, ``password_command``
or the environment (``PGPASSWORD``, libpq's ``.pgpass``), never from the file, so the file can
be kept in version control and shown in a review. Mistakes are reported as ``file:line: key:
message``, the way policies are.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from policyc.errors import PolicycError

#: Options whose values are paths, read from the file's directory when relative.
PATH_KEYS = frozenset({"policy", "password_file", "tls_cert", "tls_key", "spool"})
#: Options the file does not set: the file itself, and one-off flags of the command line.
NOT_IN_FILE = frozenset({"help", "config"})


class ProxyFileError(PolicycError):
    """A proxy configuration file that cannot be used as it is."""

    code = "config"


def _line_of(text: str, key: str) -> int | None:
    """The line where ``key`` is set (TOML readers keep no positions; the file is flat)."""
    spelled = "|".join(re.escape(k) for k in {key, key.replace("_", "-")})
    pattern = re.compile(rf"""^\s*["']?(?:{spelled})["']?\s*=""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _fail(path: Path, text: str, key: str, message: str) -> ProxyFileError:
    line = _line_of(text, key)
    where = f"{path}:{line}" if line else str(path)
    return ProxyFileError(f"{where}: {key}: {message}")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The proxy's options by file key (the option's destination)."""
    return {action.dest: action for action in parser._actions  # no public list in argparse
            if action.dest not in NOT_IN_FILE and action.dest != argparse.SUPPRESS}


def read(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as parsed option values, by destination; ProxyFileError names the
    first mistake with its line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProxyFileError(f"{path}: cannot read the configuration file "
                             f"({exc.strerror or type(exc).__name__})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ProxyFileError(f"{where}: not TOML: {reason}") from None
    options = _options(parser)
    values: dict[str, Any] = {}
    for raw_key, value in document.items():
        key = raw_key.replace("-", "_")
        action = options.get(key)
        if action is None:
            known = ", ".join(sorted(options))
            raise _fail(path, text, raw_key, f"not a proxy option (the keys: {known})")
        values[key] = _value(path, text, raw_key, action, value)
    upstream = values.get("upstream")
    if isinstance(upstream, str):
        _no_password(path, text, upstream)
    return values


def _value(path: Path, text: str, key: str, action: argparse.Action, value: Any) -> Any:
    """``value`` as the command line would have parsed it for ``action``."""
    flag = action.nargs == 0  # store_true
    if flag:
        if not isinstance(value, bool):
            raise _fail(path, text, key, "true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, text, key, "a string or a number")
    if action.dest in PATH_KEYS:
        if not isinstance(value, str):
            raise _fail(path, text, key, "a path (a string)")
        return str((path.parent / value).resolve()) if value else value
    convert = action.type if callable(action.type) else str
    try:
        converted = convert(str(value))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise _fail(path, text, key, str(exc) or f"not a valid value: {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise _fail(path, text, key, f"{value!r} is not one of {choices}")
    return converted


def _no_password(path: Path, text: str, dsn: str) -> None:
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise _fail(path, text, "upstream", "not a libpq connection string (key=value pairs "
                    "or a postgresql:// URI)") from None
    if params.get("password"):
        raise _fail(path, text, "upstream", "holds a password: keep secrets out of this file "
                    "(password_file, password_command, or PGPASSWORD in the environment)")
