"""Locate the project's SQL templates and PL/Python sources.

They live at the top of the repository (``sql/``, ``plpython/``) so DBAs can read them, and are
also copied into the wheel under ``policyc/_data``; the first that exists wins.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_root() -> Path:
    """The folder that holds ``sql/`` and ``plpython/``."""
    for candidate in (_PACKAGE.parent.parent, _PACKAGE / "_data"):
        if (candidate / "sql" / "extension").is_dir() and (candidate / "plpython").is_dir():
            return candidate
    raise FileNotFoundError("policyc data files (sql/, plpython/) not found next to the package")


def sql_dir() -> Path:
    return data_root() / "sql"


def plpython_dir() -> Path:
    return data_root() / "plpython"
