"""Client->server messages: typed dataclasses, their encoders, and strict decoders.

Every message class has ``encode() -> bytes``; :func:`decode_frontend` turns a :class:`Frame`
from :class:`FrontendFramer` into one of them.  'p' means different things depending on the
authentication exchange (password, SASLInitialResponse, SASLResponse), so it decodes to a raw
:class:`PasswordMessage` and the session, which knows the exchange, calls
:func:`decode_password`, :func:`decode_sasl_initial_response` or :func:`decode_sasl_response`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from policyc.errors import FeatureNotSupported
from policyc.proxy.codec._wire import (
    INT16,
    INT32,
    UINT16,
    UINT32,
    ProtocolViolation,
    Reader,
    cstr,
    message,
    pack,
    pack_formats,
    pack_oids,
    pack_value,
)
from policyc.proxy.codec.common import CopyData, CopyDone, decode_copy_data, decode_copy_done
from policyc.proxy.codec.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    Frame,
)

MIN_CANCEL_KEY = 4  # protocol 3.0 keys are exactly 4 bytes
MAX_CANCEL_KEY = 256  # protocol 3.2 allows up to 256


def _check_kind(kind: str, what: str) -> None:
    if kind not in ("S", "P"):
        raise ProtocolViolation(f"cannot encode {what}: kind must be 'S' or 'P'")


def _check_key(key: bytes, what: str) -> None:
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ProtocolViolation(
            f"invalid {what}: secret key of {len(key)} bytes "
            f"(allowed {MIN_CANCEL_KEY} to {MAX_CANCEL_KEY})"
        )


# ------------------------------------------------------------------------ startup packets


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first real message: protocol version and connection parameters (user, database...)."""

    params: dict[str, str]
    protocol: int = PROTOCOL_3_0

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def encode(self) -> bytes:
        what = "StartupMessage"
        parts = [pack(INT32, self.protocol, what, "protocol")]
        for key, value in self.params.items():
            if not key:
                raise ProtocolViolation(f"cannot encode {what}: empty parameter name")
            parts.append(cstr(key, what, "parameter name"))
            parts.append(cstr(value, what, f"parameter {key!r}"))
        parts.append(b"\0")
        body = b"".join(parts)
        return INT32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """Asks for TLS; answered by a single unframed byte."""

    def encode(self) -> bytes:
        return SSL_REQUEST


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """Asks for GSSAPI encryption; the proxy refuses it with 'N'."""

    def encode(self) -> bytes:
        return GSSENC_REQUEST


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query of backend ``pid`` holding ``key``."""

    pid: int
    key: bytes

    def encode(self) -> bytes:
        _check_key(self.key, "CancelRequest")
        body = (
            INT32.pack(CANCEL_REQUEST_CODE)
            + pack(INT32, self.pid, "CancelRequest", "pid")
            + self.key
        )
        return INT32.pack(len(body) + 4) + body


SSL_REQUEST = INT32.pack(8) + INT32.pack(SSL_REQUEST_CODE)
GSSENC_REQUEST = INT32.pack(8) + INT32.pack(GSSENC_REQUEST_CODE)


def decode_startup(frame: Frame) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """Decode an untyped startup packet (the framer has already checked its length)."""
    r = Reader(frame.raw, 4, "startup packet")
    code = r.int32("protocol")
    if code == SSL_REQUEST_CODE:
        r.what = "SSLRequest"
        r.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.what = "GSSENCRequest"
        r.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        pid = r.int32("pid")
        key = r.rest()
        _check_key(key, "CancelRequest message")
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.x",
            sqlstate=FeatureNotSupported.sqlstate,
        )
    r.what = "StartupMessage"
    params: dict[str, str] = {}
    while True:
        name = r.cstring("parameter name")
        if not name:
            break
        if name in params:
            # Two values for one key could mean different things to us and to the server.
            raise r.fail(f"duplicate parameter {name!r}")
        params[name] = r.cstring(f"parameter {name!r}")
    r.done()
    return StartupMessage(params, code)


# ---------------------------------------------------------------------- simple query & auth


@dataclass(frozen=True, slots=True)
class Query:
    """'Q': simple query protocol; ``sql`` may hold several statements."""

    TYPE: ClassVar[bytes] = b"Q"
    sql: str

    def encode(self) -> bytes:
        return message(b"Q", cstr(self.sql, "Query", "sql"))


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': a password or SASL message, kept raw until the session knows which it is."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def encode(self) -> bytes:
        return message(b"p", self.data)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """'p' during SASL: chosen mechanism and the client-first message (None = absent)."""

    TYPE: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        return message(
            b"p", cstr(self.mechanism, "SASLInitialResponse", "mechanism") + pack_value(self.data)
        )


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """'p' during SASL after the first round: raw mechanism data."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def encode(self) -> bytes:
        return message(b"p", self.data)


def password_message(password: str) -> bytes:
    """Encode a cleartext (or "md5..." hashed) password reply."""
    return message(b"p", cstr(password, "PasswordMessage", "password"))


def decode_password(msg: PasswordMessage) -> str:
    """Read a 'p' as a cleartext/MD5 password: one NUL-terminated string and nothing else."""
    r = Reader(msg.data, 0, "PasswordMessage")
    password = r.cstring("password")
    r.done()
    return password


def decode_sasl_initial_response(msg: PasswordMessage) -> SASLInitialResponse:
    r = Reader(msg.data, 0, "SASLInitialResponse")
    mechanism = r.cstring("mechanism")
    data = r.value("initial response")
    r.done()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(msg: PasswordMessage) -> SASLResponse:
    return SASLResponse(msg.data)


# ------------------------------------------------------------------- extended query protocol


@dataclass(frozen=True, slots=True)
class Parse:
    """'P': prepare ``sql`` as statement ``name`` ("" = unnamed); type OIDs 0 = unspecified."""

    TYPE: ClassVar[bytes] = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        what = "Parse"
        return message(
            b"P",
            cstr(self.name, what, "statement name")
            + cstr(self.sql, what, "sql")
            + pack_oids(self.param_types, what, "parameter types"),
        )


@dataclass(frozen=True, slots=True)
class Bind:
    """'B': bind parameter values to a prepared statement, creating a portal."""

    TYPE: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def param_format(self, index: int) -> int:
        """The format code (0 text, 1 binary) of parameter ``index``: none, one for all, or each."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]

    def encode(self) -> bytes:
        what = "Bind"
        _check_format_count(len(self.param_formats), len(self.params))
        return message(
            b"B",
            b"".join(
                [
                    cstr(self.portal, what, "portal name"),
                    cstr(self.statement, what, "statement name"),
                    pack_formats(self.param_formats, what, "parameter formats"),
                    pack(UINT16, len(self.params), what, "parameter count"),
                    *[pack_value(p) for p in self.params],
                    pack_formats(self.result_formats, what, "result formats"),
                ]
            ),
        )


def _check_format_count(formats: int, params: int) -> None:
    if formats > 1 and formats != params:
        raise ProtocolViolation(
            f"invalid Bind message: {formats} parameter formats but {params} parameters"
        )


@dataclass(frozen=True, slots=True)
class Describe:
    """'D': describe a prepared statement (kind 'S') or portal (kind 'P')."""

    TYPE: ClassVar[bytes] = b"D"
    kind: str
    name: str = ""

    def encode(self) -> bytes:
        _check_kind(self.kind, "Describe")
        return message(b"D", self.kind.encode() + cstr(self.name, "Describe", "name"))


@dataclass(frozen=True, slots=True)
class Execute:
    """'E': run a portal, returning at most ``max_rows`` rows (0 = all)."""

    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        what = "Execute"
        return message(
            b"E", cstr(self.portal, what, "portal name") + pack(INT32, self.max_rows, what, "rows")
        )


@dataclass(frozen=True, slots=True)
class Close:
    """'C': close a prepared statement (kind 'S') or portal (kind 'P')."""

    TYPE: ClassVar[bytes] = b"C"
    kind: str
    name: str = ""

    def encode(self) -> bytes:
        _check_kind(self.kind, "Close")
        return message(b"C", self.kind.encode() + cstr(self.name, "Close", "name"))


@dataclass(frozen=True, slots=True)
class Sync:
    """'S': end of an extended-query batch; the server answers ReadyForQuery."""

    TYPE: ClassVar[bytes] = b"S"

    def encode(self) -> bytes:
        return SYNC


@dataclass(frozen=True, slots=True)
class Flush:
    """'H': ask the server to send what it has buffered."""

    TYPE: ClassVar[bytes] = b"H"

    def encode(self) -> bytes:
        return FLUSH


@dataclass(frozen=True, slots=True)
class Terminate:
    """'X': the client is closing the connection."""

    TYPE: ClassVar[bytes] = b"X"

    def encode(self) -> bytes:
        return TERMINATE


SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class CopyFail:
    """'f': the client aborts COPY FROM STDIN."""

    TYPE: ClassVar[bytes] = b"f"
    message: str

    def encode(self) -> bytes:
        return message(b"f", cstr(self.message, "CopyFail", "message"))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """'F': the legacy fast-path function call; decoded only so it can be refused knowingly."""

    TYPE: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        what = "FunctionCall"
        if self.result_format not in (0, 1):
            raise ProtocolViolation(f"cannot encode {what}: unsupported result format")
        return message(
            b"F",
            b"".join(
                [
                    pack(UINT32, self.function_oid, what, "function oid"),
                    pack_formats(self.arg_formats, what, "argument formats"),
                    pack(UINT16, len(self.args), what, "argument count"),
                    *[pack_value(a) for a in self.args],
                    INT16.pack(self.result_format),
                ]
            ),
        )


FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | PasswordMessage
    | FunctionCall
)


# --------------------------------------------------------------------------------- decoding


def _query(r: Reader) -> Query:
    sql = r.cstring("sql")
    r.done()
    return Query(sql)


def _parse(r: Reader) -> Parse:
    name = r.cstring("statement name")
    sql = r.cstring("sql")
    types = r.oids("parameter types")
    r.done()
    return Parse(name, sql, types)


def _bind(r: Reader) -> Bind:
    portal = r.cstring("portal name")
    statement = r.cstring("statement name")
    formats = r.formats("parameter formats")
    count = r.uint16("parameter count")
    if count * 4 > r.remaining:
        raise r.fail("parameter count exceeds message length")
    _check_format_count(len(formats), count)
    params = tuple([r.value("parameter value") for _ in range(count)])
    results = r.formats("result formats")
    r.done()
    return Bind(portal, statement, formats, params, results)


def _kind_and_name(r: Reader) -> tuple[str, str]:
    kind = r.byte("kind")
    if kind not in (0x50, 0x53):  # 'P', 'S'
        raise r.fail("kind must be 'S' or 'P'")
    name = r.cstring("name")
    r.done()
    return chr(kind), name


def _describe(r: Reader) -> Describe:
    return Describe(*_kind_and_name(r))


def _close(r: Reader) -> Close:
    return Close(*_kind_and_name(r))


def _execute(r: Reader) -> Execute:
    portal = r.cstring("portal name")
    rows = r.int32("max rows")
    r.done()
    return Execute(portal, rows)


def _empty(cls: type[Sync] | type[Flush] | type[Terminate]) -> Callable[[Reader], FrontendMessage]:
    def decode(r: Reader) -> FrontendMessage:
        r.done()
        return cls()

    return decode


def _copy_fail(r: Reader) -> CopyFail:
    text = r.cstring("message")
    r.done()
    return CopyFail(text)


def _password(r: Reader) -> PasswordMessage:
    return PasswordMessage(r.rest())


def _function_call(r: Reader) -> FunctionCall:
    oid = r.uint32("function oid")
    formats = r.formats("argument formats")
    count = r.uint16("argument count")
    if count * 4 > r.remaining:
        raise r.fail("argument count exceeds message length")
    args = tuple([r.value("argument value") for _ in range(count)])
    result = r.int16("result format")
    if result not in (0, 1):
        raise r.fail("unsupported result format")
    r.done()
    return FunctionCall(oid, formats, args, result)


_DECODERS: dict[bytes, tuple[str, Callable[[Reader], FrontendMessage]]] = {
    b"Q": ("Query", _query),
    b"P": ("Parse", _parse),
    b"B": ("Bind", _bind),
    b"D": ("Describe", _describe),
    b"E": ("Execute", _execute),
    b"C": ("Close", _close),
    b"S": ("Sync", _empty(Sync)),
    b"H": ("Flush", _empty(Flush)),
    b"X": ("Terminate", _empty(Terminate)),
    b"d": ("CopyData", decode_copy_data),
    b"c": ("CopyDone", decode_copy_done),
    b"f": ("CopyFail", _copy_fail),
    b"p": ("PasswordMessage", _password),
    b"F": ("FunctionCall", _function_call),
}


def decode_frontend(frame: Frame) -> FrontendMessage:
    """Decode one client message strictly; anything malformed raises :class:`ProtocolViolation`."""
    if not frame.type:
        return decode_startup(frame)
    entry = _DECODERS.get(frame.type)
    if entry is None:
        raise ProtocolViolation(f"invalid frontend message type {frame.type!r}")
    what, decode = entry
    return decode(Reader(frame.raw, 5, what))
