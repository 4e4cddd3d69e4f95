"""The runtime extension: render it from sql/extension + plpython/, install or upgrade it.

The same rendered script serves two paths.  When the extension files are installed on the
server (``policyc runtime render $(pg_config --sharedir)/extension``), apply uses CREATE /
ALTER EXTENSION.  When they are not (managed databases, laptops), apply runs the script itself
and records the version in a comment on the ``policyc`` schema, so upgrades work the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from policyc import RUNTIME_VERSION
from policyc.resources import plpython_dir, sql_dir

_SCRIPT = re.compile(r"^policyc--(?P<spec>[0-9][0-9.]*(?:--[0-9][0-9.]*)?)\.sql\.j2$")
EXTENSION = "policyc"


@dataclass(frozen=True)
class Script:
    """One rendered extension script: install (``0.1.0``) or upgrade (``0.1.0`` → ``0.2.0``)."""

    source: str | None  # None for an install script
    target: str
    text: str

    @property
    def filename(self) -> str:
        if self.source is None:
            return f"{EXTENSION}--{self.target}.sql"
        return f"{EXTENSION}--{self.source}--{self.target}.sql"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(sql_dir() / "extension")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders SQL, not HTML
    )

    def plpython(name: str) -> str:
        body = (plpython_dir() / name).read_text()
        if "$plpython$" in body:
            raise ValueError(f"plpython/{name} must not contain the $plpython$ delimiter")
        return body.rstrip("\n")

    env.globals["plpython"] = plpython
    return env


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def scripts() -> list[Script]:
    """Every install and upgrade script, rendered, sorted by target version."""
    env = _environment()
    found: list[Script] = []
    for path in sorted((sql_dir() / "extension").iterdir()):
        match = _SCRIPT.match(path.name)
        if not match:
            continue
        spec = match.group("spec")
        source, _, target = spec.rpartition("--")
        text = env.get_template(path.name).render()
        found.append(Script(source or None, target, text))
    return sorted(found, key=lambda s: (_version_key(s.target), s.source is not None))


def statements_text(script: Script) -> str:
    """The script without psql-only lines, ready to execute through a driver."""
    return "\n".join(
        line for line in script.text.splitlines() if not line.lstrip().startswith("\\")
    )


def upgrade_path(installed: str | None, target: str = RUNTIME_VERSION) -> list[Script]:
    """Scripts to run to go from ``installed`` (None: nothing) to ``target``."""
    available = scripts()
    if installed == target:
        return []
    if installed is None:
        installs = [s for s in available if s.source is None]
        if not installs:
            raise LookupError("no install script in sql/extension")
        # install the newest base script at or below target, then upgrade from it
        base = max(
            (s for s in installs if _version_key(s.target) <= _version_key(target)),
            key=lambda s: _version_key(s.target),
        )
        return [base, *upgrade_path(base.target, target)]
    path: list[Script] = []
    current = installed
    while current != target:
        step = next((s for s in available if s.source == current), None)
        if step is None:
            raise LookupError(f"no upgrade script from runtime {current} toward {target}")
        path.append(step)
        current = step.target
    return path


def fingerprint() -> str:
    """A digest of every script: changes when the runtime's SQL or PL/Python changes."""
    digest = hashlib.sha256()
    for script in scripts():
        digest.update(script.filename.encode())
        digest.update(script.text.encode())
    return digest.hexdigest()[:16]


def render(directory: Path) -> list[Path]:
    """Write the control file and all scripts into ``directory`` (e.g. the server's sharedir)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    control = directory / f"{EXTENSION}.control"
    control.write_text((sql_dir() / "extension" / f"{EXTENSION}.control").read_text())
    written.append(control)
    for script in scripts():
        target = directory / script.filename
        target.write_text(script.text)
        written.append(target)
    return written
