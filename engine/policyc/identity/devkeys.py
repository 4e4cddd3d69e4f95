"""Development keys, key set, TLS certificate and tokens: NOT FOR PRODUCTION.

``policyc token`` and the examples need an IdP stand-in: an EC P-256 signing key, its public
JWKS, and a self-signed TLS certificate for the proxy on localhost.  Every file written here
says NOT FOR PRODUCTION in it, so none is mistaken for a real credential.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policyc.errors import PolicycError, SystemError_

SIGNING_KEY = "dev-signing-key.pem"
JWKS_FILE = "jwks.json"
TLS_CERT = "dev-tls.crt"
TLS_KEY = "dev-tls.key"
README = "README.txt"

WARNING = "NOT FOR PRODUCTION: policyc development material, generated for local testing only."
_PEM_BANNER = f"# {WARNING}\n# Anyone holding this file can impersonate your IdP or proxy.\n"
_RESERVED = frozenset({"iss", "aud", "sub", "exp", "iat", "nbf", "jti"})
TLS_DAYS = 3650


class DevKeyError(PolicycError):
    """Development keys cannot be written, read or used as asked."""

    code = "devkeys"
    sqlstate = SystemError_.sqlstate


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file created with ``mode`` from the start (no window where a key is 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _PEM_BANNER.encode() + pem


def public_jwk(key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, Any]:
    """The public JWK of an EC P-256 key: kid, alg ES256, use sig."""
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    return jwk


def self_signed_tls(
    key: ec.EllipticCurvePrivateKey, now: dt.datetime | None = None
) -> x509.Certificate:
    """A self-signed server certificate for localhost, 127.0.0.1 and ::1."""
    now = now or dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "policyc development NOT FOR PRODUCTION"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=TLS_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _readme(issuer: str, kid: str) -> str:
    return f"""{WARNING}

These files let you run policyc locally without a real identity provider.
Never use them in production: the private keys are unencrypted and anyone
holding them can mint agent tokens or impersonate the proxy.

  {SIGNING_KEY}  EC P-256 private key that signs development tokens (ES256, kid {kid})
  {JWKS_FILE}           the matching public key set, for the policy's identity.jwks
  {TLS_CERT}       self-signed TLS certificate for localhost, 127.0.0.1, ::1
  {TLS_KEY}       its private key

Policy identity section to use with these keys:

  identity:
    issuer: {issuer}
    audience: <your audience>
    jwks: {JWKS_FILE}
    algorithms: [ES256]

Mint a token:  policyc token POLICY --key {SIGNING_KEY} --sub <agent> --groups <oidc group>
"""


def generate_dev_keys(
    directory: Path, issuer: str, kid: str = "dev-1", *, overwrite: bool = False
) -> None:
    """Write the development signing key, JWKS, TLS certificate and key, and a README."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = (SIGNING_KEY, JWKS_FILE, TLS_CERT, TLS_KEY, README)
    if not overwrite:
        existing = [n for n in names if (directory / n).exists()]
        if existing:
            raise DevKeyError(f"{directory} already holds {', '.join(existing)}")

    signing = ec.generate_private_key(ec.SECP256R1())
    jwks = {"_comment": WARNING, "keys": [public_jwk(signing.public_key(), kid)]}
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_tls(tls_key)

    _write(directory / SIGNING_KEY, _private_pem(signing), 0o600)
    _write(directory / TLS_KEY, _private_pem(tls_key), 0o600)
    _write(directory / JWKS_FILE, (json.dumps(jwks, indent=2) + "\n").encode(), 0o644)
    cert_pem = _PEM_BANNER.encode() + cert.public_bytes(serialization.Encoding.PEM)
    _write(directory / TLS_CERT, cert_pem, 0o644)
    _write(directory / README, _readme(issuer, kid).encode(), 0o644)


def load_signing_key(key_pem: Path) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 development signing key from a PEM file."""
    try:
        key = serialization.load_pem_private_key(Path(key_pem).read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        raise DevKeyError(f"{key_pem} is not a readable unencrypted private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DevKeyError(f"{key_pem} is not an EC P-256 key")
    return key


def mint_token(
    key_pem: Path,
    *,
    issuer: str,
    audience: str,
    subject: str,
    groups: list[str],
    claims: dict[str, Any],
    ttl_seconds: int = 3600,
    kid: str = "dev-1",
    now: float | None = None,
    subject_claim: str = "sub",
    groups_claim: str = "groups",
) -> str:
    """An ES256 development token.  ``claims`` may not override the registered claims."""
    clash = (_RESERVED | {subject_claim, groups_claim}) & set(claims)
    if clash:
        raise DevKeyError(f"claims may not set {', '.join(sorted(clash))}")
    if ttl_seconds <= 0:
        raise DevKeyError("ttl_seconds must be positive")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = dict(claims)
    payload.update(
        {
            "iss": issuer,
            "aud": audience,
            subject_claim: subject,
            groups_claim: list(groups),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_seconds,
            "jti": str(uuid.uuid4()),
        }
    )
    return jwt.encode(payload, load_signing_key(key_pem), algorithm="ES256", headers={"kid": kid})
