"""Property tests of the protocol codec.

* every message type round-trips: decode(frame(encode(m))) == m;
* a valid stream split at any chunk boundaries frames and decodes identically;
* random bytes, random frames and mutated valid streams, fed to both framers and all decoders,
  can only ever raise ProtocolViolation (the proxy turns that into an 08P01 ErrorResponse;
  anything else would be a crash reachable by any client or a compromised server).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.proxy.codec import (
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
    FrontendMessage,
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
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    data_row_values,
    decode_backend,
    decode_frontend,
    decode_password,
    decode_sasl_initial_response,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUNDTRIP = settings(max_examples=300, deadline=None)

# ----------------------------------------------------------------------------- strategies

# No NUL (it terminates strings) and no surrogates (not encodable); everything else goes.
chars = st.characters(exclude_characters="\0", exclude_categories=["Cs"])
text = st.text(chars, max_size=40)
name = st.text(chars, max_size=12)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
int16 = st.integers(-(2**15), 2**15 - 1)
fmt = st.sampled_from((0, 1))
value = st.none() | st.binary(max_size=30)
key = st.binary(min_size=4, max_size=256)


@st.composite
def binds(draw: st.DrawFn) -> Bind:
    params = tuple(draw(st.lists(value, max_size=6)))
    mode = draw(st.sampled_from(("none", "one", "each")))
    formats: tuple[int, ...] = ()
    if mode == "one":
        formats = (draw(fmt),)
    elif mode == "each":
        formats = tuple(draw(st.lists(fmt, min_size=len(params), max_size=len(params))))
    results = tuple(draw(st.lists(fmt, max_size=4)))
    return Bind(draw(name), draw(name), formats, params, results)


startup_messages = st.one_of(
    st.builds(
        StartupMessage,
        st.dictionaries(name.filter(bool), text, max_size=5),
        st.integers(0, 0xFFFF).map(lambda minor: 3 << 16 | minor),
    ),
    st.just(SSLRequest()),
    st.just(GSSENCRequest()),
    st.builds(CancelRequest, int32, key),
)

typed_frontend_messages: st.SearchStrategy[FrontendMessage] = st.one_of(
    st.builds(Query, text),
    st.builds(Parse, name, text, st.lists(uint32, max_size=5).map(tuple)),
    binds(),
    st.builds(Describe, st.sampled_from("SP"), name),
    st.builds(Execute, name, int32),
    st.builds(Close, st.sampled_from("SP"), name),
    st.just(Sync()),
    st.just(Flush()),
    st.just(Terminate()),
    st.builds(CopyData, st.binary(max_size=50)),
    st.just(CopyDone()),
    st.builds(CopyFail, text),
    st.builds(PasswordMessage, st.binary(max_size=50)),
    st.builds(
        FunctionCall,
        uint32,
        st.lists(fmt, max_size=3).map(tuple),
        st.lists(value, max_size=3).map(tuple),
        fmt,
    ),
)

fields = st.builds(FieldDescription, name, uint32, int16, uint32, int16, int32, fmt)
error_fields = st.dictionaries(st.characters(min_codepoint=1, max_codepoint=127), text, max_size=6)

backend_messages: st.SearchStrategy[BackendMessage] = st.one_of(
    st.just(AuthenticationOk()),
    st.just(AuthenticationCleartextPassword()),
    st.builds(AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(AuthenticationSASL, st.lists(name.filter(bool), max_size=3).map(tuple)),
    st.builds(AuthenticationSASLContinue, st.binary(max_size=40)),
    st.builds(AuthenticationSASLFinal, st.binary(max_size=40)),
    st.builds(AuthenticationOther, st.sampled_from((2, 6, 7, 8, 9)), st.binary(max_size=10)),
    st.builds(ParameterStatus, name, text),
    st.builds(BackendKeyData, int32, key),
    st.builds(ReadyForQuery, st.sampled_from("ITE")),
    st.builds(NegotiateProtocolVersion, int32, st.lists(name, max_size=3).map(tuple)),
    st.builds(RowDescription, st.lists(fields, max_size=4).map(tuple)),
    st.builds(DataRow, st.lists(value, max_size=6).map(tuple)),
    st.builds(CommandComplete, text),
    st.just(EmptyQueryResponse()),
    st.just(ParseComplete()),
    st.just(BindComplete()),
    st.just(CloseComplete()),
    st.just(NoData()),
    st.just(PortalSuspended()),
    st.builds(ParameterDescription, st.lists(uint32, max_size=5).map(tuple)),
    st.builds(FunctionCallResponse, value),
    st.builds(CopyInResponse, fmt, st.lists(fmt, max_size=4).map(tuple)),
    st.builds(CopyOutResponse, fmt, st.lists(fmt, max_size=4).map(tuple)),
    st.builds(CopyBothResponse, fmt, st.lists(fmt, max_size=4).map(tuple)),
    st.builds(CopyData, st.binary(max_size=50)),
    st.just(CopyDone()),
    st.builds(ErrorResponse, error_fields),
    st.builds(NoticeResponse, error_fields),
    st.builds(NotificationResponse, int32, name, text),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------------------ round trip


@ROUNDTRIP
@given(startup_messages)
def test_startup_roundtrip(msg: FrontendMessage) -> None:
    data = msg.encode()
    framer = FrontendFramer()
    frames = framer.feed(data)
    assert frames == [Frame(b"", data)]
    assert decode_frontend(frames[0]) == msg
    assert framer.in_startup == (not isinstance(msg, StartupMessage))


@ROUNDTRIP
@given(typed_frontend_messages)
def test_frontend_roundtrip(msg: FrontendMessage) -> None:
    data = msg.encode()
    frames = FrontendFramer(startup=False).feed(data)
    assert frames == [Frame(data[:1], data)]
    assert decode_frontend(frames[0]) == msg


@ROUNDTRIP
@given(st.builds(SASLInitialResponse, name, st.none() | st.binary(max_size=40)), text)
def test_password_variants_roundtrip(msg: SASLInitialResponse, password: str) -> None:
    decoded = decode_frontend(FrontendFramer(startup=False).feed(msg.encode())[0])
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_initial_response(decoded) == msg
    from policyc.proxy.codec import SASLResponse, decode_sasl_response, password_message

    response = SASLResponse(msg.data or b"")
    decoded = decode_frontend(FrontendFramer(startup=False).feed(response.encode())[0])
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_response(decoded) == response
    decoded = decode_frontend(FrontendFramer(startup=False).feed(password_message(password))[0])
    assert isinstance(decoded, PasswordMessage)
    assert decode_password(decoded) == password


@ROUNDTRIP
@given(backend_messages)
def test_backend_roundtrip(msg: BackendMessage) -> None:
    data = msg.encode()
    frames = BackendFramer().feed(data)
    assert frames == [Frame(data[:1], data)]
    assert decode_backend(frames[0]) == msg
    if isinstance(msg, DataRow):
        views = data_row_values(frames[0])
        assert tuple(None if v is None else bytes(v) for v in views) == msg.columns


@FUZZ
@given(
    st.builds(StartupMessage, st.dictionaries(name.filter(bool), text, max_size=3)),
    st.lists(typed_frontend_messages, max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_frontend_stream_any_chunking(
    startup: StartupMessage, messages: list[FrontendMessage], cuts: list[int]
) -> None:
    stream = startup.encode() + b"".join(m.encode() for m in messages)
    framer = FrontendFramer()
    frames = [f for chunk in split(stream, cuts) for f in framer.feed(chunk)]
    assert frames == FrontendFramer().feed(stream)
    assert framer.pending == 0
    assert [decode_frontend(f) for f in frames] == [startup, *messages]


@FUZZ
@given(st.lists(backend_messages, max_size=10), st.lists(st.integers(0, 10_000), max_size=12))
def test_backend_stream_any_chunking(messages: list[BackendMessage], cuts: list[int]) -> None:
    stream = b"".join(m.encode() for m in messages)
    framer = BackendFramer()
    frames = [f for chunk in split(stream, cuts) for f in framer.feed(chunk)]
    assert b"".join(f.raw for f in frames) == stream
    assert framer.pending == 0
    assert [decode_backend(f) for f in frames] == messages


# ---------------------------------------------------------------- only ProtocolViolation


def feed_all(
    framer: FrontendFramer | BackendFramer,
    chunks: list[bytes],
    decode: Callable[[Frame], object],
) -> None:
    """Feed and decode everything; ProtocolViolation is the only acceptable failure."""
    try:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                try:
                    decode(frame)
                except ProtocolViolation as exc:
                    assert exc.sqlstate in ("08P01", "22021", "0A000")
                if frame.type == b"D":
                    with contextlib.suppress(ProtocolViolation):
                        data_row_values(frame)
    except ProtocolViolation as exc:
        assert exc.sqlstate == "08P01"


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_frontend_startup(chunks: list[bytes]) -> None:
    feed_all(FrontendFramer(), chunks, decode_frontend)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_frontend_typed(chunks: list[bytes]) -> None:
    feed_all(FrontendFramer(startup=False), chunks, decode_frontend)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_backend(chunks: list[bytes]) -> None:
    feed_all(BackendFramer(max_length=1 << 16), chunks, decode_backend)


FRONTEND_TYPES = b"QPBDECSHXdcfpFz\0"
BACKEND_TYPES = b"RSKZvTDCI123nstVGHWdcENA?\0"


@FUZZ
@given(st.sampled_from(FRONTEND_TYPES), st.binary(max_size=80))
def test_random_payload_frontend_decoders(type_: int, payload: bytes) -> None:
    t = bytes((type_,))
    raw = t + len(payload).to_bytes(4, "big") + payload
    with contextlib.suppress(ProtocolViolation):
        decode_frontend(Frame(t, raw))


@FUZZ
@given(st.binary(max_size=80))
def test_random_startup_packets(payload: bytes) -> None:
    raw = (len(payload) + 4).to_bytes(4, "big") + payload
    with contextlib.suppress(ProtocolViolation):
        decode_frontend(Frame(b"", raw))


@FUZZ
@given(st.sampled_from(BACKEND_TYPES), st.binary(max_size=80))
def test_random_payload_backend_decoders(type_: int, payload: bytes) -> None:
    t = bytes((type_,))
    raw = t + len(payload).to_bytes(4, "big") + payload
    frame = Frame(t, raw)
    with contextlib.suppress(ProtocolViolation):
        decode_backend(frame)
    with contextlib.suppress(ProtocolViolation):
        data_row_values(frame)


mutation = st.tuples(
    st.sampled_from(("flip", "set", "truncate", "insert", "delete")),
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte, blob in mutations:
        if not buf:
            buf += blob
            continue
        at = pos % len(buf)
        if kind == "flip":
            buf[at] ^= 1 << (byte % 8)
        elif kind == "set":
            buf[at] = byte
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = blob
        else:
            del buf[at : at + len(blob)]
    return bytes(buf)


@FUZZ
@given(
    st.builds(StartupMessage, st.dictionaries(name.filter(bool), text, max_size=3)),
    st.lists(typed_frontend_messages, min_size=1, max_size=6),
    st.lists(mutation, min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_frontend_streams(
    startup: StartupMessage,
    messages: list[FrontendMessage],
    mutations: list[tuple[str, int, int, bytes]],
    cuts: list[int],
) -> None:
    stream = mutate(startup.encode() + b"".join(m.encode() for m in messages), mutations)
    feed_all(FrontendFramer(), split(stream, cuts), decode_frontend)


@FUZZ
@given(
    st.lists(backend_messages, min_size=1, max_size=8),
    st.lists(mutation, min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_backend_streams(
    messages: list[BackendMessage],
    mutations: list[tuple[str, int, int, bytes]],
    cuts: list[int],
) -> None:
    stream = mutate(b"".join(m.encode() for m in messages), mutations)
    feed_all(BackendFramer(max_length=1 << 16), split(stream, cuts), decode_backend)


@FUZZ
@given(
    st.sampled_from(
        (
            b"r=NONCEabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        )
    ),
    st.lists(mutation, max_size=3),
    st.binary(max_size=40),
)
def test_scram_hostile_server_messages(
    template: bytes, mutations: list[tuple[str, int, int, bytes]], final: bytes
) -> None:
    client = ScramClient("pw", nonce="NONCE", max_iterations=100_000)
    client.client_first()
    try:
        client.client_final(mutate(template, mutations))
        client.verify_server_final(final)
    except ProtocolViolation:
        return
    raise AssertionError("a random server-final message was accepted")
