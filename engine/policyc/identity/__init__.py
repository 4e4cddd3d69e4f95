"""Agent identity for ``policyc proxy``: verify the OIDC token, pick the one policy group.

The proxy calls ``await TokenVerifier.verify_async(password)``, checks ``matches_user`` against
the startup user, then ``resolve_group`` with ``requested_group_from_options(options)``.
"""

from __future__ import annotations

from policyc.identity.groups import (
    GROUP_OPTION,
    StartupOptionsError,
    parse_startup_options,
    requested_group_from_options,
    resolve_group,
    split_options,
)
from policyc.identity.jwks import (
    SUPPORTED_ALGORITHMS,
    FileKeySource,
    HttpsKeySource,
    KeyMismatch,
    KeySet,
    KeySetError,
    KeySource,
    KeysUnavailable,
    StaticKeySource,
    UnknownKey,
    https_fetcher,
    key_source_for,
)
from policyc.identity.verify import (
    MAX_TOKEN_BYTES,
    REASONS,
    AgentIdentity,
    AuthenticationFailed,
    IdentityConfigError,
    TokenVerifier,
    matches_user,
    seconds_left,
)

__all__ = [
    "GROUP_OPTION",
    "MAX_TOKEN_BYTES",
    "REASONS",
    "SUPPORTED_ALGORITHMS",
    "AgentIdentity",
    "AuthenticationFailed",
    "FileKeySource",
    "HttpsKeySource",
    "IdentityConfigError",
    "KeyMismatch",
    "KeySet",
    "KeySetError",
    "KeySource",
    "KeysUnavailable",
    "StartupOptionsError",
    "StaticKeySource",
    "TokenVerifier",
    "UnknownKey",
    "https_fetcher",
    "key_source_for",
    "matches_user",
    "parse_startup_options",
    "requested_group_from_options",
    "resolve_group",
    "seconds_left",
    "split_options",
]
