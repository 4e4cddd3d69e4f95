"""policyc: compile a data-access policy into PostgreSQL and enforce it on the wire."""

from __future__ import annotations

__version__ = "0.1.0"
RUNTIME_VERSION = "0.7.0"
