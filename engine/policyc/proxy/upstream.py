"""Open a session to PostgreSQL as an agent's group role, with the service credential.

Speaks the startup and authentication exchange itself (trust, cleartext, MD5, SCRAM-SHA-256)
so the proxy owns the byte stream afterwards; returns the server's parameters and cancel key.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from policyc.errors import ConnectionFailure, InvalidPassword, PolicycError
from policyc.errors import ProtocolViolation as PgProtocolViolation
from policyc.proxy.codec import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendFramer,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    StartupMessage,
    choose_mechanism,
    decode_backend,
    md5_password,
    parse_encryption_response,
    password_message,
)
from policyc.proxy.codec.frontend import SSL_REQUEST
from policyc.proxy.config import Upstream


class UpstreamError(PolicycError):
    """The database refused or dropped the session; ``sqlstate``/message come from it."""

    code = "upstream"

    def __init__(self, message: str, sqlstate: str = ConnectionFailure.sqlstate) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class UpstreamSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend_pid: int
    backend_key: bytes
    parameters: dict[str, str] = field(default_factory=dict)
    framer: BackendFramer = field(default_factory=BackendFramer)
    leftover: bytes = b""


async def _open(upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if upstream.is_unix_socket:
        return await asyncio.open_unix_connection(f"{upstream.host}/.s.PGSQL.{upstream.port}")
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    if upstream.sslmode == "prefer" or upstream.requires_tls:
        writer.write(SSL_REQUEST)
        await writer.drain()
        answer = await reader.readexactly(1)
        if parse_encryption_response(answer):
            try:
                await writer.start_tls(upstream.client_ssl_context(),
                                       server_hostname=upstream.host)
            except ssl.SSLCertVerificationError as exc:
                writer.close()
                raise UpstreamError("the database's TLS certificate is not trusted "
                                    f"(sslmode={upstream.sslmode}): "
                                    f"{exc.verify_message or 'verification failed'}") from None
        elif upstream.requires_tls:
            writer.close()
            raise UpstreamError(f"the database does not accept TLS but "
                                f"sslmode={upstream.sslmode}")
    return reader, writer


async def connect(
    upstream: Upstream, role: str, settings: dict[str, str], timeout: float = 30.0,
    max_message_bytes: int | None = None,
) -> UpstreamSession:
    """Log in as ``role`` with the service password; raises UpstreamError.
    ``max_message_bytes`` bounds one server message (a row, say) the proxy will buffer: an
    agent must not make it hold a value as large as the protocol allows (1 GiB)."""
    try:
        return await asyncio.wait_for(
            _connect(upstream, role, settings, max_message_bytes), timeout)
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamError(f"cannot reach the database: {type(exc).__name__}") from None
    except TimeoutError:
        raise UpstreamError("the database did not answer in time") from None


async def _connect(upstream: Upstream, role: str, settings: dict[str, str],
                   max_message_bytes: int | None = None) -> UpstreamSession:
    reader, writer = await _open(upstream)
    params = {"user": role, "database": upstream.dbname, **settings}
    writer.write(StartupMessage(params).encode())
    await writer.drain()
    framer = BackendFramer() if max_message_bytes is None else BackendFramer(max_message_bytes)
    scram: ScramClient | None = None
    parameters: dict[str, str] = {}
    pid, key = 0, b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            writer.close()
            raise UpstreamError("the database closed the connection during login")
        frames = framer.feed(chunk)
        for index, frame in enumerate(frames):
            message = decode_backend(frame)
            if isinstance(message, AuthenticationOk):
                continue
            if isinstance(message, AuthenticationCleartextPassword | AuthenticationMD5Password):
                if upstream.password is None:
                    writer.close()
                    raise UpstreamError("the database wants a password for the service role",
                                        InvalidPassword.sqlstate)
                secret = (
                    upstream.password if isinstance(message, AuthenticationCleartextPassword)
                    else md5_password(role, upstream.password, message.salt)
                )
                writer.write(password_message(secret))
            elif isinstance(message, AuthenticationSASL):
                if upstream.password is None:
                    writer.close()
                    raise UpstreamError("the database wants a password for the service role",
                                        InvalidPassword.sqlstate)
                mechanism = choose_mechanism(message.mechanisms)
                scram = ScramClient(upstream.password)
                writer.write(SASLInitialResponse(mechanism, scram.client_first()).encode())
            elif isinstance(message, AuthenticationSASLContinue):
                assert scram is not None
                final = await asyncio.to_thread(scram.client_final, message.data)
                writer.write(SASLResponse(final).encode())
            elif isinstance(message, AuthenticationSASLFinal):
                assert scram is not None
                scram.verify_server_final(message.data)
            elif isinstance(message, ParameterStatus):
                parameters[message.name] = message.value
            elif isinstance(message, BackendKeyData):
                pid, key = message.pid, message.key
            elif isinstance(message, NegotiateProtocolVersion | NoticeResponse):
                continue
            elif isinstance(message, ErrorResponse):
                writer.close()
                raise UpstreamError(message.message, message.sqlstate or ConnectionFailure.sqlstate)
            elif isinstance(message, ReadyForQuery):
                rest = b"".join(f.raw for f in frames[index + 1:]) + framer.take_pending()
                return UpstreamSession(reader, writer, pid, key, parameters, framer, rest)
            else:
                writer.close()
                raise UpstreamError(f"unexpected message during login: {type(message).__name__}",
                                    PgProtocolViolation.sqlstate)
        await writer.drain()


async def send_cancel(upstream: Upstream, pid: int, key: bytes) -> None:
    """Forward a cancel to the real backend (a fresh connection, as the protocol wants)."""
    try:
        reader, writer = await _open(upstream)
        writer.write(CancelRequest(pid, key).encode())
        await writer.drain()
        await reader.read(1)
        writer.close()
    except OSError:
        return
