"""Server->client messages: typed dataclasses, their encoders, and strict decoders.

DataRow is the hot message: the proxy counts rows by frame type (``frame.type == b"D"``) and
forwards ``frame.raw`` untouched; :func:`data_row_values` gives zero-copy column views when a
column must be looked at, and :func:`decode_backend` fully decodes (and copies) only on request.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from policyc.proxy.codec._wire import (
    INT32,
    UINT16,
    ProtocolViolation,
    Reader,
    cstr,
    message,
    pack,
    pack_formats,
    pack_oids,
    pack_value,
)
from policyc.proxy.codec.common import (
    COPY_DONE,
    CopyData,
    CopyDone,
    decode_copy_data,
    decode_copy_done,
)
from policyc.proxy.codec.framing import Frame
from policyc.proxy.codec.frontend import MAX_CANCEL_KEY, MIN_CANCEL_KEY

__all__ = ["COPY_DONE", "CopyData", "CopyDone"]  # re-exported for callers of this module

# Asynchronous messages the server may send at any time (handled before state transitions).
ASYNC_TYPES = frozenset({b"N", b"S", b"A"})

# ------------------------------------------------------------------------- authentication

AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SCM_CREDENTIAL = 6
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12
_OTHER_AUTH = frozenset(
    {AUTH_KERBEROS_V5, AUTH_SCM_CREDENTIAL, AUTH_GSS, AUTH_GSS_CONTINUE, AUTH_SSPI}
)


def _auth(code: int, data: bytes = b"") -> bytes:
    return message(b"R", INT32.pack(code) + data)


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_OK

    def encode(self) -> bytes:
        return AUTHENTICATION_OK


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_CLEARTEXT_PASSWORD

    def encode(self) -> bytes:
        return AUTHENTICATION_CLEARTEXT_PASSWORD


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_MD5_PASSWORD
    salt: bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise ProtocolViolation("cannot encode AuthenticationMD5Password: salt must be 4 bytes")
        return _auth(AUTH_MD5_PASSWORD, self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_SASL
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        what = "AuthenticationSASL"
        parts = []
        for mechanism in self.mechanisms:
            if not mechanism:
                raise ProtocolViolation(f"cannot encode {what}: empty mechanism name")
            parts.append(cstr(mechanism, what, "mechanism"))
        return _auth(AUTH_SASL, b"".join(parts) + b"\0")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_SASL_CONTINUE
    data: bytes

    def encode(self) -> bytes:
        return _auth(AUTH_SASL_CONTINUE, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = AUTH_SASL_FINAL
    data: bytes

    def encode(self) -> bytes:
        return _auth(AUTH_SASL_FINAL, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationOther:
    """Kerberos, SCM, GSS, SSPI: methods the proxy does not speak; kept so it can refuse them."""

    TYPE: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        if self.code not in _OTHER_AUTH:
            raise ProtocolViolation("cannot encode AuthenticationOther: unknown request code")
        return _auth(self.code, self.data)


AUTHENTICATION_OK = _auth(AUTH_OK)
AUTHENTICATION_CLEARTEXT_PASSWORD = _auth(AUTH_CLEARTEXT_PASSWORD)

Authentication = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationOther
)


# ---------------------------------------------------------------------- session parameters


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """'S': the server reports a run-time parameter (at startup and whenever it changes)."""

    TYPE: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode(self) -> bytes:
        what = "ParameterStatus"
        return message(b"S", cstr(self.name, what, "name") + cstr(self.value, what, "value"))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """'K': the backend pid and secret key a CancelRequest must quote (4..256 bytes of key)."""

    TYPE: ClassVar[bytes] = b"K"
    pid: int
    key: bytes

    def encode(self) -> bytes:
        if not MIN_CANCEL_KEY <= len(self.key) <= MAX_CANCEL_KEY:
            raise ProtocolViolation("cannot encode BackendKeyData: bad secret key length")
        return message(b"K", pack(INT32, self.pid, "BackendKeyData", "pid") + self.key)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """'Z': the server is idle; status 'I' idle, 'T' in a transaction, 'E' in a failed one."""

    TYPE: ClassVar[bytes] = b"Z"
    status: str = "I"

    def encode(self) -> bytes:
        try:
            return _READY[self.status]
        except KeyError:
            raise ProtocolViolation(
                "cannot encode ReadyForQuery: status must be 'I', 'T' or 'E'"
            ) from None


_READY = {s: message(b"Z", s.encode()) for s in ("I", "T", "E")}
READY_IDLE = _READY["I"]
READY_IN_TRANSACTION = _READY["T"]
READY_FAILED_TRANSACTION = _READY["E"]


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """'v': the newest protocol the server speaks, and the ``_pq_.`` options it does not know.

    The docs call the first field "newest minor version", but servers send the whole protocol
    code (``3 << 16 | minor``, e.g. 196608 for 3.0); it is kept as sent.
    """

    TYPE: ClassVar[bytes] = b"v"
    newest_version: int
    unsupported: tuple[str, ...] = ()

    @property
    def newest_minor(self) -> int:
        return self.newest_version & 0xFFFF

    def encode(self) -> bytes:
        what = "NegotiateProtocolVersion"
        return message(
            b"v",
            pack(INT32, self.newest_version, what, "version")
            + INT32.pack(len(self.unsupported))
            + b"".join(cstr(o, what, "option") for o in self.unsupported),
        )


# ------------------------------------------------------------------------ query results


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One result column of a RowDescription."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription:
    """'T': the columns of the rows that follow."""

    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        what = "RowDescription"
        parts = [pack(UINT16, len(self.fields), what, "field count")]
        for f in self.fields:
            if f.format not in (0, 1):
                raise ProtocolViolation(f"cannot encode {what}: unsupported format code")
            parts.append(cstr(f.name, what, "field name"))
            try:
                parts.append(
                    _FIELD.pack(
                        f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format
                    )
                )
            except struct.error:
                raise ProtocolViolation(
                    f"cannot encode {what}: field attribute out of range"
                ) from None
        return message(b"T", b"".join(parts))


@dataclass(frozen=True, slots=True)
class DataRow:
    """'D': one row; each column is its bytes in the column's format, or None for NULL."""

    TYPE: ClassVar[bytes] = b"D"
    columns: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return message(
            b"D",
            pack(UINT16, len(self.columns), "DataRow", "column count")
            + b"".join([pack_value(c) for c in self.columns]),
        )


def data_row_column_count(frame: Frame) -> int:
    """The column count of a DataRow frame, without looking at the columns."""
    return Reader(frame.raw, 5, "DataRow").uint16("column count")


def data_row_values(frame: Frame) -> list[memoryview | None]:
    """Zero-copy views of a DataRow frame's columns, checked against the frame's length."""
    r = Reader(frame.raw, 5, "DataRow")
    count = r.uint16("column count")
    if count * 4 > r.remaining:
        raise r.fail("column count exceeds message length")
    view = memoryview(frame.raw)
    out: list[memoryview | None] = []
    for _ in range(count):
        n = r.int32("column length")
        if n == -1:
            out.append(None)
            continue
        if n < 0:
            raise r.fail("negative column length")
        start = r.skip(n, "column value")
        out.append(view[start : start + n])
    r.done()
    return out


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """'C': a statement finished; ``tag`` is e.g. "SELECT 5", "INSERT 0 3", "CREATE TABLE"."""

    TYPE: ClassVar[bytes] = b"C"
    tag: str

    @property
    def rows(self) -> int | None:
        return command_rows(self.tag)

    def encode(self) -> bytes:
        return message(b"C", cstr(self.tag, "CommandComplete", "tag"))


_COUNTED_TAGS = frozenset({"SELECT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY"})


def command_rows(tag: str) -> int | None:
    """The row count a command tag reports ("INSERT 0 3" -> 3), or None if it reports none."""
    parts = tag.split(" ")
    last = parts[-1]
    if not (last.isascii() and last.isdigit()):
        return None
    if parts[0] == "INSERT" and len(parts) == 3:
        return int(last)
    if parts[0] in _COUNTED_TAGS and len(parts) == 2:
        return int(last)
    return None


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    """'I': the query string was empty."""

    TYPE: ClassVar[bytes] = b"I"

    def encode(self) -> bytes:
        return EMPTY_QUERY_RESPONSE


@dataclass(frozen=True, slots=True)
class ParseComplete:
    TYPE: ClassVar[bytes] = b"1"

    def encode(self) -> bytes:
        return PARSE_COMPLETE


@dataclass(frozen=True, slots=True)
class BindComplete:
    TYPE: ClassVar[bytes] = b"2"

    def encode(self) -> bytes:
        return BIND_COMPLETE


@dataclass(frozen=True, slots=True)
class CloseComplete:
    TYPE: ClassVar[bytes] = b"3"

    def encode(self) -> bytes:
        return CLOSE_COMPLETE


@dataclass(frozen=True, slots=True)
class NoData:
    """'n': the described statement or portal returns no rows."""

    TYPE: ClassVar[bytes] = b"n"

    def encode(self) -> bytes:
        return NO_DATA


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    """'s': Execute's row limit was reached before the portal finished."""

    TYPE: ClassVar[bytes] = b"s"

    def encode(self) -> bytes:
        return PORTAL_SUSPENDED


EMPTY_QUERY_RESPONSE = message(b"I", b"")
PARSE_COMPLETE = message(b"1", b"")
BIND_COMPLETE = message(b"2", b"")
CLOSE_COMPLETE = message(b"3", b"")
NO_DATA = message(b"n", b"")
PORTAL_SUSPENDED = message(b"s", b"")


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    """'t': the parameter type OIDs of a described statement."""

    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        return message(b"t", pack_oids(self.type_oids, "ParameterDescription", "type oids"))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """'V': result of a fast-path FunctionCall (None = NULL)."""

    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None

    def encode(self) -> bytes:
        return message(b"V", pack_value(self.value))


# ----------------------------------------------------------------------------------- COPY


def _copy_response(type_: bytes, what: str, fmt: int, columns: tuple[int, ...]) -> bytes:
    if fmt not in (0, 1):
        raise ProtocolViolation(f"cannot encode {what}: unsupported overall format")
    return message(type_, bytes((fmt,)) + pack_formats(columns, what, "column formats"))


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    """'G': the server is ready for COPY FROM STDIN data."""

    TYPE: ClassVar[bytes] = b"G"
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"G", "CopyInResponse", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    """'H': COPY TO STDOUT data follows."""

    TYPE: ClassVar[bytes] = b"H"
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"H", "CopyOutResponse", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    """'W': both-ways COPY (replication streaming)."""

    TYPE: ClassVar[bytes] = b"W"
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"W", "CopyBothResponse", self.format, self.column_formats)


# ------------------------------------------------------------------- errors and notices

# Field codes of ErrorResponse / NoticeResponse.
SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
SQLSTATE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"
POSITION = "P"


def _encode_fields(type_: bytes, what: str, fields: dict[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or not ("\x01" <= code <= "\x7f"):
            raise ProtocolViolation(f"cannot encode {what}: field code must be one ASCII character")
        parts.append(code.encode("ascii") + cstr(value, what, f"field {code!r}"))
    parts.append(b"\0")
    return message(type_, b"".join(parts))


class _Fields:
    """Accessors shared by ErrorResponse and NoticeResponse."""

    __slots__ = ()
    fields: dict[str, str]

    @property
    def severity(self) -> str:
        return self.fields.get(SEVERITY_NONLOCALIZED) or self.fields.get(SEVERITY, "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get(SQLSTATE, "")

    @property
    def message(self) -> str:
        return self.fields.get(MESSAGE, "")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    """'E': an error; ``fields`` maps one-letter field codes (S, V, C, M, D, H, P...) to text."""

    TYPE: ClassVar[bytes] = b"E"
    fields: dict[str, str]

    def encode(self) -> bytes:
        return _encode_fields(b"E", "ErrorResponse", self.fields)


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    """'N': a notice or warning, same layout as ErrorResponse."""

    TYPE: ClassVar[bytes] = b"N"
    fields: dict[str, str]

    def encode(self) -> bytes:
        return _encode_fields(b"N", "NoticeResponse", self.fields)


def _field_dict(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> dict[str, str]:
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ProtocolViolation("cannot encode error: SQLSTATE must be 5 ASCII letters or digits")
    fields = {
        SEVERITY: severity,
        SEVERITY_NONLOCALIZED: severity,
        SQLSTATE: sqlstate,
        MESSAGE: message,
    }
    if detail is not None:
        fields[DETAIL] = detail
    if hint is not None:
        fields[HINT] = hint
    return fields


def error_response(
    sqlstate: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """Encode an ErrorResponse the way the server builds one (S, V, C, M, then D and H)."""
    return ErrorResponse(_field_dict(severity, sqlstate, message, detail, hint)).encode()


def notice_response(
    message: str,
    sqlstate: str = "00000",
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """Encode a NoticeResponse (severity NOTICE, WARNING, INFO...)."""
    return NoticeResponse(_field_dict(severity, sqlstate, message, detail, hint)).encode()


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """'A': a NOTIFY delivered to this session."""

    TYPE: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str = ""

    def encode(self) -> bytes:
        what = "NotificationResponse"
        return message(
            b"A",
            pack(INT32, self.pid, what, "pid")
            + cstr(self.channel, what, "channel")
            + cstr(self.payload, what, "payload"),
        )


BackendMessage = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | NegotiateProtocolVersion
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | FunctionCallResponse
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
)


# --------------------------------------------------------------------------------- decoding


def _authentication(r: Reader) -> Authentication:
    code = r.int32("request code")
    if code == AUTH_OK:
        r.done()
        return AuthenticationOk()
    if code == AUTH_CLEARTEXT_PASSWORD:
        r.done()
        return AuthenticationCleartextPassword()
    if code == AUTH_MD5_PASSWORD:
        salt = r.take(4, "salt")
        r.done()
        return AuthenticationMD5Password(salt)
    if code == AUTH_SASL:
        mechanisms: list[str] = []
        while True:
            mechanism = r.cstring("mechanism")
            if not mechanism:
                break
            mechanisms.append(mechanism)
        r.done()
        return AuthenticationSASL(tuple(mechanisms))
    if code == AUTH_SASL_CONTINUE:
        return AuthenticationSASLContinue(r.rest())
    if code == AUTH_SASL_FINAL:
        return AuthenticationSASLFinal(r.rest())
    if code in _OTHER_AUTH:
        return AuthenticationOther(code, r.rest())
    raise r.fail(f"unknown authentication request code {code}")


def _parameter_status(r: Reader) -> ParameterStatus:
    name = r.cstring("name")
    value = r.cstring("value")
    r.done()
    return ParameterStatus(name, value)


def _backend_key_data(r: Reader) -> BackendKeyData:
    pid = r.int32("pid")
    key = r.rest()
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise r.fail(f"secret key of {len(key)} bytes")
    return BackendKeyData(pid, key)


def _ready_for_query(r: Reader) -> ReadyForQuery:
    status = r.byte("status")
    r.done()
    if status not in (0x49, 0x54, 0x45):  # I T E
        raise r.fail("status must be 'I', 'T' or 'E'")
    return ReadyForQuery(chr(status))


def _negotiate(r: Reader) -> NegotiateProtocolVersion:
    version = r.int32("version")
    count = r.int32("option count")
    if count < 0 or count > r.remaining:
        raise r.fail("option count exceeds message length")
    options = tuple([r.cstring("option") for _ in range(count)])
    r.done()
    return NegotiateProtocolVersion(version, options)


def _row_description(r: Reader) -> RowDescription:
    count = r.uint16("field count")
    if count * 19 > r.remaining:  # shortest field: NUL name + 18 bytes
        raise r.fail("field count exceeds message length")
    fields = []
    for _ in range(count):
        name = r.cstring("field name")
        start = r.skip(18, "field attributes")
        table, column, type_oid, size, modifier, fmt = _FIELD.unpack_from(r.buf, start)
        if fmt not in (0, 1):
            raise r.fail("unsupported format code")
        fields.append(FieldDescription(name, table, column, type_oid, size, modifier, fmt))
    r.done()
    return RowDescription(tuple(fields))


def _data_row(r: Reader) -> DataRow:
    count = r.uint16("column count")
    if count * 4 > r.remaining:
        raise r.fail("column count exceeds message length")
    columns = tuple([r.value("column value") for _ in range(count)])
    r.done()
    return DataRow(columns)


def _command_complete(r: Reader) -> CommandComplete:
    tag = r.cstring("tag")
    r.done()
    return CommandComplete(tag)


def _empty(
    cls: type[EmptyQueryResponse]
    | type[ParseComplete]
    | type[BindComplete]
    | type[CloseComplete]
    | type[NoData]
    | type[PortalSuspended],
) -> Callable[[Reader], BackendMessage]:
    def decode(r: Reader) -> BackendMessage:
        r.done()
        return cls()

    return decode


def _parameter_description(r: Reader) -> ParameterDescription:
    oids = r.oids("type oids")
    r.done()
    return ParameterDescription(oids)


def _function_call_response(r: Reader) -> FunctionCallResponse:
    value = r.value("result value")
    r.done()
    return FunctionCallResponse(value)


def _copy(
    cls: type[CopyInResponse] | type[CopyOutResponse] | type[CopyBothResponse],
) -> Callable[[Reader], BackendMessage]:
    def decode(r: Reader) -> BackendMessage:
        fmt = r.byte("format")
        if fmt not in (0, 1):
            raise r.fail("unsupported overall format")
        columns = r.formats("column formats")
        r.done()
        return cls(fmt, columns)

    return decode


def _fields(r: Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = r.byte("field code")
        if code == 0:
            break
        if code > 0x7F:
            raise r.fail("field code is not ASCII")
        key = chr(code)
        if key in fields:
            raise r.fail(f"duplicate field {key!r}")
        fields[key] = r.cstring(f"field {key!r}")
    r.done()
    return fields


def _error(r: Reader) -> ErrorResponse:
    return ErrorResponse(_fields(r))


def _notice(r: Reader) -> NoticeResponse:
    return NoticeResponse(_fields(r))


def _notification(r: Reader) -> NotificationResponse:
    pid = r.int32("pid")
    channel = r.cstring("channel")
    payload = r.cstring("payload")
    r.done()
    return NotificationResponse(pid, channel, payload)


_DECODERS: dict[bytes, tuple[str, Callable[[Reader], BackendMessage]]] = {
    b"R": ("Authentication", _authentication),
    b"S": ("ParameterStatus", _parameter_status),
    b"K": ("BackendKeyData", _backend_key_data),
    b"Z": ("ReadyForQuery", _ready_for_query),
    b"v": ("NegotiateProtocolVersion", _negotiate),
    b"T": ("RowDescription", _row_description),
    b"D": ("DataRow", _data_row),
    b"C": ("CommandComplete", _command_complete),
    b"I": ("EmptyQueryResponse", _empty(EmptyQueryResponse)),
    b"1": ("ParseComplete", _empty(ParseComplete)),
    b"2": ("BindComplete", _empty(BindComplete)),
    b"3": ("CloseComplete", _empty(CloseComplete)),
    b"n": ("NoData", _empty(NoData)),
    b"s": ("PortalSuspended", _empty(PortalSuspended)),
    b"t": ("ParameterDescription", _parameter_description),
    b"V": ("FunctionCallResponse", _function_call_response),
    b"G": ("CopyInResponse", _copy(CopyInResponse)),
    b"H": ("CopyOutResponse", _copy(CopyOutResponse)),
    b"W": ("CopyBothResponse", _copy(CopyBothResponse)),
    b"d": ("CopyData", decode_copy_data),
    b"c": ("CopyDone", decode_copy_done),
    b"E": ("ErrorResponse", _error),
    b"N": ("NoticeResponse", _notice),
    b"A": ("NotificationResponse", _notification),
}


def decode_backend(frame: Frame) -> BackendMessage:
    """Decode one server message strictly; anything malformed raises :class:`ProtocolViolation`."""
    entry = _DECODERS.get(frame.type)
    if entry is None:
        raise ProtocolViolation(f"invalid backend message type {frame.type!r}")
    what, decode = entry
    return decode(Reader(frame.raw, 5, what))
