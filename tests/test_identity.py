"""Token verification, key sets and group mapping: every token the proxy must refuse, refused
for the right reason, with real keys and real PyJWT.  No database needed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from policyc.identity import (
    MAX_TOKEN_BYTES,
    AgentIdentity,
    AuthenticationFailed,
    FileKeySource,
    HttpsKeySource,
    IdentityConfigError,
    KeyMismatch,
    KeySet,
    KeySetError,
    KeySource,
    StartupOptionsError,
    StaticKeySource,
    TokenVerifier,
    UnknownKey,
    https_fetcher,
    key_source_for,
    matches_user,
    parse_startup_options,
    requested_group_from_options,
    resolve_group,
    seconds_left,
)
from policyc.policy.model import (
    ApprovalRules,
    Approvals,
    AuditSettings,
    Group,
    Identity,
    Policy,
    ProxySettings,
)

NOW = 1_700_000_000.0
ISSUER = "https://idp.example.org/"
AUDIENCE = "pg-gateway"
URL = "https://idp.example.org/.well-known/jwks.json"


# -- keys and tokens ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec1() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ec2() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa1() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks_bytes(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "agent-7",
        "groups": ["billing-agents"],
        "iat": int(NOW) - 60,
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 600,
        "jti": "tok-1",
        "clinic_id": 3,
    }
    for name, value in overrides.items():
        if value is _DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


_DROP = object()


def sign(key: Any, payload: dict[str, Any], alg: str = "ES256", kid: str | None = "ec-1") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def identity(**overrides: Any) -> Identity:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks": "jwks.json",
        "algorithms": ("ES256",),
    }
    values.update(overrides)
    return Identity(**values)


class Counting:
    """A key source that counts lookups, to prove some tokens never reach a key."""

    def __init__(self, inner: KeySource) -> None:
        self.inner = inner
        self.calls = 0

    async def get(self, kid: str | None, alg: str) -> jwt.PyJWK:
        self.calls += 1
        return await self.inner.get(kid, alg)

    def get_sync(self, kid: str | None, alg: str) -> jwt.PyJWK:
        self.calls += 1
        return self.inner.get_sync(kid, alg)


@pytest.fixture
def keyset(ec1: ec.EllipticCurvePrivateKey, rsa1: rsa.RSAPrivateKey) -> KeySet:
    return KeySet.parse(jwks_bytes(ec_jwk(ec1, "ec-1"), rsa_jwk(rsa1, "rsa-1")))


def verifier(keys: KeySource | KeySet, **identity_overrides: Any) -> TokenVerifier:
    source = StaticKeySource(keys) if isinstance(keys, KeySet) else keys
    return TokenVerifier(identity(**identity_overrides), source, clock=lambda: NOW)


def refused(v: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        v.verify(token)
    exc = info.value
    assert str(exc) == "authentication failed"
    assert exc.sqlstate == "28P01"
    assert exc.code == "auth"
    # Library exceptions (which may quote key material or kids) are never chained.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None
    return exc.reason


# -- valid tokens ------------------------------------------------------------------------


def test_valid_es256_token_verifies(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    agent = verifier(keyset).verify(sign(ec1, claims()))
    assert agent == AgentIdentity(
        subject="agent-7",
        groups=("billing-agents",),
        claims=claims(),
        expires_at=NOW + 600,
        token_id="tok-1",
    )
    json.dumps(agent.claims)  # recorded in audit.sessions as JSON
    assert hash(agent) == hash(verifier(keyset).verify(sign(ec1, claims())))


def test_valid_rs256_token_verifies(keyset: KeySet, rsa1: rsa.RSAPrivateKey) -> None:
    v = verifier(keyset, algorithms=("RS256", "ES256"))
    agent = v.verify(sign(rsa1, claims(jti=_DROP), "RS256", "rsa-1"))
    assert agent.subject == "agent-7"
    assert agent.token_id is None


def test_verify_async_matches_sync(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    token = sign(ec1, claims())
    assert asyncio.run(v.verify_async(token)) == v.verify(token)
    with pytest.raises(AuthenticationFailed) as info:
        asyncio.run(v.verify_async(sign(ec1, claims(iss="https://evil/"))))
    assert info.value.reason == "bad_issuer"


def test_audience_list_containing_ours_is_accepted(
    keyset: KeySet, ec1: ec.EllipticCurvePrivateKey
) -> None:
    token = sign(ec1, claims(aud=["other-api", AUDIENCE]))
    assert verifier(keyset).verify(token).subject == "agent-7"


def test_custom_subject_and_groups_claims(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset, subject_claim="email", groups_claim="roles")
    token = sign(ec1, claims(email="bot@clinic.example", roles="ops, billing-agents  audit"))
    agent = v.verify(token)
    assert agent.subject == "bot@clinic.example"
    assert agent.groups == ("ops", "billing-agents", "audit")
    assert refused(v, sign(ec1, claims())) == "bad_subject"  # no "email" claim


# -- time --------------------------------------------------------------------------------


def test_expired_and_leeway(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)  # leeway 30 s
    assert refused(v, sign(ec1, claims(exp=int(NOW) - 31))) == "expired"
    assert refused(v, sign(ec1, claims(exp=int(NOW) - 30))) == "expired"
    assert v.verify(sign(ec1, claims(exp=int(NOW) - 10))).expires_at == NOW - 10
    strict = verifier(keyset, leeway_seconds=0)
    assert refused(strict, sign(ec1, claims(exp=int(NOW) - 10))) == "expired"


def test_not_yet_valid_and_leeway(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    assert refused(v, sign(ec1, claims(nbf=int(NOW) + 60))) == "not_yet_valid"
    assert refused(v, sign(ec1, claims(iat=int(NOW) + 60))) == "not_yet_valid"
    assert v.verify(sign(ec1, claims(nbf=int(NOW) + 20, iat=int(NOW) + 20))).subject == "agent-7"


def test_exp_required_and_numeric(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    assert refused(v, sign(ec1, claims(exp=_DROP))) == "missing_exp"
    assert refused(v, sign(ec1, claims(exp=str(int(NOW) + 600)))) == "malformed"
    assert refused(v, sign(ec1, claims(exp=True))) == "malformed"
    assert refused(v, sign(ec1, claims(nbf="soon"))) == "malformed"


def test_clock_is_read_at_verification(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    now = [NOW]
    v = TokenVerifier(identity(), StaticKeySource(keyset), clock=lambda: now[0])
    token = sign(ec1, claims())
    agent = v.verify(token)
    assert seconds_left(agent, NOW) == 600
    now[0] = NOW + 700
    assert refused(v, token) == "expired"
    assert seconds_left(agent, now[0]) < 0


# -- issuer, audience --------------------------------------------------------------------


def test_issuer_checked_and_required(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    assert refused(v, sign(ec1, claims(iss="https://idp.example.org"))) == "bad_issuer"
    assert refused(v, sign(ec1, claims(iss="https://evil.example/"))) == "bad_issuer"
    assert refused(v, sign(ec1, claims(iss=_DROP))) == "bad_issuer"


def test_audience_checked_and_required(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    assert refused(v, sign(ec1, claims(aud="other-api"))) == "bad_audience"
    assert refused(v, sign(ec1, claims(aud=["a", "b"]))) == "bad_audience"
    assert refused(v, sign(ec1, claims(aud=_DROP))) == "bad_audience"
    assert refused(v, sign(ec1, claims(aud=5))) == "bad_audience"


# -- algorithms --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_refused_before_key_lookup(keyset: KeySet, alg: str) -> None:
    source = Counting(StaticKeySource(keyset))
    v = verifier(source)
    token = hand_made({"alg": alg, "typ": "JWT", "kid": "ec-1"}, claims())
    assert refused(v, token) == "alg_not_allowed"
    assert refused(v, token + "c2ln") == "alg_not_allowed"
    assert source.calls == 0


def test_hs256_signed_with_rsa_public_key_refused(keyset: KeySet, rsa1: rsa.RSAPrivateKey) -> None:
    """The classic confusion attack: the public PEM used as an HMAC secret."""
    public_pem = rsa1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims()).encode())]
    ).encode()
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    token = signing_input.decode() + "." + b64(signature)
    source = Counting(StaticKeySource(keyset))
    v = verifier(source, algorithms=("RS256",))
    assert refused(v, token) == "alg_not_allowed"
    assert source.calls == 0


def test_hs256_refused(keyset: KeySet) -> None:
    source = Counting(StaticKeySource(keyset))
    v = verifier(source, algorithms=("ES256", "RS256"))
    token = jwt.encode(claims(), "a-shared-secret-of-enough-length!", algorithm="HS256")
    assert refused(v, token) == "alg_not_allowed"
    assert source.calls == 0


def test_unpinned_asymmetric_alg_refused(keyset: KeySet, rsa1: rsa.RSAPrivateKey) -> None:
    source = Counting(StaticKeySource(keyset))
    token = sign(rsa1, claims(), "RS256", "rsa-1")
    assert refused(verifier(source), token) == "alg_not_allowed"  # pins ES256 only
    assert source.calls == 0


@pytest.mark.parametrize(
    "algorithms",
    [("HS256",), ("ES256", "HS512"), ("none",), ("RS256", "None"), (), ("XS256",)],
)
def test_unsafe_pinned_algorithms_refused_at_construction(
    keyset: KeySet, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(IdentityConfigError):
        verifier(keyset, algorithms=algorithms)


def test_missing_issuer_or_audience_refused_at_construction(keyset: KeySet) -> None:
    with pytest.raises(IdentityConfigError):
        verifier(keyset, issuer="")
    with pytest.raises(IdentityConfigError):
        verifier(keyset, audience="")


def test_key_type_must_fit_alg(
    keyset: KeySet, ec1: ec.EllipticCurvePrivateKey, rsa1: rsa.RSAPrivateKey
) -> None:
    v = verifier(keyset, algorithms=("RS256", "ES256", "ES384"))
    # An RSA-signed token naming the EC key, and an EC-signed one naming the RSA key.
    assert refused(v, sign(rsa1, claims(), "RS256", "ec-1")) == "key_mismatch"
    assert refused(v, sign(ec1, claims(), "ES256", "rsa-1")) == "key_mismatch"
    # A P-384 signature cannot be checked with the P-256 key.
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert refused(v, sign(p384, claims(), "ES384", "ec-1")) == "key_mismatch"


def test_declared_key_alg_must_equal_token_alg(rsa1: rsa.RSAPrivateKey) -> None:
    keys = KeySet.parse(jwks_bytes(rsa_jwk(rsa1, "rsa-1", alg="RS256")))
    v = verifier(keys, algorithms=("RS256", "PS256"))
    assert refused(v, sign(rsa1, claims(), "PS256", "rsa-1")) == "key_mismatch"
    assert v.verify(sign(rsa1, claims(), "RS256", "rsa-1")).subject == "agent-7"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_short_rsa_keys_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    keys = KeySet.parse(jwks_bytes(rsa_jwk(weak, "weak")))
    v = verifier(keys, algorithms=("RS256",))
    assert refused(v, sign(weak, claims(), "RS256", "weak")) == "key_mismatch"


# -- signatures and shape ----------------------------------------------------------------


def test_tampered_payload_and_signature(
    keyset: KeySet, ec1: ec.EllipticCurvePrivateKey, ec2: ec.EllipticCurvePrivateKey
) -> None:
    v = verifier(keyset)
    head, body, sig = sign(ec1, claims()).split(".")
    forged_body = b64(json.dumps(claims(groups=["admins"])).encode())
    assert refused(v, f"{head}.{forged_body}.{sig}") == "bad_signature"
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    assert refused(v, f"{head}.{body}.{b64(bytes(raw))}") == "bad_signature"
    # Signed by another key under the trusted kid.
    assert refused(v, sign(ec2, claims(), kid="ec-1")) == "bad_signature"


def test_malformed_tokens(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", "é.é.é"]:
        assert refused(v, token) == "malformed"
    assert refused(v, hand_made({"alg": "ES256", "kid": 7}, claims())) == "malformed"
    assert refused(v, hand_made({"kid": "ec-1"}, claims())) == "alg_not_allowed"


def test_oversized_token_refused(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    source = Counting(StaticKeySource(keyset))
    big = sign(ec1, claims(padding="x" * MAX_TOKEN_BYTES))
    assert len(big) > 16 * 1024
    assert refused(verifier(source), big) == "malformed"
    assert source.calls == 0
    near = sign(ec1, claims(padding="x" * 8000))
    assert v.verify(near).subject == "agent-7"


def test_nan_claims_refused(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": "ec-1"}
    body = json.dumps(claims(score=float("nan"))).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), ec1)
    token = f"{signing_input}.{b64(signature)}"
    assert refused(verifier(keyset), token) == "malformed"


# -- subject and groups ------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        _DROP,
        "",
        None,
        42,
        ["agent"],
        "a" * 129,
        "agent 7",
        "x';drop role x;--",
        "agént",
        "-agent",
        'a"b',
        "a\\b",
        "a\nb",
    ],
)
def test_bad_subjects(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey, subject: Any) -> None:
    assert refused(verifier(keyset), sign(ec1, claims(sub=subject))) == "bad_subject"


@pytest.mark.parametrize(
    "subject", ["a" * 128, "bot@clinic.example", "auth0|5f1e", "system:serviceaccount:ns:job"]
)
def test_good_subjects(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey, subject: str) -> None:
    agent = verifier(keyset).verify(sign(ec1, claims(sub=subject)))
    assert agent.subject == subject
    assert matches_user(agent, subject)
    assert not matches_user(agent, subject.upper() + "x")


def test_groups_claim_shapes(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(keyset)
    assert refused(v, sign(ec1, claims(groups=_DROP))) == "missing_groups"
    assert refused(v, sign(ec1, claims(groups=None))) == "missing_groups"
    for wrong in [7, {"a": 1}, ["ok", 3], [["nested"]], True]:
        assert refused(v, sign(ec1, claims(groups=wrong))) == "bad_groups"
    assert v.verify(sign(ec1, claims(groups="a,b c"))).groups == ("a", "b", "c")
    assert v.verify(sign(ec1, claims(groups=[]))).groups == ()


def test_nothing_secret_is_logged(
    keyset: KeySet, ec1: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    v = verifier(keyset)
    token = sign(ec1, claims(sub="secret-subject", exp=int(NOW) - 100))
    with pytest.raises(AuthenticationFailed) as info:
        v.verify(token)
    text = caplog.text + repr(info.value) + str(info.value.args)
    assert "secret-subject" not in text
    assert token not in text


def test_reason_tokens_are_closed() -> None:
    with pytest.raises(ValueError, match="unknown"):
        AuthenticationFailed("some typo")


# -- key sets ----------------------------------------------------------------------------


def test_keys_without_kid(
    ec1: ec.EllipticCurvePrivateKey, ec2: ec.EllipticCurvePrivateKey, rsa1: rsa.RSAPrivateKey
) -> None:
    one = KeySet.parse(jwks_bytes(ec_jwk(ec1, None), rsa_jwk(rsa1, "rsa-1")))
    v = verifier(one)
    assert v.verify(sign(ec1, claims(), kid=None)).subject == "agent-7"
    two = KeySet.parse(jwks_bytes(ec_jwk(ec1, "ec-1"), ec_jwk(ec2, "ec-2")))
    assert refused(verifier(two), sign(ec1, claims(), kid=None)) == "unknown_kid"


def test_unknown_kid_in_static_set(keyset: KeySet, ec1: ec.EllipticCurvePrivateKey) -> None:
    assert refused(verifier(keyset), sign(ec1, claims(), kid="nope")) == "unknown_kid"


def test_non_signature_and_symmetric_keys_ignored(
    ec1: ec.EllipticCurvePrivateKey, ec2: ec.EllipticCurvePrivateKey
) -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "k": b64(b"secret" * 6)}
    keys = KeySet.parse(
        jwks_bytes(
            ec_jwk(ec1, "ec-1"),
            ec_jwk(ec2, "enc-1", use="enc"),
            oct_key,
            ec_jwk(ec2, "wrap", key_ops=["wrapKey"]),
            {"kty": "EC", "kid": "broken"},
        )
    )
    assert [k["kid"] for k in keys.keys] == ["ec-1"]
    for kid in ["enc-1", "hmac", "wrap", "broken"]:
        with pytest.raises(UnknownKey):
            keys.select(kid, "ES256")
    with pytest.raises(KeySetError):
        KeySet.parse(jwks_bytes(oct_key))


def test_duplicate_kids_refuse_the_set(
    ec1: ec.EllipticCurvePrivateKey, ec2: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(KeySetError, match="duplicate"):
        KeySet.parse(jwks_bytes(ec_jwk(ec1, "k"), ec_jwk(ec2, "k")))
    for bad in [b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}']:
        with pytest.raises(KeySetError):
            KeySet.parse(bad)


def test_select_raises_mismatch_not_unknown(keyset: KeySet) -> None:
    with pytest.raises(KeyMismatch):
        keyset.select("ec-1", "RS256")


# -- file source -------------------------------------------------------------------------


def _write_jwks(path: Path, body: bytes, stamp: int) -> None:
    path.write_bytes(body)
    os.utime(path, ns=(stamp, stamp))  # rotation is seen even within one mtime tick


def test_file_source_rotation(
    tmp_path: Path, ec1: ec.EllipticCurvePrivateKey, ec2: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    _write_jwks(path, jwks_bytes(ec_jwk(ec1, "ec-1")), 1_000_000_000)
    v = verifier(FileKeySource(path))
    old, new = sign(ec1, claims()), sign(ec2, claims(), kid="ec-2")
    assert v.verify(old).subject == "agent-7"
    assert refused(v, new) == "unknown_kid"

    _write_jwks(path, jwks_bytes(ec_jwk(ec2, "ec-2")), 2_000_000_000)
    assert v.verify(new).subject == "agent-7"
    assert refused(v, old) == "unknown_kid"

    _write_jwks(path, jwks_bytes(ec_jwk(ec1, "d"), ec_jwk(ec2, "d")), 3_000_000_000)
    assert refused(v, new) == "keys_unavailable"  # a bad edit fails closed
    path.unlink()
    assert refused(v, new) == "keys_unavailable"
    _write_jwks(path, jwks_bytes(ec_jwk(ec2, "ec-2")), 4_000_000_000)
    assert asyncio.run(v.verify_async(new)).subject == "agent-7"


def test_key_source_for(tmp_path: Path) -> None:
    source = key_source_for("keys/jwks.json", tmp_path)
    assert isinstance(source, FileKeySource)
    assert source.path == tmp_path / "keys" / "jwks.json"
    assert isinstance(key_source_for("/etc/jwks.json", tmp_path), FileKeySource)
    assert isinstance(key_source_for(URL, tmp_path), HttpsKeySource)
    for bad in ["http://idp/jwks.json", "HTTP://idp/jwks.json", "ftp://idp/jwks"]:
        with pytest.raises(KeySetError):
            key_source_for(bad, tmp_path)


# -- https source (the fake fetcher stands in for the IdP's web server) --------------------


class FakeIdP:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0
        self.down = False
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls += 1
        self.urls.append(url)
        if self.down:
            raise OSError("connection refused")
        return self.body


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp(ec1: ec.EllipticCurvePrivateKey) -> FakeIdP:
    return FakeIdP(jwks_bytes(ec_jwk(ec1, "ec-1")))


@pytest.fixture
def mono() -> Clock:
    return Clock()


@pytest.fixture
def https(idp: FakeIdP, mono: Clock) -> Iterator[HttpsKeySource]:
    yield HttpsKeySource(URL, ttl=300, min_refresh_interval=30, fetch=idp, clock=mono)


def test_https_source_refuses_http() -> None:
    with pytest.raises(KeySetError):
        HttpsKeySource("http://idp.example.org/jwks.json", fetch=lambda url: b"")
    with pytest.raises(KeySetError):
        https_fetcher()("http://idp.example.org/jwks.json")


def test_https_source_caches(
    https: HttpsKeySource, idp: FakeIdP, mono: Clock, ec1: ec.EllipticCurvePrivateKey
) -> None:
    v = verifier(https)
    token = sign(ec1, claims())
    for _ in range(3):
        assert v.verify(token).subject == "agent-7"
    assert idp.calls == 1
    assert idp.urls == [URL]
    mono.now += 301  # past the TTL
    v.verify(token)
    assert idp.calls == 2


def test_unknown_kid_refreshes_once_rate_limited(
    https: HttpsKeySource, idp: FakeIdP, mono: Clock, ec1: ec.EllipticCurvePrivateKey
) -> None:
    v = verifier(https)
    assert v.verify(sign(ec1, claims())).subject == "agent-7"
    assert idp.calls == 1
    mono.now += 31
    assert refused(v, sign(ec1, claims(), kid="random-1")) == "unknown_kid"
    assert idp.calls == 2  # exactly one refresh for the unknown kid
    for n in range(20):  # a flood of random kids inside the interval: no fetch at all
        mono.now += 1
        assert refused(v, sign(ec1, claims(), kid=f"random-{n + 2}")) == "unknown_kid"
    assert idp.calls == 2
    mono.now += 30
    assert refused(v, sign(ec1, claims(), kid="random-x")) == "unknown_kid"
    assert idp.calls == 3


def test_key_mismatch_does_not_refresh(
    https: HttpsKeySource, idp: FakeIdP, mono: Clock, rsa1: rsa.RSAPrivateKey
) -> None:
    v = verifier(https, algorithms=("ES256", "RS256"))
    mono.now += 100
    assert refused(v, sign(rsa1, claims(), "RS256", "ec-1")) == "key_mismatch"
    assert idp.calls == 1


def test_https_rotation_via_refresh(
    https: HttpsKeySource,
    idp: FakeIdP,
    mono: Clock,
    ec1: ec.EllipticCurvePrivateKey,
    ec2: ec.EllipticCurvePrivateKey,
) -> None:
    v = verifier(https)
    assert v.verify(sign(ec1, claims())).subject == "agent-7"
    idp.body = jwks_bytes(ec_jwk(ec1, "ec-1"), ec_jwk(ec2, "ec-2"))
    mono.now += 45
    assert v.verify(sign(ec2, claims(), kid="ec-2")).subject == "agent-7"
    assert idp.calls == 2
    idp.body = jwks_bytes(ec_jwk(ec2, "ec-2"))  # ec-1 withdrawn
    mono.now += 301
    assert refused(v, sign(ec1, claims())) == "unknown_kid"


def test_fetch_failure_serves_cache_until_max_age(
    idp: FakeIdP, mono: Clock, ec1: ec.EllipticCurvePrivateKey
) -> None:
    source = HttpsKeySource(URL, ttl=300, fetch=idp, clock=mono, max_age=3600)
    v = verifier(source)
    token = sign(ec1, claims())
    v.verify(token)
    idp.down = True
    mono.now += 400
    assert v.verify(token).subject == "agent-7"  # stale but within max age
    calls = idp.calls
    assert v.verify(token).subject == "agent-7"
    assert idp.calls == calls  # failed refreshes are rate-limited too
    mono.now += 3300
    assert refused(v, token) == "keys_unavailable"
    idp.down = False
    mono.now += 30
    assert v.verify(token).subject == "agent-7"  # recovers once the IdP answers


def test_first_fetch_failure_fails_closed(
    idp: FakeIdP, mono: Clock, ec1: ec.EllipticCurvePrivateKey
) -> None:
    idp.down = True
    v = verifier(HttpsKeySource(URL, fetch=idp, clock=mono))
    assert refused(v, sign(ec1, claims())) == "keys_unavailable"


def test_bad_set_from_idp_keeps_previous(
    https: HttpsKeySource,
    idp: FakeIdP,
    mono: Clock,
    ec1: ec.EllipticCurvePrivateKey,
    ec2: ec.EllipticCurvePrivateKey,
) -> None:
    v = verifier(https)
    token = sign(ec1, claims())
    v.verify(token)
    idp.body = jwks_bytes(ec_jwk(ec1, "ec-1"), ec_jwk(ec2, "ec-1"))  # duplicate kid
    mono.now += 301
    assert v.verify(token).subject == "agent-7"
    assert idp.calls == 2


def test_async_refresh_is_shared(
    https: HttpsKeySource,
    idp: FakeIdP,
    mono: Clock,
    ec1: ec.EllipticCurvePrivateKey,
    ec2: ec.EllipticCurvePrivateKey,
) -> None:
    v = verifier(https)

    async def run() -> list[Any]:
        await v.verify_async(sign(ec1, claims()))
        mono.now += 60
        idp.body = jwks_bytes(ec_jwk(ec2, "ec-2"))
        tokens = [sign(ec2, claims(), kid="ec-2")] * 5 + [
            sign(ec1, claims(), kid=f"junk-{i}") for i in range(10)
        ]
        return await asyncio.gather(*(v.verify_async(t) for t in tokens), return_exceptions=True)

    results = asyncio.run(run())
    assert idp.calls == 2
    # The same source serves a later event loop too (the CLI may run several).
    assert asyncio.run(v.verify_async(sign(ec2, claims(), kid="ec-2"))).subject == "agent-7"
    assert all(isinstance(r, AgentIdentity) for r in results[:5])
    assert all(
        isinstance(r, AuthenticationFailed) and r.reason == "unknown_kid" for r in results[5:]
    )


# -- groups ------------------------------------------------------------------------------


def group(name: str, *oidc: str) -> Group:
    return Group(
        name=name,
        oidc_groups=oidc,
        read={},
        write={},
        rows={},
        unmask=(),
        approval=ApprovalRules(),
    )


@pytest.fixture
def policy() -> Policy:
    return Policy(
        version=1,
        database=None,
        identity=identity(),
        phi={},
        groups=(
            group("billing", "billing-agents", "finance"),
            group("research", "research-agents"),
            group("ops", "ops-agents", "finance"),
        ),
        approvals=Approvals(),
        audit=AuditSettings(),
        proxy=ProxySettings(),
    )


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        call()
    return info.value.reason


def test_resolve_group(policy: Policy) -> None:
    assert resolve_group(policy, ["billing-agents", "unrelated"], None).name == "billing"
    assert resolve_group(policy, ["research-agents"], "research").name == "research"
    assert reason_of(lambda: resolve_group(policy, ["nobody"], None)) == "no_matching_group"
    assert reason_of(lambda: resolve_group(policy, [], None)) == "no_matching_group"
    assert reason_of(lambda: resolve_group(policy, [], "billing")) == "no_matching_group"
    assert reason_of(lambda: resolve_group(policy, ["finance"], None)) == "ambiguous_group"
    assert (
        reason_of(lambda: resolve_group(policy, ["billing-agents", "research-agents"], None))
        == "ambiguous_group"
    )
    assert resolve_group(policy, ["finance"], "ops").name == "ops"
    assert resolve_group(policy, ["finance"], "billing").name == "billing"
    assert reason_of(lambda: resolve_group(policy, ["finance"], "research")) == (
        "group_not_allowed"
    )
    assert reason_of(lambda: resolve_group(policy, ["research-agents"], "billing")) == (
        "group_not_allowed"
    )
    assert reason_of(lambda: resolve_group(policy, ["finance"], "no-such")) == ("group_not_allowed")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", None),
        ("-c search_path=app", None),
        ("-c policyc.group=billing", "billing"),
        ("-cpolicyc.group=billing", "billing"),
        ("--policyc.group=billing", "billing"),
        ("  -c   POLICYC.GROUP=ops  ", "ops"),
        ("-c policyc.group=a -c policyc.group=b", "b"),
        ("-c policyc.group=with\\ space", "with space"),
        ("-c policyc.group=back\\\\slash", "back\\slash"),
        ("-c application_name=x\\ -c\\ policyc.group=evil", None),
        ("-c policyc.group=", None),
        ("-e -c statement_timeout=5s -c policyc.group=ops", "ops"),
    ],
)
def test_requested_group_from_options(options: str, expected: str | None) -> None:
    assert requested_group_from_options(options) == expected


def test_long_options_normalise_dashes() -> None:
    assert parse_startup_options("--statement-timeout=5s") == [("statement_timeout", "5s")]


@pytest.mark.parametrize("options", ["-c", "-c policyc.group", "trailing\\", "-c =x"])
def test_malformed_options(options: str) -> None:
    with pytest.raises(StartupOptionsError):
        requested_group_from_options(options)
