"""Development keys: what is written, that minted tokens verify, that the TLS certificate
really serves localhost, and that the https JWKS fetch verifies certificates (loopback only)."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import ipaddress
import json
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from policyc.identity import (
    AuthenticationFailed,
    FileKeySource,
    HttpsKeySource,
    KeySetError,
    TokenVerifier,
    https_fetcher,
)
from policyc.identity.devkeys import (
    JWKS_FILE,
    README,
    SIGNING_KEY,
    TLS_CERT,
    TLS_KEY,
    DevKeyError,
    generate_dev_keys,
    mint_token,
)
from policyc.policy.model import Identity

ISSUER = "https://dev.policyc.local/"
AUDIENCE = "pg-gateway"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev") / "keys"
    generate_dev_keys(directory, ISSUER)
    return directory


def policy_identity(keydir: Path) -> Identity:
    return Identity(
        issuer=ISSUER, audience=AUDIENCE, jwks=str(keydir / JWKS_FILE), algorithms=("ES256",)
    )


def test_files_written_and_labelled(keydir: Path) -> None:
    for name in (SIGNING_KEY, JWKS_FILE, TLS_CERT, TLS_KEY, README):
        assert "NOT FOR PRODUCTION" in (keydir / name).read_text(), name
    for secret in (SIGNING_KEY, TLS_KEY):
        assert stat.S_IMODE((keydir / secret).stat().st_mode) == 0o600
    assert ISSUER in (keydir / README).read_text()


def test_signing_key_and_jwks_match(keydir: Path) -> None:
    key = serialization.load_pem_private_key((keydir / SIGNING_KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    doc = json.loads((keydir / JWKS_FILE).read_text())
    [jwk] = doc["keys"]
    assert {k: jwk[k] for k in ("kid", "alg", "use", "kty", "crv")} == {
        "kid": "dev-1",
        "alg": "ES256",
        "use": "sig",
        "kty": "EC",
        "crv": "P-256",
    }
    assert "d" not in jwk  # public only
    public = jwt.PyJWK(jwk).key
    assert public.public_numbers() == key.public_key().public_numbers()


def test_minted_token_verifies(keydir: Path) -> None:
    token = mint_token(
        keydir / SIGNING_KEY,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="billing-bot",
        groups=["billing-agents"],
        claims={"clinic_id": 3},
        ttl_seconds=600,
        now=1_700_000_000,
    )
    verifier = TokenVerifier(
        policy_identity(keydir), FileKeySource(keydir / JWKS_FILE), clock=lambda: 1_700_000_100
    )
    agent = verifier.verify(token)
    assert agent.subject == "billing-bot"
    assert agent.groups == ("billing-agents",)
    assert agent.claims["clinic_id"] == 3
    assert agent.expires_at == 1_700_000_600
    assert agent.token_id
    assert jwt.get_unverified_header(token)["kid"] == "dev-1"

    late = TokenVerifier(
        policy_identity(keydir), FileKeySource(keydir / JWKS_FILE), clock=lambda: 1_700_001_000
    )
    with pytest.raises(AuthenticationFailed) as info:
        late.verify(token)
    assert info.value.reason == "expired"


def test_mint_token_uses_custom_claim_names(keydir: Path) -> None:
    token = mint_token(
        keydir / SIGNING_KEY,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="bot@clinic.example",
        groups=["ops"],
        claims={},
        subject_claim="email",
        groups_claim="roles",
    )
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["email"] == "bot@clinic.example"
    assert payload["roles"] == ["ops"]
    assert "sub" not in payload


@pytest.mark.parametrize("clash", ["iss", "sub", "exp", "groups", "jti"])
def test_mint_token_refuses_overriding_registered_claims(keydir: Path, clash: str) -> None:
    with pytest.raises(DevKeyError, match=clash):
        mint_token(
            keydir / SIGNING_KEY,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject="bot",
            groups=[],
            claims={clash: "x"},
        )


def test_mint_token_refuses_other_keys(tmp_path: Path) -> None:
    weak = tmp_path / "rsa.pem"
    weak.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (weak, tmp_path / "missing.pem"):
        with pytest.raises(DevKeyError):
            mint_token(path, issuer=ISSUER, audience=AUDIENCE, subject="b", groups=[], claims={})


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_dev_keys(tmp_path, ISSUER, kid="a")
    first = (tmp_path / SIGNING_KEY).read_bytes()
    with pytest.raises(DevKeyError):
        generate_dev_keys(tmp_path, ISSUER, kid="b")
    assert (tmp_path / SIGNING_KEY).read_bytes() == first
    generate_dev_keys(tmp_path, ISSUER, kid="b", overwrite=True)
    assert (tmp_path / SIGNING_KEY).read_bytes() != first
    assert json.loads((tmp_path / JWKS_FILE).read_text())["keys"][0]["kid"] == "b"


def test_tls_certificate_fields(keydir: Path) -> None:
    cert = x509.load_pem_x509_certificate((keydir / TLS_CERT).read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


# -- a real TLS server on loopback with the development certificate -----------------------


def _server_context(keydir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(keydir / TLS_CERT, keydir / TLS_KEY)
    return context


def _client_context(keydir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(keydir / TLS_CERT))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_handshake_verifies(keydir: Path, host: str) -> None:
    server_ctx = _server_context(keydir)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(5))
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            _client_context(keydir).wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
        thread.join(5)
        assert not errors


class _Handler(http.server.BaseHTTPRequestHandler):
    jwks = b""
    port = 0

    def do_GET(self) -> None:
        port = self.port
        if self.path == "/jwks.json":
            self._send(200, self.jwks)
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        elif self.path == "/downgrade":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/jwks.json")
            self.end_headers()
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", f"https://localhost:{port}/jwks.json")
            self.end_headers()
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def idp(keydir: Path) -> Iterator[str]:
    _Handler.jwks = (keydir / JWKS_FILE).read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = _server_context(keydir).wrap_socket(server.socket, server_side=True)
    _Handler.port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.mark.usefixtures("no_proxy")
def test_https_fetch_verifies_certificates(idp: str, keydir: Path) -> None:
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        https_fetcher(timeout=5)(idp + "/jwks.json")  # system CAs do not know the dev cert
    trusted = https_fetcher(timeout=5, context=_client_context(keydir))
    assert trusted(idp + "/jwks.json") == (keydir / JWKS_FILE).read_bytes()
    assert trusted(idp + "/hop") == (keydir / JWKS_FILE).read_bytes()
    with pytest.raises(KeySetError, match="redirected"):
        trusted(idp + "/downgrade")
    with pytest.raises(KeySetError, match="larger"):
        https_fetcher(timeout=5, limit=1000, context=_client_context(keydir))(idp + "/big")
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(KeySetError):
        https_fetcher(context=lax)


@pytest.mark.usefixtures("no_proxy")
def test_https_key_source_end_to_end(
    idp: str, keydir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default fetcher, run in a worker thread, against a loopback https IdP."""
    monkeypatch.setenv("SSL_CERT_FILE", str(keydir / TLS_CERT))
    source = HttpsKeySource(idp + "/jwks.json", timeout=5)
    verifier = TokenVerifier(policy_identity(keydir), source)
    token = mint_token(
        keydir / SIGNING_KEY,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="billing-bot",
        groups=["billing-agents"],
        claims={},
    )
    assert asyncio.run(verifier.verify_async(token)).subject == "billing-bot"
    assert verifier.verify(token).subject == "billing-bot"
