"""Unit tests of the protocol-3 codec against hand-built bytes from the PostgreSQL docs
("Message Formats"), plus a live check that a real server accepts what we encode and that the
strict decoders accept everything it sends (SCRAM, MD5, extended protocol, COPY, notices...)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from policyc.errors import PolicycError
from policyc.proxy.codec import (
    AUTHENTICATION_OK,
    READY_IDLE,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendFramer,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    Frame,
    FrontendFramer,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    ProtocolViolation,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    ScramClient,
    ScramError,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    choose_mechanism,
    command_rows,
    data_row_column_count,
    data_row_values,
    decode_backend,
    decode_frontend,
    decode_password,
    decode_sasl_initial_response,
    encryption_response,
    error_response,
    md5_password,
    notice_response,
    parse_encryption_response,
    password_message,
    saslprep,
)


def typed(type_: bytes, body: bytes) -> bytes:
    return type_ + struct.pack("!i", len(body) + 4) + body


def i16(v: int) -> bytes:
    return struct.pack("!h", v)


def i32(v: int) -> bytes:
    return struct.pack("!i", v)


def one_frontend(data: bytes, *, startup: bool = False) -> object:
    frames = FrontendFramer(startup=startup).feed(data)
    assert len(frames) == 1
    assert frames[0].raw == data
    return decode_frontend(frames[0])


def one_backend(data: bytes) -> BackendMessage:
    frames = BackendFramer().feed(data)
    assert len(frames) == 1
    assert frames[0].raw == data
    return decode_backend(frames[0])


# ------------------------------------------------------------------- frontend, hand-built

STARTUP = i32(3 << 16) + b"user\0alice\0database\0clinic\0\0"
FRONTEND_CASES: list[tuple[str, bytes, object]] = [
    ("query", typed(b"Q", b"select 1\0"), Query("select 1")),
    (
        "parse",
        typed(b"P", b"s1\0select $1\0" + i16(1) + i32(23)),
        Parse("s1", "select $1", (23,)),
    ),
    (
        "bind",
        typed(
            b"B",
            b"\0s1\0" + i16(1) + i16(0) + i16(2) + i32(1) + b"5" + i32(-1) + i16(1) + i16(1),
        ),
        Bind("", "s1", (0,), (b"5", None), (1,)),
    ),
    ("describe-statement", typed(b"D", b"Ss1\0"), Describe("S", "s1")),
    ("describe-portal", typed(b"D", b"P\0"), Describe("P", "")),
    ("execute", typed(b"E", b"\0" + i32(0)), Execute("", 0)),
    ("execute-limit", typed(b"E", b"p1\0" + i32(50)), Execute("p1", 50)),
    ("close", typed(b"C", b"Sstmt\0"), Close("S", "stmt")),
    ("sync", b"S\0\0\0\x04", Sync()),
    ("flush", b"H\0\0\0\x04", Flush()),
    ("terminate", b"X\0\0\0\x04", Terminate()),
    ("copy-data", typed(b"d", b"1\tfoo\n"), CopyData(b"1\tfoo\n")),
    ("copy-done", b"c\0\0\0\x04", CopyDone()),
    ("copy-fail", typed(b"f", b"aborted\0"), CopyFail("aborted")),
    ("password", typed(b"p", b"secret\0"), PasswordMessage(b"secret\0")),
    (
        "function-call",
        typed(b"F", i32(1598) + i16(1) + i16(1) + i16(1) + i32(2) + b"ab" + i16(0)),
        FunctionCall(1598, (1,), (b"ab",), 0),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in FRONTEND_CASES], ids=[c[0] for c in FRONTEND_CASES]
)
def test_frontend_decode_and_encode(data: bytes, expected: object) -> None:
    assert one_frontend(data) == expected
    assert expected.encode() == data  # type: ignore[attr-defined]


def test_startup_message() -> None:
    data = i32(len(STARTUP) + 4) + STARTUP
    msg = one_frontend(data, startup=True)
    assert msg == StartupMessage({"user": "alice", "database": "clinic"})
    assert isinstance(msg, StartupMessage)
    assert (msg.major, msg.minor) == (3, 0)
    assert msg.encode() == data


def test_ssl_gssenc_cancel_requests() -> None:
    assert bytes.fromhex("0000000804d2162f") == SSLRequest().encode()
    assert one_frontend(bytes.fromhex("0000000804d2162f"), startup=True) == SSLRequest()
    assert one_frontend(bytes.fromhex("0000000804d21630"), startup=True) == GSSENCRequest()
    cancel = bytes.fromhex("0000001004d2162e") + i32(4242) + b"\x01\x02\x03\x04"
    assert one_frontend(cancel, startup=True) == CancelRequest(4242, b"\x01\x02\x03\x04")
    assert CancelRequest(4242, b"\x01\x02\x03\x04").encode() == cancel
    # protocol 3.2 keys are longer
    long_key = bytes(range(32))
    assert one_frontend(CancelRequest(7, long_key).encode(), startup=True) == CancelRequest(
        7, long_key
    )


def test_sasl_initial_response_and_password() -> None:
    data = typed(b"p", b"SCRAM-SHA-256\0" + i32(5) + b"n,,xy")
    msg = one_frontend(data)
    assert isinstance(msg, PasswordMessage)
    assert decode_sasl_initial_response(msg) == SASLInitialResponse("SCRAM-SHA-256", b"n,,xy")
    assert SASLInitialResponse("SCRAM-SHA-256", b"n,,xy").encode() == data
    absent = SASLInitialResponse("SCRAM-SHA-256", None)
    decoded = one_frontend(absent.encode())
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_initial_response(decoded) == absent
    assert decode_password(PasswordMessage(b"hunter2\0")) == "hunter2"
    assert password_message("hunter2") == typed(b"p", b"hunter2\0")
    with pytest.raises(ProtocolViolation, match="trailing"):
        decode_password(PasswordMessage(b"a\0b"))
    with pytest.raises(ProtocolViolation, match="NUL"):
        decode_password(PasswordMessage(b"abc"))


def test_bind_param_format_resolution() -> None:
    assert Bind("", "", (), (b"1", b"2")).param_format(1) == 0
    assert Bind("", "", (1,), (b"1", b"2")).param_format(1) == 1
    assert Bind("", "", (0, 1), (b"1", b"2")).param_format(1) == 1


# -------------------------------------------------------------------- backend, hand-built

FIELD = b"id\0" + struct.pack("!IhIhih", 16384, 1, 23, 4, -1, 0)
BACKEND_CASES: list[tuple[str, bytes, BackendMessage]] = [
    ("auth-ok", typed(b"R", i32(0)), AuthenticationOk()),
    ("auth-cleartext", typed(b"R", i32(3)), AuthenticationCleartextPassword()),
    ("auth-md5", typed(b"R", i32(5) + b"salt"), AuthenticationMD5Password(b"salt")),
    (
        "auth-sasl",
        typed(b"R", i32(10) + b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0"),
        AuthenticationSASL(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
    ),
    (
        "auth-sasl-continue",
        typed(b"R", i32(11) + b"r=x,s=y,i=1"),
        AuthenticationSASLContinue(b"r=x,s=y,i=1"),
    ),
    ("auth-sasl-final", typed(b"R", i32(12) + b"v=abc"), AuthenticationSASLFinal(b"v=abc")),
    ("auth-gss", typed(b"R", i32(7)), AuthenticationOther(7)),
    ("parameter-status", typed(b"S", b"TimeZone\0UTC\0"), ParameterStatus("TimeZone", "UTC")),
    (
        "backend-key",
        typed(b"K", i32(99) + b"\x00\x01\x02\x03"),
        BackendKeyData(99, b"\x00\x01\x02\x03"),
    ),
    ("ready-idle", b"Z\0\0\0\x05I", ReadyForQuery("I")),
    ("ready-failed", b"Z\0\0\0\x05E", ReadyForQuery("E")),
    (
        "negotiate",
        typed(b"v", i32(196608) + i32(1) + b"_pq_.x\0"),
        NegotiateProtocolVersion(196608, ("_pq_.x",)),
    ),
    (
        "row-description",
        typed(b"T", i16(1) + FIELD),
        RowDescription((FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
    ),
    (
        "data-row",
        typed(b"D", i16(3) + i32(1) + b"7" + i32(-1) + i32(0)),
        DataRow((b"7", None, b"")),
    ),
    ("command-complete", typed(b"C", b"INSERT 0 3\0"), CommandComplete("INSERT 0 3")),
    ("empty-query", b"I\0\0\0\x04", EmptyQueryResponse()),
    ("parse-complete", b"1\0\0\0\x04", ParseComplete()),
    ("bind-complete", b"2\0\0\0\x04", BindComplete()),
    ("close-complete", b"3\0\0\0\x04", CloseComplete()),
    ("no-data", b"n\0\0\0\x04", NoData()),
    ("portal-suspended", b"s\0\0\0\x04", PortalSuspended()),
    (
        "parameter-description",
        typed(b"t", i16(2) + i32(23) + struct.pack("!I", 4294967295)),
        ParameterDescription((23, 4294967295)),
    ),
    ("function-call-response", typed(b"V", i32(-1)), FunctionCallResponse(None)),
    ("copy-in", typed(b"G", b"\0" + i16(2) + i16(0) + i16(0)), CopyInResponse(0, (0, 0))),
    ("copy-out", typed(b"H", b"\x01" + i16(1) + i16(1)), CopyOutResponse(1, (1,))),
    ("copy-both", typed(b"W", b"\0" + i16(0)), CopyBothResponse(0, ())),
    ("copy-data", typed(b"d", b"row\n"), CopyData(b"row\n")),
    ("copy-done", b"c\0\0\0\x04", CopyDone()),
    (
        "error",
        typed(b"E", b"SERROR\0VERROR\0C42501\0Mpermission denied\0\0"),
        ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42501", "M": "permission denied"}),
    ),
    (
        "notice",
        typed(b"N", b"SNOTICE\0C00000\0Mhi\0\0"),
        NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hi"}),
    ),
    (
        "notification",
        typed(b"A", i32(12) + b"chan\0payload\0"),
        NotificationResponse(12, "chan", "payload"),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in BACKEND_CASES], ids=[c[0] for c in BACKEND_CASES]
)
def test_backend_decode_and_encode(data: bytes, expected: BackendMessage) -> None:
    assert one_backend(data) == expected
    assert expected.encode() == data


def test_error_response_helper_matches_server_layout() -> None:
    data = error_response("42501", "permission denied for table patients", detail="d", hint="h")
    assert data == typed(
        b"E",
        b"SERROR\0VERROR\0C42501\0Mpermission denied for table patients\0Dd\0Hh\0\0",
    )
    msg = one_backend(data)
    assert isinstance(msg, ErrorResponse)
    assert (msg.severity, msg.sqlstate, msg.message) == (
        "ERROR",
        "42501",
        "permission denied for table patients",
    )
    notice = one_backend(notice_response("held", severity="WARNING"))
    assert isinstance(notice, NoticeResponse)
    assert (notice.severity, notice.sqlstate) == ("WARNING", "00000")
    with pytest.raises(ProtocolViolation):
        error_response("4250", "bad code")


def test_prebuilt_constants() -> None:
    assert AUTHENTICATION_OK == AuthenticationOk().encode() == typed(b"R", i32(0))
    assert READY_IDLE == b"Z\0\0\0\x05I"
    assert encryption_response(accept=True) == b"S"
    assert encryption_response(accept=False) == b"N"
    assert encryption_response(accept=True, gss=True) == b"G"
    assert parse_encryption_response(b"S") is True
    assert parse_encryption_response(b"N") is False
    for bad in (b"E", b"", b"SS", b"G"):
        with pytest.raises(ProtocolViolation):
            parse_encryption_response(bad)


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5),
        ("INSERT 0 3", 3),
        ("UPDATE 2", 2),
        ("DELETE 0", 0),
        ("COPY 7", 7),
        ("MERGE 4", 4),
        ("FETCH 10", 10),
        ("MOVE 1", 1),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("INSERT 3", None),
        ("SELECT", None),
        ("SELECT x", None),
        ("", None),
    ],
)
def test_command_rows(tag: str, rows: int | None) -> None:
    assert command_rows(tag) == rows
    assert CommandComplete(tag).rows == rows


def test_data_row_lazy_views() -> None:
    data = DataRow((b"abc", None, b"")).encode()
    frame = BackendFramer().feed(data)[0]
    assert data_row_column_count(frame) == 3
    views = data_row_values(frame)
    assert [None if v is None else bytes(v) for v in views] == [b"abc", None, b""]
    assert bytes(frame.payload) == data[5:]
    bad = Frame(b"D", typed(b"D", i16(2) + i32(1) + b"a"))
    with pytest.raises(ProtocolViolation):
        data_row_values(bad)


# ------------------------------------------------------------------------------- framing


def test_framer_any_chunking_gives_same_frames() -> None:
    stream = (
        i32(len(STARTUP) + 4)
        + STARTUP
        + Query("select 1").encode()
        + Parse("", "select $1", (23,)).encode()
        + Bind("", "", (), (b"1",), ()).encode()
        + Execute().encode()
        + Sync().encode()
    )
    whole = FrontendFramer().feed(stream)
    assert [f.type for f in whole] == [b"", b"Q", b"P", b"B", b"E", b"S"]
    for size in (1, 2, 3, 7, 64):
        framer = FrontendFramer()
        got: list[Frame] = []
        for i in range(0, len(stream), size):
            got += framer.feed(stream[i : i + size])
        assert got == whole
        assert framer.pending == 0
        assert not framer.in_startup


def test_framer_accepts_bytearray_and_memoryview_chunks() -> None:
    data = Query("select 1").encode() * 3
    assert len(BackendFramer().feed(bytearray(data))) == 3
    assert len(BackendFramer().feed(memoryview(data)[:20])) == 1


def test_frontend_framer_stops_after_ssl_request() -> None:
    framer = FrontendFramer()
    frames = framer.feed(SSLRequest().encode() + b"\x16\x03\x01 tls hello")
    assert frames == [Frame(b"", SSLRequest().encode())]
    assert framer.in_startup
    assert framer.pending == len(b"\x16\x03\x01 tls hello")  # caller must refuse this
    assert framer.take_pending() == b"\x16\x03\x01 tls hello"
    startup = StartupMessage({"user": "u"}).encode()
    assert framer.feed(startup) == [Frame(b"", startup)]
    assert not framer.in_startup


def test_frontend_framer_explicit_typed_mode() -> None:
    framer = FrontendFramer(startup=True)
    framer.set_typed()
    assert framer.feed(Sync().encode()) == [Frame(b"S", Sync().encode())]


@pytest.mark.parametrize(
    ("framer", "data", "message"),
    [
        (BackendFramer(), b"Z\0\0\0\x03", "invalid message length 3"),
        (BackendFramer(), b"Z\xff\xff\xff\xff", "invalid message length -1"),
        (BackendFramer(max_length=100), b"D\0\0\0\x65", "invalid message length 101"),
        (FrontendFramer(startup=False), b"Q\0\0\0\x02", "invalid message length 2"),
        (FrontendFramer(64 * 2**20, startup=False), b"Q\x04\0\0\x01", "allowed 4 to 67108864"),
        (FrontendFramer(startup=False), b"S\0\0\x27\x11", "for message type b'S'"),
        (FrontendFramer(startup=False), b"p\0\x01\0\x04", "for message type b'p'"),
        (FrontendFramer(), b"\0\0\0\x07", "invalid length of startup packet"),
        (FrontendFramer(), b"\0\0\x27\x15", "invalid length of startup packet"),
        (FrontendFramer(), b"\x80\0\0\0", "invalid length of startup packet"),
    ],
)
def test_framer_rejects_bad_lengths_from_the_header(
    framer: FrontendFramer | BackendFramer, data: bytes, message: str
) -> None:
    # Only the header is fed: the limit applies before any body is buffered.
    with pytest.raises(ProtocolViolation, match=message) as info:
        framer.feed(data)
    assert info.value.sqlstate == "08P01"
    assert isinstance(info.value, PolicycError)
    with pytest.raises(ProtocolViolation, match="already failed"):
        framer.feed(b"")


def test_small_types_within_limit_are_fine() -> None:
    big_query = Query("x" * 20_000).encode()
    assert len(FrontendFramer(startup=False).feed(big_query)) == 1


# ----------------------------------------------------------------------- strict decoding

MALFORMED_FRONTEND: list[tuple[str, bytes, str]] = [
    ("query-no-nul", typed(b"Q", b"select 1"), "not NUL-terminated"),
    ("query-trailing", typed(b"Q", b"select 1\0x"), "1 trailing bytes"),
    ("query-bad-utf8", typed(b"Q", b"select '\xff'\0"), "not valid UTF-8"),
    ("parse-count-overflow", typed(b"P", b"\0select 1\0" + i16(5) + i32(0)), "exceeds"),
    (
        "bind-negative-length",
        typed(b"B", b"\0\0" + i16(0) + i16(1) + i32(-2) + i16(0)),
        "negative length",
    ),
    ("bind-value-past-end", typed(b"B", b"\0\0" + i16(0) + i16(1) + i32(100) + b"ab"), "truncated"),
    ("bind-count-overflow", typed(b"B", b"\0\0" + i16(0) + i16(9) + i32(-1)), "exceeds"),
    (
        "bind-format-mismatch",
        typed(b"B", b"\0\0" + i16(2) + i16(0) + i16(0) + i16(3) + i32(-1) * 3 + i16(0)),
        "2 parameter formats but 3 parameters",
    ),
    (
        "bind-format-code",
        typed(b"B", b"\0\0" + i16(1) + i16(7) + i16(0) + i16(0)),
        "unsupported format code",
    ),
    ("bind-missing-result-formats", typed(b"B", b"\0\0" + i16(0) + i16(0)), "truncated"),
    ("describe-kind", typed(b"D", b"Xname\0"), "kind must be"),
    ("describe-empty", typed(b"D", b""), "truncated"),
    ("close-trailing", typed(b"C", b"S\0\0"), "trailing"),
    ("execute-short", typed(b"E", b"\0\0\0"), "truncated"),
    ("sync-body", typed(b"S", b"x"), "trailing"),
    ("terminate-body", typed(b"X", b"\0"), "trailing"),
    ("copy-fail-no-nul", typed(b"f", b"oops"), "NUL"),
    ("function-call-result", typed(b"F", i32(1) + i16(0) + i16(0) + i16(5)), "result format"),
    ("unknown-type", typed(b"z", b""), "invalid frontend message type"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in MALFORMED_FRONTEND], ids=[c[0] for c in MALFORMED_FRONTEND]
)
def test_malformed_frontend(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        one_frontend(data)


def test_invalid_utf8_has_its_own_sqlstate() -> None:
    with pytest.raises(ProtocolViolation) as info:
        one_frontend(typed(b"Q", b"\xc3\0"))
    assert info.value.sqlstate == "22021"
    assert "\\xc3" not in str(info.value)  # never echo the bytes


MALFORMED_STARTUP: list[tuple[str, bytes, str]] = [
    ("no-terminator", i32(3 << 16) + b"user\0bob\0", "NUL-terminated"),
    ("value-missing", i32(3 << 16) + b"user\0", "NUL-terminated"),
    ("trailing", i32(3 << 16) + b"user\0bob\0\0x", "trailing"),
    ("duplicate-user", i32(3 << 16) + b"user\0a\0user\0b\0\0", "duplicate parameter 'user'"),
    ("ssl-trailing", i32(80877103) + b"\0", "trailing"),
    ("cancel-short-key", i32(80877102) + i32(1) + b"\0\0", "secret key of 2 bytes"),
    ("cancel-no-pid", i32(80877102) + b"\0\0", "truncated"),
]


@pytest.mark.parametrize(
    ("body", "message"), [c[1:] for c in MALFORMED_STARTUP], ids=[c[0] for c in MALFORMED_STARTUP]
)
def test_malformed_startup(body: bytes, message: str) -> None:
    frame = Frame(b"", i32(len(body) + 4) + body)
    with pytest.raises(ProtocolViolation, match=message):
        decode_frontend(frame)


def test_unsupported_protocol_version() -> None:
    frame = Frame(b"", i32(9) + i32(2 << 16) + b"\0")
    with pytest.raises(ProtocolViolation, match=r"unsupported frontend protocol 2\.0") as info:
        decode_frontend(frame)
    assert info.value.sqlstate == "0A000"


MALFORMED_BACKEND: list[tuple[str, bytes, str]] = [
    ("auth-unknown", typed(b"R", i32(99)), "unknown authentication request code 99"),
    ("auth-ok-trailing", typed(b"R", i32(0) + b"x"), "trailing"),
    ("auth-md5-short-salt", typed(b"R", i32(5) + b"ab"), "truncated"),
    ("auth-sasl-no-terminator", typed(b"R", i32(10) + b"SCRAM-SHA-256\0"), "NUL"),
    ("ready-bad-status", b"Z\0\0\0\x05X", "status"),
    ("ready-empty", b"Z\0\0\0\x04", "truncated"),
    ("key-too-long", typed(b"K", i32(1) + b"k" * 257), "secret key of 257 bytes"),
    ("row-count-overflow", typed(b"T", i16(3) + FIELD), "exceeds"),
    (
        "row-format",
        typed(b"T", i16(1) + b"id\0" + struct.pack("!IhIhih", 0, 0, 0, 0, 0, 3)),
        "format",
    ),
    ("row-truncated-field", typed(b"T", i16(1) + b"id\0" + b"\0" * 17), "truncated"),
    ("data-negative", typed(b"D", i16(1) + i32(-5)), "negative length"),
    ("data-trailing", typed(b"D", i16(0) + b"\0"), "trailing"),
    ("data-past-end", typed(b"D", i16(1) + i32(10) + b"abc"), "truncated"),
    ("error-no-terminator", typed(b"E", b"SERROR\0"), "truncated"),
    ("error-duplicate", typed(b"E", b"Ma\0Mb\0\0"), "duplicate field 'M'"),
    ("error-non-ascii-code", typed(b"E", b"\xc8x\0\0"), "not ASCII"),
    ("copy-format", typed(b"H", b"\x02" + i16(0)), "overall format"),
    ("copy-columns-short", typed(b"G", b"\0" + i16(3) + i16(0)), "exceeds"),
    ("negotiate-count", typed(b"v", i32(0) + i32(-1)), "exceeds"),
    ("negotiate-missing", typed(b"v", i32(0) + i32(2) + b"a\0"), "NUL"),
    ("parameter-description-short", typed(b"t", i16(2) + i32(1)), "exceeds"),
    ("notification-no-payload", typed(b"A", i32(1) + b"c\0"), "NUL"),
    ("unknown-type", typed(b"?", b""), "invalid backend message type"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in MALFORMED_BACKEND], ids=[c[0] for c in MALFORMED_BACKEND]
)
def test_malformed_backend(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        one_backend(data)


def test_encoders_refuse_unframeable_values() -> None:
    with pytest.raises(ProtocolViolation, match="NUL"):
        Query("select '\0'").encode()
    with pytest.raises(ProtocolViolation, match="empty parameter name"):
        StartupMessage({"": "x"}).encode()
    with pytest.raises(ProtocolViolation, match="out of range"):
        Execute("", 2**31).encode()
    with pytest.raises(ProtocolViolation, match="kind"):
        Describe("X", "").encode()
    with pytest.raises(ProtocolViolation):
        ReadyForQuery("Q").encode()
    with pytest.raises(ProtocolViolation):
        Bind("", "", (0, 0), (b"1",)).encode()
    with pytest.raises(ProtocolViolation):
        BackendKeyData(1, b"").encode()
    with pytest.raises(ProtocolViolation):
        Parse("", "", tuple(range(70_000))).encode()


# ----------------------------------------------------------------------------- SCRAM/MD5

RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def rfc7677_client() -> ScramClient:
    return ScramClient("pencil", username="user", nonce="rOprNGfwEbeRWgbNEkqO")


def test_scram_rfc7677_vector() -> None:
    client = rfc7677_client()
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.client_final(RFC7677_SERVER_FIRST) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert not client.done
    client.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert client.done


def test_scram_rejects_forged_server_signature() -> None:
    client = rfc7677_client()
    client.client_first()
    client.client_final(RFC7677_SERVER_FIRST)
    with pytest.raises(ScramError, match="signature does not match") as info:
        client.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert info.value.sqlstate == "28000"
    assert isinstance(info.value, ProtocolViolation)
    assert not client.done


@pytest.mark.parametrize(
    ("server_first", "message"),
    [
        (b"r=otherNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1024", "iteration count 1024"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc", "not a number"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=***,i=4096", "base64"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,i=4096", "lacks"),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22Z,i=4096", "lacks"),
        (b"garbage", "malformed"),
        (b"r=\xff,s=a,i=1", "not ASCII"),
    ],
)
def test_scram_rejects_bad_server_first(server_first: bytes, message: str) -> None:
    client = rfc7677_client()
    client.client_first()
    with pytest.raises(ScramError, match=message):
        client.client_final(server_first)


def test_scram_order_and_server_error() -> None:
    client = rfc7677_client()
    with pytest.raises(ScramError, match="unexpected SCRAM server-first"):
        client.client_final(RFC7677_SERVER_FIRST)
    client.client_first()
    with pytest.raises(ScramError, match="unexpected SCRAM server-final"):
        client.verify_server_final(b"v=xx")
    client.client_final(RFC7677_SERVER_FIRST)
    with pytest.raises(ScramError, match="refused by server: invalid-proof") as info:
        client.verify_server_final(b"e=invalid-proof")
    assert info.value.sqlstate == "28P01"


def test_scram_default_nonce_is_random_and_username_empty() -> None:
    a, b = ScramClient("pw"), ScramClient("pw")
    assert a.client_first() != b.client_first()
    assert ScramClient("pw", nonce="abc").client_first() == b"n,,n=,r=abc"
    assert ScramClient("pw", username="a=b,c", nonce="n").client_first() == b"n,,n=a=3Db=2Cc,r=n"


def test_choose_mechanism() -> None:
    assert choose_mechanism(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")) == "SCRAM-SHA-256"
    with pytest.raises(ScramError):
        choose_mechanism(("SCRAM-SHA-256-PLUS",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 examples
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),
    ],
)
def test_saslprep(text: str, expected: str) -> None:
    assert saslprep(text) == expected


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031"])
def test_saslprep_prohibited(text: str) -> None:
    with pytest.raises(ValueError):
        saslprep(text)


def test_md5_password() -> None:
    # md5(md5("secret" + "postgres") + salt), as libpq's pg_md5_encrypt computes it.
    assert md5_password("postgres", "secret", b"\x01\x02\x03\x04") == (
        "md5bb41a296aab6baccb36ff243a562abff"
    )
    with pytest.raises(ProtocolViolation):
        md5_password("u", "p", b"abc")


# ------------------------------------------------------------- live PostgreSQL round trip


class WireClient:
    """A blocking test client built only from the codec: proves real servers agree with it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = BackendFramer()
        self.queue: list[Frame] = []
        self.backend_key: BackendKeyData | None = None

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def recv(self) -> BackendMessage:
        while not self.queue:
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            self.queue += self.framer.feed(data)
        return decode_backend(self.queue.pop(0))

    def until_ready(self) -> list[BackendMessage]:
        out: list[BackendMessage] = []
        while True:
            msg = self.recv()
            out.append(msg)
            if isinstance(msg, ReadyForQuery):
                return out

    def login(self, user: str, password: str, params: dict[str, str] | None = None) -> str:
        """Authenticate; return the method the server asked for."""
        self.send(StartupMessage({"user": user, "database": "postgres", **(params or {})}).encode())
        method = "trust"
        scram: ScramClient | None = None
        while True:
            msg = self.recv()
            if isinstance(msg, AuthenticationSASL):
                method = "scram"
                scram = ScramClient(password)
                self.send(
                    SASLInitialResponse(
                        choose_mechanism(msg.mechanisms), scram.client_first()
                    ).encode()
                )
            elif isinstance(msg, AuthenticationSASLContinue):
                assert scram is not None
                self.send(PasswordMessage(scram.client_final(msg.data)).encode())
            elif isinstance(msg, AuthenticationSASLFinal):
                assert scram is not None
                scram.verify_server_final(msg.data)
            elif isinstance(msg, AuthenticationMD5Password):
                method = "md5"
                self.send(password_message(md5_password(user, password, msg.salt)))
            elif isinstance(msg, AuthenticationOk):
                assert scram is None or scram.done
            elif isinstance(msg, BackendKeyData):
                self.backend_key = msg
            elif isinstance(msg, ErrorResponse):
                raise AssertionError(f"login failed: {msg.sqlstate}")
            elif isinstance(msg, ReadyForQuery):
                return method
            else:
                assert isinstance(msg, ParameterStatus | NegotiateProtocolVersion)

    def close(self) -> None:
        self.send(Terminate().encode())
        self.sock.close()


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    psycopg = pytest.importorskip("psycopg")
    from policyc.devcluster import throwaway_cluster

    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute("CREATE ROLE scram_user LOGIN PASSWORD 'pencil'")
            conn.execute("SET password_encryption = 'md5'")
            conn.execute("CREATE ROLE md5_user LOGIN PASSWORD 'secret'")
            hba = cluster.datadir / "pg_hba.conf"
            hba.write_text(
                "host all scram_user 127.0.0.1/32 scram-sha-256\n"
                "host all md5_user 127.0.0.1/32 md5\n" + hba.read_text()
            )
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous: wait until SCRAM is asked for
            client = WireClient(cluster.port)
            try:
                if client.login("scram_user", "pencil") == "scram":
                    break
            finally:
                client.close()
            assert time.monotonic() < deadline, "pg_hba.conf reload not seen"
            time.sleep(0.1)
        yield cluster.port


@pytest.mark.slow
def test_live_scram_and_md5_login(server_port: int) -> None:
    client = WireClient(server_port)
    assert client.login("scram_user", "pencil") == "scram"
    client.close()
    client = WireClient(server_port)
    assert client.login("md5_user", "secret") == "md5"
    client.close()
    client = WireClient(server_port)
    client.send(StartupMessage({"user": "scram_user", "database": "postgres"}).encode())
    assert isinstance(client.recv(), AuthenticationSASL)
    scram = ScramClient("wrong")
    client.send(SASLInitialResponse("SCRAM-SHA-256", scram.client_first()).encode())
    cont = client.recv()
    assert isinstance(cont, AuthenticationSASLContinue)
    client.send(PasswordMessage(scram.client_final(cont.data)).encode())
    err = client.recv()
    assert isinstance(err, ErrorResponse)
    assert err.sqlstate == "28P01"


@pytest.mark.slow
def test_live_ssl_request_refused_then_plain_startup(server_port: int) -> None:
    client = WireClient(server_port)
    client.send(SSLRequest().encode())
    assert parse_encryption_response(client.sock.recv(1)) is False
    client.login("postgres", "")
    client.close()


@pytest.mark.slow
def test_live_negotiate_protocol_version(server_port: int) -> None:
    client = WireClient(server_port)
    client.send(StartupMessage({"user": "postgres", "_pq_.nothing": "x"}).encode())
    msg = client.recv()
    assert msg == NegotiateProtocolVersion(3 << 16, ("_pq_.nothing",))
    assert isinstance(msg, NegotiateProtocolVersion)
    assert msg.newest_minor == 0
    client.close()


@pytest.mark.slow
def test_live_simple_and_extended_queries(server_port: int) -> None:
    client = WireClient(server_port)
    client.login("postgres", "")
    client.send(Query("select 1 as one, null::text as n; select 'a' where false").encode())
    msgs = client.until_ready()
    assert isinstance(msgs[0], RowDescription)
    assert [f.name for f in msgs[0].fields] == ["one", "n"]
    assert msgs[0].fields[0].type_oid == 23
    assert msgs[1] == DataRow((b"1", None))
    assert msgs[2] == CommandComplete("SELECT 1")
    assert msgs[-2] == CommandComplete("SELECT 0")
    assert msgs[-1] == ReadyForQuery("I")

    client.send(
        Parse("st", "select $1::int + 1 as x", (23,)).encode(),
        Describe("S", "st").encode(),
        Bind("", "st", (1,), (i32(41),), (1,)).encode(),
        Execute("", 0).encode(),
        Close("S", "st").encode(),
        Sync().encode(),
    )
    msgs = client.until_ready()
    assert msgs == [
        ParseComplete(),
        ParameterDescription((23,)),
        RowDescription((FieldDescription("x", 0, 0, 23, 4, -1, 0),)),
        BindComplete(),
        DataRow((i32(42),)),
        CommandComplete("SELECT 1"),
        CloseComplete(),
        ReadyForQuery("I"),
    ]

    client.send(
        Parse("", "select generate_series(1, 3)").encode(),
        Bind("", "").encode(),
        Execute("", 2).encode(),
        Execute("", 0).encode(),
        Sync().encode(),
    )
    msgs = client.until_ready()
    assert [type(m).__name__ for m in msgs] == [
        "ParseComplete",
        "BindComplete",
        "DataRow",
        "DataRow",
        "PortalSuspended",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]

    client.send(Query("").encode(), Query("select 1/0").encode())
    assert client.until_ready() == [EmptyQueryResponse(), ReadyForQuery("I")]
    err = client.until_ready()[0]
    assert isinstance(err, ErrorResponse)
    assert err.sqlstate == "22012"

    client.send(
        Parse("", "create temp table t (a int)").encode(),
        Bind("", "").encode(),
        Describe("P", "").encode(),
        Execute().encode(),
        Sync().encode(),
    )
    assert client.until_ready()[2] == NoData()
    client.close()


@pytest.mark.slow
def test_live_copy_notice_notify_cancel(server_port: int) -> None:
    client = WireClient(server_port)
    client.login("postgres", "")
    client.send(Query("create temp table c (a int, b text)").encode())
    client.until_ready()
    client.send(Query("copy c from stdin").encode())
    assert client.recv() == CopyInResponse(0, (0, 0))
    client.send(CopyData(b"1\tx\n2\t\\N\n").encode(), CopyDone().encode())
    assert client.until_ready()[0] == CommandComplete("COPY 2")

    client.send(Query("copy c to stdout").encode())
    msgs = client.until_ready()
    assert msgs == [
        CopyOutResponse(0, (0, 0)),
        CopyData(b"1\tx\n"),
        CopyData(b"2\t\\N\n"),
        CopyDone(),
        CommandComplete("COPY 2"),
        ReadyForQuery("I"),
    ]

    client.send(Query("copy c from stdin").encode())
    client.recv()
    client.send(CopyFail("client gave up").encode())
    err = client.until_ready()[0]
    assert isinstance(err, ErrorResponse)
    assert err.sqlstate == "57014"

    client.send(Query("do $$ begin raise notice 'hello'; end $$").encode())
    notice = client.until_ready()[0]
    assert isinstance(notice, NoticeResponse)
    assert (notice.severity, notice.message) == ("NOTICE", "hello")

    client.send(Query("listen ch; notify ch, 'pay'").encode())
    msgs = client.until_ready()
    assert isinstance(client.backend_key, BackendKeyData)
    assert NotificationResponse(client.backend_key.pid, "ch", "pay") in msgs

    client.send(Query("select pg_sleep(30)").encode())
    time.sleep(0.2)
    canceller = socket.create_connection(("127.0.0.1", server_port), timeout=10)
    canceller.sendall(CancelRequest(client.backend_key.pid, client.backend_key.key).encode())
    canceller.close()
    errors = [m for m in client.until_ready() if isinstance(m, ErrorResponse)]
    assert len(errors) == 1
    err = errors[0]
    assert err.sqlstate == "57014"
    client.close()
