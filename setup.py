"""Build hook: copy ``sql/`` and ``plpython/`` into the wheel as ``policyc/_data``.

The SQL (runtime extension, templates, catalog and proxy queries) and the PL/Python sources
live at the top of the repository so DBAs can read them; an installed policyc finds them under
``policyc/_data`` (:mod:`policyc.resources`). Everything else is in pyproject.toml. An editable
install (``make venv``) reads them from the checkout and copies nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_DIRS = ("sql", "plpython")


class BuildPyWithData(build_py):
    """``build_py``, then the data directories into ``<build_lib>/policyc/_data``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "policyc" / "_data"
        for name in DATA_DIRS:
            shutil.copytree(ROOT / name, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithData})
