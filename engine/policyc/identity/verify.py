"""Verify an agent's OIDC token (its Postgres password) and name the agent.

Order matters and is fixed: size and shape, then the header ``alg`` against the policy's pinned
list (before any key is looked up, so "none", HS* and alg-confusion tokens never reach a key),
then the key by ``kid`` (its type must fit the alg), then PyJWT checks the signature, issuer and
audience, then the clock checks (exp/nbf/iat with leeway, against an injectable clock), then
subject and groups.  Claims are read only after the signature holds.

Every failure is :class:`AuthenticationFailed` with a stable ``reason`` token for the audit log
and one generic message; neither ever carries the token or a claim value.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from policyc.errors import ConfigFileError, InvalidPassword, PolicycError
from policyc.identity.jwks import (
    SUPPORTED_ALGORITHMS,
    KeySetError,
    KeySource,
    UnknownKey,
)
from policyc.policy.model import Identity

MAX_TOKEN_BYTES = 16 * 1024
MAX_SUBJECT_CHARS = 128

# Becomes the Postgres user name the agent logs in with: no whitespace, quotes, backslashes,
# control or non-ASCII characters.  Covers emails, UUIDs, "auth0|123", "system:serviceaccount:x".
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:|/=-]*")
_GROUP_SPLIT = re.compile(r"[\s,]+")

REASONS = frozenset(
    {
        "expired",
        "not_yet_valid",
        "bad_signature",
        "unknown_kid",
        "key_mismatch",
        "keys_unavailable",
        "bad_issuer",
        "bad_audience",
        "missing_exp",
        "alg_not_allowed",
        "malformed",
        "missing_groups",
        "bad_groups",
        "bad_subject",
        "user_mismatch",
        "no_matching_group",
        "ambiguous_group",
        "group_not_allowed",
    }
)


class AuthenticationFailed(PolicycError):
    """The agent is not let in.  ``reason`` is for the audit log; the message says nothing."""

    code = "auth"
    sqlstate = InvalidPassword.sqlstate

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown authentication failure reason {reason!r}")
        self.reason = reason
        super().__init__("authentication failed")


class IdentityConfigError(PolicycError):
    """The policy's ``identity`` section cannot be used to verify tokens safely."""

    code = "identity"
    sqlstate = ConfigFileError.sqlstate


@dataclass(frozen=True)
class AgentIdentity:
    """Who the verified token names, its groups, all its claims (JSON-able) and its expiry."""

    subject: str
    groups: tuple[str, ...]
    claims: Mapping[str, Any] = field(hash=False)
    expires_at: float
    token_id: str | None


def matches_user(identity: AgentIdentity, user: str) -> bool:
    """True when the startup ``user`` is exactly the token's subject (case-sensitive)."""
    return user == identity.subject


def seconds_left(identity: AgentIdentity, now: float) -> float:
    """Seconds until the token expires (negative once expired); for mid-session checks."""
    return identity.expires_at - now


def _pinned(identity: Identity) -> tuple[str, ...]:
    algorithms = tuple(identity.algorithms)
    if not algorithms:
        raise IdentityConfigError("identity.algorithms must list at least one algorithm")
    for alg in algorithms:
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise IdentityConfigError(
                f"identity.algorithms: {alg} is refused (only asymmetric algorithms)"
            )
        if alg not in SUPPORTED_ALGORITHMS:
            raise IdentityConfigError(f"identity.algorithms: {alg} is not supported")
    if not identity.issuer:
        raise IdentityConfigError("identity.issuer is required")
    if not identity.audience:
        raise IdentityConfigError("identity.audience is required")
    if identity.leeway_seconds < 0:
        raise IdentityConfigError("identity.leeway_seconds must not be negative")
    return algorithms


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_groups(value: object) -> tuple[str, ...]:
    """A groups claim: a list of strings, or one string separated by spaces or commas."""
    if value is None:
        raise AuthenticationFailed("missing_groups")
    if isinstance(value, str):
        return tuple(part for part in _GROUP_SPLIT.split(value) if part)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise AuthenticationFailed("bad_groups")


def check_subject(value: object) -> str:
    """The subject, if it is safe to use as a Postgres user name."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_SUBJECT_CHARS
        or _SUBJECT.fullmatch(value) is None
    ):
        raise AuthenticationFailed("bad_subject")
    return value


_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidKeyError, "key_mismatch"),
    (jwt.exceptions.InvalidSubjectError, "bad_subject"),
    (jwt.PyJWTError, "malformed"),
)


class TokenVerifier:
    """Verifies tokens against one policy ``identity`` and a key source."""

    def __init__(
        self,
        identity: Identity,
        keys: KeySource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithms = _pinned(identity)
        self.identity = identity
        self.keys = keys
        self.clock = clock

    def _preflight(self, token: str) -> tuple[str | None, str]:
        """Shape, size and pinned alg; returns (kid, alg).  Reads no claim."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("malformed")
        if not token.isascii() or token.count(".") != 2:
            raise AuthenticationFailed("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthenticationFailed("alg_not_allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationFailed("malformed")
        return kid, alg

    def _check(self, token: str, key: jwt.PyJWK, alg: str) -> AgentIdentity:
        """Signature, issuer, audience (PyJWT), then time, subject and groups."""
        policy = self.identity
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=policy.issuer,
                audience=policy.audience,
                options={
                    "require": ["iss", "aud"],
                    "verify_signature": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    # Time is checked below against the injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            reason = "bad_issuer" if exc.claim == "iss" else "bad_audience"
            raise AuthenticationFailed(reason) from None
        except jwt.PyJWTError as exc:
            for kind, reason in _PYJWT_REASONS:
                if isinstance(exc, kind):
                    raise AuthenticationFailed(reason) from None
            raise AuthenticationFailed("malformed") from None  # pragma: no cover
        try:
            json.dumps(claims, allow_nan=False)
        except ValueError:
            raise AuthenticationFailed("malformed") from None

        now = self.clock()
        leeway = float(policy.leeway_seconds)
        if "exp" not in claims:
            raise AuthenticationFailed("missing_exp")
        exp = _number(claims["exp"])
        if exp is None:
            raise AuthenticationFailed("malformed")
        if exp <= now - leeway:
            raise AuthenticationFailed("expired")
        for name in ("nbf", "iat"):
            if name in claims:
                moment = _number(claims[name])
                if moment is None:
                    raise AuthenticationFailed("malformed")
                if moment > now + leeway:
                    raise AuthenticationFailed("not_yet_valid")

        subject = check_subject(claims.get(policy.subject_claim))
        groups = parse_groups(claims.get(policy.groups_claim))
        jti = claims.get("jti")
        return AgentIdentity(
            subject=subject,
            groups=groups,
            claims=claims,
            expires_at=exp,
            token_id=jti if isinstance(jti, str) else None,
        )

    @staticmethod
    def _lookup_failed(exc: Exception) -> AuthenticationFailed:
        if isinstance(exc, UnknownKey):
            return AuthenticationFailed(exc.reason)
        return AuthenticationFailed("keys_unavailable")

    def verify(self, token: str) -> AgentIdentity:
        """Verify with the key source's blocking lookup (CLI, tests)."""
        kid, alg = self._preflight(token)
        try:
            key = self.keys.get_sync(kid, alg)
        except (UnknownKey, KeySetError) as exc:
            raise self._lookup_failed(exc) from None
        return self._check(token, key, alg)

    async def verify_async(self, token: str) -> AgentIdentity:
        """Verify without blocking the event loop on a JWKS fetch (the proxy)."""
        kid, alg = self._preflight(token)
        try:
            key = await self.keys.get(kid, alg)
        except (UnknownKey, KeySetError) as exc:
            raise self._lookup_failed(exc) from None
        return self._check(token, key, alg)
