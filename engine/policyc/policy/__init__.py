"""The policy: its typed model, and loading and checking a policy file.

The loader is imported on first use: code that only needs the model (the proxy reads
``policyc.policy.model``) does not pay for YAML, JSON Schema and the row-filter checker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policyc.policy.loader import check_policy, load_policy, load_policy_text

__all__ = ["check_policy", "load_policy", "load_policy_text"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("policyc.policy.loader"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
