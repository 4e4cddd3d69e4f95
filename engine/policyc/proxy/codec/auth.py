"""Client side of PostgreSQL password authentication: SCRAM-SHA-256 and the legacy MD5 hash.

The proxy authenticates upstream with the service's password.  :class:`ScramClient` is
sans-I/O: it turns server messages (the payloads of AuthenticationSASLContinue/Final) into the
client's replies and verifies the server's signature, so a server that does not know the
password cannot impersonate the database.  No channel binding ("n,,"), like libpq without
``channel_binding=require``.  Only hashlib/hmac: no third-party crypto.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

from policyc.errors import InvalidAuthorization, InvalidPassword
from policyc.errors import ProtocolViolation as PgProtocolViolation
from policyc.proxy.codec._wire import ProtocolViolation

SCRAM_SHA_256 = "SCRAM-SHA-256"
GS2_HEADER = "n,,"  # no channel binding, no authzid
MIN_ITERATIONS = 4096  # RFC 7677's minimum
MAX_ITERATIONS = 10_000_000  # refuse a server that would make us burn seconds of CPU


class ScramError(ProtocolViolation):
    """The SCRAM exchange failed: malformed server message, bad nonce, or wrong signature."""

    code = "scram"

    def __init__(self, message: str, sqlstate: str = PgProtocolViolation.sqlstate) -> None:
        super().__init__(message, sqlstate)


# ------------------------------------------------------------------------------- SASLprep


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep; raises ValueError for prohibited or badly ordered bidi text."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    for c in normalized:
        if any(check(c) for check in prohibited):
            raise ValueError("prohibited character")
    if any(stringprep.in_table_d1(c) for c in normalized):
        if any(stringprep.in_table_d2(c) for c in normalized):
            raise ValueError("mixed bidirectional text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("bidirectional text must start and end right-to-left")
    return normalized


def _password_bytes(password: str) -> bytes:
    # Postgres SASLpreps the password when it can and otherwise uses it as is.
    try:
        return saslprep(password).encode("utf-8")
    except ValueError:
        return password.encode("utf-8")


@functools.lru_cache(maxsize=8)
def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    # Cached: reconnecting to the same upstream role reuses salt and count, and PBKDF2 is slow
    # on purpose.
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"SCRAM {field} is not valid base64") from None


def _attributes(data: bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ScramError(f"SCRAM {what} is not ASCII") from None
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError(f"malformed SCRAM {what}")
        out.append((part[0], part[2:]))
    return out


def _escape_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """One SCRAM-SHA-256 exchange, in order: :meth:`client_first`, :meth:`client_final`,
    :meth:`verify_server_final`.

    ``username`` goes into the client-first message; Postgres ignores it (the startup packet's
    user counts) and libpq sends it empty, which is the default.  ``nonce`` is for tests.
    """

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_nonce",
        "_password",
        "_salted",
        "_state",
        "max_iterations",
        "min_iterations",
        "username",
    )

    mechanism = SCRAM_SHA_256

    def __init__(
        self,
        password: str,
        *,
        username: str = "",
        nonce: str | None = None,
        min_iterations: int = MIN_ITERATIONS,
        max_iterations: int = MAX_ITERATIONS,
    ) -> None:
        self._password = _password_bytes(password)
        self.username = username
        self._nonce = nonce if nonce is not None else _b64(secrets.token_bytes(18))
        if not self._nonce or "," in self._nonce or not self._nonce.isprintable():
            raise ValueError("SCRAM nonce must be printable and contain no comma")
        self.min_iterations = min_iterations
        self.max_iterations = max_iterations
        self._client_first_bare = f"n={_escape_name(username)},r={self._nonce}"
        self._auth_message = b""
        self._salted = b""
        self._state = "initial"

    @property
    def done(self) -> bool:
        """True once the server's signature has been verified."""
        return self._state == "done"

    def client_first(self) -> bytes:
        """The client-first message (the SASLInitialResponse data)."""
        self._expect("initial", "client-first")
        self._state = "first-sent"
        return (GS2_HEADER + self._client_first_bare).encode("utf-8")

    def client_final(self, server_first: bytes) -> bytes:
        """Check the server-first message and return the client-final message (with proof)."""
        self._expect("first-sent", "server-first")
        attrs = _attributes(server_first, "server-first message")
        if [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise ScramError("SCRAM server-first message lacks nonce, salt or iteration count")
        nonce, salt_b64, iterations_text = (v for _, v in attrs[:3])
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("SCRAM server nonce does not extend the client nonce",
                             InvalidAuthorization.sqlstate)
        salt = _unb64(salt_b64, "salt")
        if not salt:
            raise ScramError("SCRAM salt is empty")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise ScramError("SCRAM iteration count is not a number")
        iterations = int(iterations_text)
        if not self.min_iterations <= iterations <= self.max_iterations:
            raise ScramError(
                f"SCRAM iteration count {iterations} outside "
                f"{self.min_iterations}..{self.max_iterations}",
                InvalidAuthorization.sqlstate,
            )
        self._salted = _salted_password(self._password, salt, iterations)
        without_proof = f"c={_b64(GS2_HEADER.encode())},r={nonce}"
        self._auth_message = b",".join(
            [self._client_first_bare.encode("utf-8"), server_first, without_proof.encode()]
        )
        client_key = _hmac(self._salted, b"Client Key")
        signature = _hmac(hashlib.sha256(client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._state = "final-sent"
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature; raise :class:`ScramError` if it does not prove the key."""
        self._expect("final-sent", "server-final")
        attrs = _attributes(server_final, "server-final message")
        key, value = attrs[0]
        if key == "e":
            raise ScramError(f"SCRAM authentication refused by server: {value}",
                             InvalidPassword.sqlstate)
        if key != "v":
            raise ScramError("SCRAM server-final message lacks a verifier")
        server_key = _hmac(self._salted, b"Server Key")
        expected = _hmac(server_key, self._auth_message)
        if not hmac.compare_digest(expected, _unb64(value, "server signature")):
            raise ScramError("SCRAM server signature does not match", InvalidAuthorization.sqlstate)
        self._state = "done"

    def _expect(self, state: str, step: str) -> None:
        if self._state != state:
            raise ScramError(f"unexpected SCRAM {step} step (state {self._state})")


def choose_mechanism(mechanisms: tuple[str, ...] | list[str]) -> str:
    """Pick the SASL mechanism we speak from the server's list, or raise."""
    if SCRAM_SHA_256 in mechanisms:
        return SCRAM_SHA_256
    raise ScramError("server offers no SASL mechanism the proxy supports",
                     InvalidAuthorization.sqlstate)


def md5_password(user: str, password: str, salt: bytes) -> str:
    """The reply to AuthenticationMD5Password: "md5" + md5(md5(password + user) + salt)."""
    if len(salt) != 4:
        raise ProtocolViolation("MD5 salt must be 4 bytes")
    # MD5 is Postgres' protocol, not our choice; usedforsecurity=False keeps FIPS builds working.
    inner = hashlib.md5(
        password.encode("utf-8") + user.encode("utf-8"), usedforsecurity=False
    ).hexdigest()
    outer = hashlib.md5(inner.encode("ascii") + salt, usedforsecurity=False).hexdigest()
    return "md5" + outer
