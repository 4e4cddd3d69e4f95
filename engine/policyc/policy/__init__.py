"""The policy: its typed model, and loading and checking a policy file."""

from __future__ import annotations

from policyc.policy.loader import check_policy, load_policy, load_policy_text

__all__ = ["check_policy", "load_policy", "load_policy_text"]
